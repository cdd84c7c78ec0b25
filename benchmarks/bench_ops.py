"""Custom ops beside the best plain-torch equivalents, measured in the same run.

Convention (read by `metareg bench`): ``benchmark.group`` names the case, ``extra_info["role"]``
is "metareg" or "baseline", ``extra_info["label"]`` names the variant.  Run with
``metareg bench -k pairwise`` or ``pytest benchmarks/bench_ops.py --benchmark-only``.

Set METAREG_BENCH_DEVICE=cuda to time CUDA tensors (timings are synchronised); the default is
CPU.  Rounds are fixed per shape so the whole file stays within a few minutes on 2 cores;
METAREG_BENCH_ROUNDS=0.2 scales them down for a quick look.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.nn.functional as F

from metareg import ops

DEVICE = os.environ.get("METAREG_BENCH_DEVICE", "cpu")
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("METAREG_BENCH_DEVICE=cuda but no GPU", allow_module_level=True)

# (B, N, M, D) -> rounds (CPU).  The last shape takes ~1 s per forward on 2 cores.
COSINE_SHAPES = {(32, 75, 5, 64): 200, (32, 75, 25, 1600): 20, (1, 1024, 1024, 512): 10, (8, 4096, 4096, 128): 3}
# Broadcasting F.cosine_similarity materialises [B, N, M, D]: skipped above this many bytes.
BROADCAST_LIMIT = 2 * 1024**3
ROUNDS_SCALE = float(os.environ.get("METAREG_BENCH_ROUNDS", "1"))
WARMUP_SECONDS = 3.0


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _run(benchmark, fn, rounds, group, role, label):
    benchmark.group = group
    benchmark.extra_info["role"] = role
    benchmark.extra_info["label"] = label
    benchmark.extra_info["device"] = DEVICE

    def timed():
        fn()
        _sync()

    rounds = max(3, round(rounds * ROUNDS_SCALE))
    if DEVICE == "cuda":
        rounds = max(rounds, 50)
    # Warm up for about three seconds, not a fixed count: on the 2-core VM the first ~100 calls that
    # allocate a fresh multi-MB output run ~10x slower (page faults until the allocator settles),
    # which would otherwise penalise whichever variant happens to run first.
    start = time.perf_counter()
    timed()
    one = time.perf_counter() - start
    warmup = int(min(500, max(1, WARMUP_SECONDS / max(one, 1e-6))))
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=warmup)


# -- pairwise_cosine --------------------------------------------------------------------------

def _normalize_bmm(a, b):
    return torch.bmm(F.normalize(a, dim=-1), F.normalize(b, dim=-1).transpose(1, 2))


def _broadcast_cosine(a, b):
    return F.cosine_similarity(a[:, :, None, :], b[:, None, :, :], dim=-1)


COSINE_IMPLS = {
    "metareg": ("metareg", lambda a, b: ops.pairwise_cosine(a, b)),
    "normalize+bmm": ("baseline", _normalize_bmm),
    "broadcast F.cosine_similarity": ("baseline", _broadcast_cosine),
}


def _shape_id(s):
    return "x".join(map(str, s))


@pytest.mark.parametrize("impl", list(COSINE_IMPLS))
@pytest.mark.parametrize("shape", list(COSINE_SHAPES), ids=_shape_id)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_pairwise_cosine(benchmark, mode, shape, impl):
    B, N, M, D = shape
    if impl.startswith("broadcast") and B * N * M * D * 4 > BROADCAST_LIMIT:
        pytest.skip("the broadcasting baseline would need a [B, N, M, D] temporary over 2 GB")
    role, fn = COSINE_IMPLS[impl]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(B, N, D, generator=gen).to(DEVICE)
    b = torch.randn(B, M, D, generator=gen).to(DEVICE)
    rounds = COSINE_SHAPES[shape]
    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn(a, b)
    else:
        a.requires_grad_()
        b.requires_grad_()
        grad = torch.randn(B, N, M, generator=gen).to(DEVICE)

        def step():
            torch.autograd.grad(fn(a, b), (a, b), grad)
    _run(benchmark, step, rounds, f"pairwise_cosine {mode} {_shape_id(shape)}", role, impl)


# -- task_step --------------------------------------------------------------------------------

def conv4_shapes() -> list[tuple[int, ...]]:
    """Conv4 for 28x28x1 inputs, 5-way: 4 x (conv3x3-64 weight, bias, BN weight, bias) + linear
    64 -> 5 head (28 -> 14 -> 7 -> 3 -> 1 after four 2x2 pools): 112,261 parameters."""
    shapes: list[tuple[int, ...]] = []
    c_in = 1
    for _ in range(4):
        shapes += [(64, c_in, 3, 3), (64,), (64,), (64,)]
        c_in = 64
    return shapes + [(5, 64), (5,)]


def mlp40_shapes() -> list[tuple[int, ...]]:
    """MLP 1-40-40-1 (the MAML sinusoid net): 1,761 parameters."""
    return [(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)]


MODELS = {"conv4": conv4_shapes(), "mlp40": mlp40_shapes()}
assert sum(torch.Size(s).numel() for s in MODELS["conv4"]) == 112_261
assert sum(torch.Size(s).numel() for s in MODELS["mlp40"]) == 1_761
# (model, T) -> rounds
STEP_CASES = {("conv4", 32): 200, ("conv4", 256): 30, ("mlp40", 25): 500, ("mlp40", 1024): 100}
LR = 0.4


def _step_inputs(model, T):
    shapes = MODELS[model]
    P = sum(torch.Size(s).numel() for s in shapes)
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(P, generator=gen).to(DEVICE)
    grads = torch.randn(T, P, generator=gen).to(DEVICE)
    # Per-tensor views of the same storage, as a model's parameters and per-task gradients are.
    sizes = [torch.Size(s).numel() for s in shapes]
    theta_list = [t.view(s) for t, s in zip(theta.split(sizes), shapes)]
    grads_list = [g.view(s) for t in range(T) for g, s in zip(grads[t].split(sizes), shapes)]
    return theta, grads, theta_list * T, grads_list


STEP_IMPLS = {
    "metareg": "metareg",
    "per-tensor loop": "baseline",
    "one _foreach_add": "baseline",
    "stacked torch.sub": "baseline",
}


@pytest.mark.parametrize("impl", list(STEP_IMPLS))
@pytest.mark.parametrize("case", list(STEP_CASES), ids=lambda c: f"{c[0]}-T{c[1]}")
def test_task_step(benchmark, case, impl):
    model, T = case
    theta, grads, theta_list, grads_list = _step_inputs(model, T)
    if impl == "metareg":
        def step():
            ops.task_step(theta, grads, LR)
    elif impl == "per-tensor loop":
        def step():
            [torch.sub(p, g, alpha=LR) for p, g in zip(theta_list, grads_list)]
    elif impl == "one _foreach_add":
        def step():
            torch._foreach_add(theta_list, grads_list, alpha=-LR)
    else:
        def step():
            torch.sub(theta, grads, alpha=LR)
    _run(benchmark, step, STEP_CASES[case], f"task_step {model} T={T}", STEP_IMPLS[impl], impl)


# -- gram: the combiners' Gram matrix of a task Jacobian [T, P] --------------------------------

# (T, P) -> rounds: few long rows (the op's one-read wide pass), many long rows (its blocked
# GEMM), a small Jacobian (one GEMM: the wrapper's overhead is what shows)
GRAM_SHAPES = {(8, 1_000_000): 50, (32, 200_000): 30, (3, 1000): 2000}


def _blocked_gram(a, block=16384):
    # the blocked GEMM in plain torch: [T, block] slices stay in L2
    t, p = a.shape
    k = p // block
    blocks = a[:, : k * block].reshape(t, k, block).transpose(0, 1)
    out = torch.bmm(blocks, blocks.transpose(1, 2)).sum(0)
    return out.addmm(a[:, k * block:], a[:, k * block:].T) if p > k * block else out


GRAM_IMPLS = {
    "metareg": ("metareg", ops.gram),
    "a @ a.T": ("baseline", lambda a: a @ a.T),
    "blocked bmm": ("baseline", _blocked_gram),
}


@pytest.mark.parametrize("impl", list(GRAM_IMPLS))
@pytest.mark.parametrize("shape", list(GRAM_SHAPES), ids=_shape_id)
def test_gram(benchmark, shape, impl):
    a = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    role, fn = GRAM_IMPLS[impl]
    _run(benchmark, lambda: fn(a), GRAM_SHAPES[shape], f"gram {_shape_id(shape)}", role, impl)


# -- bn_pool_relu -----------------------------------------------------------------------------

# Conv4's block tails in the query pass of a MAML step at meta-batch 32 on CPU: a 2-task chunk of
# the grouped channels-last layout [N=75, 2*64, H, W] (first and second block), and one 32-task
# support pass [5, 32*64, 28, 28]; forward + backward, as the step runs them.
BN_SHAPES = {(75, 128, 28, 28): 60, (75, 128, 14, 14): 200, (5, 2048, 28, 28): 60}


def _composed_bn_pool_relu(x, w, b):
    # what metareg.nets.conv runs where the op is not taken: the fused batch-norm kernels (with our
    # double backward), pooling before ReLU
    from metareg.nets.batchnorm import fused_batch_norm

    return torch.relu(F.max_pool2d(fused_batch_norm(x, w, b), 2))


BN_IMPLS = {
    "metareg": ("metareg", ops.bn_pool_relu),
    "batch_norm + max_pool2d + relu": ("baseline", _composed_bn_pool_relu),
    "F.batch_norm + max_pool2d + relu": ("baseline", lambda x, w, b: torch.relu(F.max_pool2d(
        F.batch_norm(x, None, None, w, b, training=True), 2))),
}


@pytest.mark.skipif(DEVICE != "cpu", reason="bn_pool_relu has a CPU kernel only (cuDNN composes the three ops)")
@pytest.mark.parametrize("impl", list(BN_IMPLS))
@pytest.mark.parametrize("shape", list(BN_SHAPES), ids=_shape_id)
def test_bn_pool_relu(benchmark, shape, impl):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = (torch.rand(shape[1], generator=g) + 0.5).requires_grad_()
    b = torch.randn(shape[1], generator=g).requires_grad_()
    cot = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=g).contiguous(
        memory_format=torch.channels_last)
    role, fn = BN_IMPLS[impl]

    def step():
        torch.autograd.grad(fn(x, w, b), (x, w, b), cot)

    _run(benchmark, step, BN_SHAPES[shape], f"bn_pool_relu fwd+bwd {_shape_id(shape)}", role, impl)


# -- conv3x3_winograd --------------------------------------------------------------------------

# Conv4's 64-channel convolutions in the query pass of a MAML step at meta-batch 32 on CPU: a
# 2-task chunk of the grouped channels-last layout [N=75, 2*64, H, H] at the second, third and
# fourth block (the fourth, 3x3, is below WINOGRAD_MIN_SIZE: there to show why); forward +
# backward (input and weight gradients), as the step runs them.
WINOGRAD_SHAPES = {(75, 128, 14, 14): 30, (75, 128, 7, 7): 60, (75, 128, 3, 3): 100}

WINOGRAD_IMPLS = {
    "metareg": ("metareg", lambda x, w: ops.conv3x3_winograd(x, w, 2)),
    "F.conv2d": ("baseline", lambda x, w: F.conv2d(x, w, padding=1, groups=2)),
}


@pytest.mark.skipif(DEVICE != "cpu", reason="conv3x3_winograd has a CPU kernel only (cuDNN is the path on CUDA)")
@pytest.mark.parametrize("impl", list(WINOGRAD_IMPLS))
@pytest.mark.parametrize("shape", list(WINOGRAD_SHAPES), ids=_shape_id)
def test_conv3x3_winograd(benchmark, shape, impl):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(shape[1], shape[1] // 2, 3, 3, generator=g) * 0.05).requires_grad_()
    cot = torch.randn(*shape, generator=g).contiguous(memory_format=torch.channels_last)
    role, fn = WINOGRAD_IMPLS[impl]

    def step():
        torch.autograd.grad(fn(x, w), (x, w), cot)

    _run(benchmark, step, WINOGRAD_SHAPES[shape], f"conv3x3 fwd+bwd {_shape_id(shape)}", role, impl)
