"""MAML on few-shot images: Conv4, 5-way 1-shot 15-query, 28x28x1, meta-batch 32, second order,
one inner step of lr 0.4 (BENCHMARKS.md's setting), one full outer step including Adam.

metareg's step (fast weights [32, P], grouped convolutions on channels-last activations, fused batch norm) against the
per-task Python loop that learn2learn, higher and TorchOpt run, and against torch.func.vmap.
Targets (issue 4): >= 2x the loop's outer steps per second on 2 CPU cores; >= 3x vmap on an H100
with no more peak memory.
"""

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from metareg.nets.conv import conv4

WAYS, SHOTS, QUERY, T, LR = 5, 1, 15, 32, 0.4
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# rounds per case; METAREG_BENCH_ROUNDS=N for more (benchmarks/interleaved_conv4.py alternates
# the two steps instead, which the VM's drift between blocks of rounds cannot bias)
ROUNDS = int(os.environ.get("METAREG_BENCH_ROUNDS", 3 if DEVICE == "cpu" else 20))


class _Episodes:
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.sx = torch.rand(T, WAYS * SHOTS, 1, 28, 28, generator=g).to(DEVICE)
        self.qx = torch.rand(T, WAYS * QUERY, 1, 28, 28, generator=g).to(DEVICE)
        self.sy = torch.arange(WAYS).repeat_interleave(SHOTS).expand(T, -1).contiguous().to(DEVICE)
        self.qy = torch.arange(WAYS).repeat_interleave(QUERY).expand(T, -1).contiguous().to(DEVICE)


@pytest.fixture(scope="module")
def episodes():
    return _Episodes()


def _module():
    torch.manual_seed(0)
    layers = []
    for i in range(4):
        layers += [nn.Conv2d(1 if i == 0 else 64, 64, 3, padding=1), nn.BatchNorm2d(64, track_running_stats=False),
                   nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, WAYS)).to(DEVICE)


def _bench(benchmark, fn, role, label):
    benchmark.group = f"maml conv4 5-way 1-shot T={T} 2nd order ({DEVICE})"
    benchmark.extra_info["role"] = role
    benchmark.extra_info["label"] = label
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()

        def timed():
            fn()
            torch.cuda.synchronize()

        benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=2)
        benchmark.extra_info["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)


def metareg_step(episodes, **over):
    """One outer step of metareg's MAML (with Adam) on ``episodes``, as a function of nothing
    (``over``: config overrides, e.g. ``task_parallel=False``)."""
    from metareg.learners import LearnerContext
    from metareg.plugins import get_registry
    from metareg.tasks import TaskBatch, TaskInfo

    spec = get_registry().get("algorithm", "maml")
    info = TaskInfo(input_shape=(1, 28, 28), output_dim=WAYS, loss="cross_entropy", metric="accuracy")
    ctx = LearnerContext(task=info, make_backbone=lambda name=None: conv4((1, 28, 28), WAYS),
                         generator=torch.Generator().manual_seed(0), device=torch.device(DEVICE))
    learner = spec.factory(spec.config(inner_lr=LR, **over), ctx).to(DEVICE)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    batch = TaskBatch(episodes.sx, episodes.sy, episodes.qx, episodes.qy)

    def step():
        opt.zero_grad(set_to_none=True)
        learner.step(batch)
        opt.step()

    return step


def test_metareg_maml_conv4(benchmark, episodes):
    assert conv4((1, 28, 28), WAYS).num_params == 112_261  # BENCHMARKS.md's Conv4
    step = metareg_step(episodes)
    _bench(benchmark, step, "metareg", "metareg maml (batched fast weights)")


# Each recipe accumulates the meta-gradient of the mean query loss over the tasks of (sx, sy, qx,
# qy) into the model's .grad, one task at a time, as the library it is named after does it.

def _loop_meta_backward(model, params, sx, sy, qx, qy):
    total = 0.0
    for i in range(len(sx)):
        loss = F.cross_entropy(functional_call(model, params, (sx[i],)), sy[i])
        g = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        fast = {k: p - LR * gi for (k, p), gi in zip(params.items(), g)}
        total = total + F.cross_entropy(functional_call(model, fast, (qx[i],)), qy[i])
    (total / len(sx)).backward()


def _higher_meta_backward(higher, model, inner_opt, sx, sy, qx, qy):
    # higher's own MAML recipe (its examples/maml-omniglot.py): a monkeypatched copy of the module
    # per task, a differentiable SGD step, the query loss backpropagated task by task
    for i in range(len(sx)):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
            diffopt.step(F.cross_entropy(fmodel(sx[i]), sy[i]))
            (F.cross_entropy(fmodel(qx[i]), qy[i]) / len(sx)).backward()


def _torchopt_meta_backward(torchopt, model, inner_opt, sx, sy, qx, qy):
    # TorchOpt's MAML recipe (its MAML-omniglot example): MetaSGD steps the module in place, the
    # query loss is backpropagated per task, then the initial state is restored
    net_state, opt_state = torchopt.extract_state_dict(model), torchopt.extract_state_dict(inner_opt)
    for i in range(len(sx)):
        inner_opt.step(F.cross_entropy(model(sx[i]), sy[i]))
        (F.cross_entropy(model(qx[i]), qy[i]) / len(sx)).backward()
        torchopt.recover_state_dict(model, net_state)
        torchopt.recover_state_dict(inner_opt, opt_state)


def _recipe(library, model):
    """(meta_backward(sx, sy, qx, qy), parameters the outer optimizer updates) for one library."""
    if library == "loop":
        params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
        return (lambda *b: _loop_meta_backward(model, params, *b)), list(params.values())
    lib = pytest.importorskip(library)
    if library == "higher":
        inner = torch.optim.SGD(model.parameters(), lr=LR)
        return (lambda *b: _higher_meta_backward(lib, model, inner, *b)), list(model.parameters())
    inner = lib.MetaSGD(model, lr=LR)
    return (lambda *b: _torchopt_meta_backward(lib, model, inner, *b)), list(model.parameters())


# library -> label.  higher and TorchOpt are optional (`pip install --no-deps higher==0.2.1`,
# `pip install torchopt`): skipped when absent.  BENCHMARKS.md measured 3.54 s (higher) and
# 3.34 s (TorchOpt) per outer step for them.
LOOPS = {"loop": "per-task loop (functional_call, autograd.grad)", "higher": "higher 0.2.1 (innerloop_ctx per task)",
         "torchopt": "TorchOpt 0.7.3 (MetaSGD per task)"}


def loop_step(episodes, library="loop"):
    """One outer step (with Adam) of ``library``'s per-task recipe on ``episodes``."""
    meta_backward, params = _recipe(library, _module())
    opt = torch.optim.Adam(params, lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        meta_backward(episodes.sx, episodes.sy, episodes.qx, episodes.qy)
        opt.step()

    return step


@pytest.mark.parametrize("library", list(LOOPS))
def test_per_task_loop(benchmark, episodes, library):
    step = loop_step(episodes, library)
    _bench(benchmark, step, "baseline", LOOPS[library])


@pytest.mark.skipif(DEVICE == "cpu", reason="vmap is 2x slower than the loop and needs 4 GiB on CPU; compared on GPU")
def test_torch_func_vmap(benchmark, episodes):
    model = _module()
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    opt = torch.optim.Adam(params.values(), lr=1e-3)

    def task_loss(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    def inner(p, sx, sy, qx, qy):
        g = grad(task_loss)(p, sx, sy)
        return task_loss({k: p[k] - LR * g[k] for k in p}, qx, qy)

    batched = vmap(inner, in_dims=(None, 0, 0, 0, 0))

    def step():
        opt.zero_grad(set_to_none=True)
        batched(params, episodes.sx, episodes.sy, episodes.qx, episodes.qy).mean().backward()
        opt.step()

    _bench(benchmark, step, "baseline", "torch.func.vmap")


@pytest.mark.parametrize("library", ["higher", "torchopt"])
def test_library_baselines_compute_the_same_meta_gradient(library):
    """Not a benchmark (run without --benchmark-only): the library recipes timed above give the
    per-task loop's meta-gradient, in float64, on two small tasks."""
    g = torch.Generator().manual_seed(0)
    sx, qx = (torch.rand(2, n, 1, 28, 28, generator=g, dtype=torch.float64) for n in (5, 10))
    sy, qy = torch.arange(5).expand(2, -1), torch.arange(5).repeat(2).expand(2, -1)
    grads = []
    for name in ("loop", library):
        meta_backward, params = _recipe(name, _module().double())
        meta_backward(sx, sy, qx, qy)
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)
