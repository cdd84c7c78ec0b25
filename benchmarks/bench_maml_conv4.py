"""MAML on few-shot images: Conv4, 5-way 1-shot 15-query, 28x28x1, meta-batch 32, second order,
one inner step of lr 0.4 (BENCHMARKS.md's setting), one full outer step including Adam.

metareg's step (fast weights [32, P], grouped convolutions on channels-last activations, fused batch norm) against the
per-task Python loop that learn2learn, higher and TorchOpt run, and against torch.func.vmap.
Targets (issue 4): >= 2x the loop's outer steps per second on 2 CPU cores; >= 3x vmap on an H100
with no more peak memory.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from metareg.nets.conv import conv4

WAYS, SHOTS, QUERY, T, LR = 5, 1, 15, 32, 0.4
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROUNDS = 3 if DEVICE == "cpu" else 20


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


def test_metareg_maml_conv4(benchmark, episodes):
    from metareg.learners import LearnerContext
    from metareg.plugins import get_registry
    from metareg.tasks import TaskBatch, TaskInfo

    assert conv4((1, 28, 28), WAYS).num_params == 112_261  # BENCHMARKS.md's Conv4
    spec = get_registry().get("algorithm", "maml")
    info = TaskInfo(input_shape=(1, 28, 28), output_dim=WAYS, loss="cross_entropy", metric="accuracy")
    ctx = LearnerContext(task=info, make_backbone=lambda name=None: conv4((1, 28, 28), WAYS),
                         generator=torch.Generator().manual_seed(0), device=torch.device(DEVICE))
    learner = spec.factory(spec.config(inner_lr=LR), ctx).to(DEVICE)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    batch = TaskBatch(episodes.sx, episodes.sy, episodes.qx, episodes.qy)

    def step():
        opt.zero_grad(set_to_none=True)
        learner.step(batch)
        opt.step()

    _bench(benchmark, step, "metareg", "metareg maml (batched fast weights)")


def test_per_task_loop(benchmark, episodes):
    model = _module()
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    opt = torch.optim.Adam(params.values(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(T):
            loss = F.cross_entropy(functional_call(model, params, (episodes.sx[i],)), episodes.sy[i])
            g = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            fast = {k: p - LR * gi for (k, p), gi in zip(params.items(), g)}
            total = total + F.cross_entropy(functional_call(model, fast, (episodes.qx[i],)), episodes.qy[i])
        (total / T).backward()
        opt.step()

    _bench(benchmark, step, "baseline", "per-task loop (learn2learn/higher/TorchOpt style)")


def test_higher_loop(benchmark, episodes):
    # higher's own MAML recipe (its examples/maml-omniglot.py): a monkeypatched copy of the module
    # per task, a differentiable SGD step, the query loss backpropagated task by task.
    # BENCHMARKS.md measured 3.54 s for it. Optional: `pip install --no-deps higher` (pure Python).
    higher = pytest.importorskip("higher")
    model = _module()
    meta_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    inner_opt = torch.optim.SGD(model.parameters(), lr=LR)

    def step():
        meta_opt.zero_grad(set_to_none=True)
        for i in range(T):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                diffopt.step(F.cross_entropy(fmodel(episodes.sx[i]), episodes.sy[i]))
                (F.cross_entropy(fmodel(episodes.qx[i]), episodes.qy[i]) / T).backward()
        meta_opt.step()

    _bench(benchmark, step, "baseline", "higher 0.2.1 (innerloop_ctx per task)")


def test_torchopt_loop(benchmark, episodes):
    # TorchOpt's MAML recipe (its examples/FuncTorch-free MAML-omniglot): MetaSGD steps the
    # module in place, the query loss is backpropagated per task, then the initial state is
    # restored.  BENCHMARKS.md measured 3.34 s.  Optional: `pip install torchopt` (needs optree).
    torchopt = pytest.importorskip("torchopt")
    model = _module()
    meta_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    inner_opt = torchopt.MetaSGD(model, lr=LR)

    def step():
        meta_opt.zero_grad(set_to_none=True)
        net_state = torchopt.extract_state_dict(model)
        opt_state = torchopt.extract_state_dict(inner_opt)
        for i in range(T):
            inner_opt.step(F.cross_entropy(model(episodes.sx[i]), episodes.sy[i]))
            (F.cross_entropy(model(episodes.qx[i]), episodes.qy[i]) / T).backward()
            torchopt.recover_state_dict(model, net_state)
            torchopt.recover_state_dict(inner_opt, opt_state)
        meta_opt.step()

    _bench(benchmark, step, "baseline", "TorchOpt 0.7.3 (MetaSGD per task)")


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
    lib = pytest.importorskip(library)
    g = torch.Generator().manual_seed(0)
    t = 2
    sx, qx = torch.rand(t, 5, 1, 28, 28, generator=g, dtype=torch.float64), torch.rand(t, 10, 1, 28, 28, generator=g, dtype=torch.float64)
    sy, qy = torch.arange(5).expand(t, -1), torch.arange(5).repeat(2).expand(t, -1)

    def flat_grad(model):
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    model = _module().double()
    params = dict(model.named_parameters())
    total = 0.0
    for i in range(t):
        gs = torch.autograd.grad(F.cross_entropy(functional_call(model, params, (sx[i],)), sy[i]), list(params.values()),
                                 create_graph=True)
        fast = {k: p - LR * gi for (k, p), gi in zip(params.items(), gs)}
        total = total + F.cross_entropy(functional_call(model, fast, (qx[i],)), qy[i])
    (total / t).backward()
    want = flat_grad(model)

    model = _module().double()
    if library == "higher":
        inner = torch.optim.SGD(model.parameters(), lr=LR)
        for i in range(t):
            with lib.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
                diffopt.step(F.cross_entropy(fmodel(sx[i]), sy[i]))
                (F.cross_entropy(fmodel(qx[i]), qy[i]) / t).backward()
    else:
        inner = lib.MetaSGD(model, lr=LR)
        net_state, opt_state = lib.extract_state_dict(model), lib.extract_state_dict(inner)
        for i in range(t):
            inner.step(F.cross_entropy(model(sx[i]), sy[i]))
            (F.cross_entropy(model(qx[i]), qy[i]) / t).backward()
            lib.recover_state_dict(model, net_state)
            lib.recover_state_dict(inner, opt_state)
    torch.testing.assert_close(flat_grad(model), want, rtol=1e-10, atol=1e-12)
