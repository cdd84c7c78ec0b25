"""MAML on sinusoid: metareg's outer step against the fastest plain-torch ways of doing the same step.

Same model (MLP 1-40-40-1), same data (a pool of pre-sampled meta-batches of 25 tasks, 10 support
and 10 query points each), same inner step (one, lr 0.01, second order) and the same Adam step.
Target (issue 2): metareg at least 2x the outer steps per second of the torch.func.vmap version;
issue 13: at least 3x.  The per-task loop is what learn2learn, higher and TorchOpt do.

metareg's cases: the default step (the closed-form meta-gradient of R-operators as one C++ op,
``metareg.ops.mlp_meta_grad``), the same closed form in Python (``explicit_meta_gradient``), the
step through the autograd engine (what the default was before), and ``compile=true`` (the Python
closed form through torch.compile; its one-off compilation is done before the timing and printed).
"""

import itertools
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from maml_step_paths import vmap_step
from metareg.runner import Run

LR = 0.01
POOL = 16


@pytest.fixture(scope="module")
def batches():
    run = Run("maml", "sinusoid", {})
    run.build()
    g = torch.Generator().manual_seed(0)
    return [run.bench.train_batch(g) for _ in range(POOL)]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


def _bench(benchmark, fn, role, label):
    benchmark.group = "maml sinusoid outer step (T=25, K=10, 2nd order)"
    benchmark.extra_info["role"] = role
    benchmark.extra_info["label"] = label
    benchmark.pedantic(fn, rounds=60, iterations=5, warmup_rounds=5)


@pytest.mark.parametrize("variant", ["default", "python", "autograd", "compile"])
def test_metareg_maml(benchmark, batches, variant):
    run = Run("maml", "sinusoid", {"compile": variant == "compile"})
    run.build()
    learner, opt = run.learner, run.optimizer
    if variant == "autograd":
        learner.explicit_meta_gradient = False
    elif variant == "python":
        learner.__dict__["_mlp_widths"] = None  # the closed form in Python, not the C++ op
    it = itertools.cycle(batches)

    def step():
        opt.zero_grad(set_to_none=True)
        learner.step(next(it))
        opt.step()

    if variant == "compile":
        t0 = time.perf_counter()
        step()
        benchmark.extra_info["compile_s"] = round(time.perf_counter() - t0, 1)
        print(f"\ncompile=true: first step (compilation) {time.perf_counter() - t0:.1f} s")
    label = {"default": "metareg maml", "python": "metareg maml (closed form in Python)",
             "autograd": "metareg maml (autograd engine)",
             "compile": "metareg maml (compile=true)"}[variant]
    _bench(benchmark, step, "metareg", label)


def test_torch_func_vmap(benchmark, batches):
    step = vmap_step("cpu")
    it = itertools.cycle(batches)
    _bench(benchmark, lambda: step(next(it)), "baseline", "torch.func.vmap")


def test_per_task_loop(benchmark, batches):
    model = _model()
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    opt = torch.optim.Adam(params.values(), lr=1e-3, foreach=True)
    it = itertools.cycle(batches)

    def step():
        b = next(it)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(b.num_tasks):
            loss = F.mse_loss(functional_call(model, params, (b.support_x[i],)), b.support_y[i])
            g = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            fast = {k: p - LR * gi for (k, p), gi in zip(params.items(), g)}
            total = total + F.mse_loss(functional_call(model, fast, (b.query_x[i],)), b.query_y[i])
        (total / b.num_tasks).backward()
        opt.step()

    _bench(benchmark, step, "baseline", "per-task loop (learn2learn-style)")
