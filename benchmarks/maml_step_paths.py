"""MAML's outer step on sinusoid by each of metareg's paths, beside torch.func.vmap, in one process.

    python benchmarks/maml_step_paths.py [--device cuda] [--steps 200] [--repeats 5] [--no-compile]

Paths: the default (the closed-form meta-gradient as one C++ op, ``metareg.ops.mlp_meta_grad``),
the same closed form in Python (``explicit_meta_gradient``, what runs without the extension and for
networks other than plain ReLU MLPs), the step through the autograd engine
(``explicit_meta_gradient = False``), ``compile=true`` (the Python closed form through
torch.compile; its one-off compilation timed separately), and the torch.func.vmap step (the fastest plain-torch way; the
baseline of issue 13's 3x target).  Same model (MLP 1-40-40-1), same pre-sampled meta-batches of 25
tasks, one second-order inner step of lr 0.01, Adam.  Prints the median time per outer step and
the ratio to vmap; ``--json FILE`` writes them.  benchmarks/bench_maml.py times the same steps
under pytest-benchmark; benchmarks/gpu_check.sh runs this on a GPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from metareg.runner import Run

LR = 0.01


def batches(device: str, pool: int = 16):
    run = Run("maml", "sinusoid", {"device": device})
    run.build()
    g = torch.Generator().manual_seed(0)
    return [run.bench.train_batch(g).to(torch.device(device), torch.float32) for _ in range(pool)]


def vmap_step(device: str):
    """One outer step written with torch.func (grad inside vmap over tasks), Adam on the same model."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1)).to(device)
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    opt = torch.optim.Adam(params.values(), lr=1e-3, foreach=True)

    def task_loss(p, x, y):
        return F.mse_loss(functional_call(model, p, (x,)), y)

    def inner(p, xs, ys, xq, yq):
        g = grad(task_loss)(p, xs, ys)
        return task_loss({k: p[k] - LR * g[k] for k in p}, xq, yq)

    batched = vmap(inner, in_dims=(None, 0, 0, 0, 0))

    def step(b):
        opt.zero_grad(set_to_none=True)
        batched(params, b.support_x, b.support_y, b.query_x, b.query_y).mean().backward()
        opt.step()

    return step


def metareg_step(device: str, path: str):
    run = Run("maml", "sinusoid", {"device": device, "compile": path == "compile"})
    run.build()
    learner, opt = run.learner, run.optimizer
    if path == "autograd":
        learner.explicit_meta_gradient = False
    elif path == "python":
        learner.__dict__["_mlp_widths"] = None  # not the C++ op: the closed form in Python

    def step(b):
        opt.zero_grad(set_to_none=True)
        learner.step(b)
        opt.step()

    return step


def time_steps(step, pool, device: str, steps: int, repeats: int) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    it = itertools.cycle(pool)
    for _ in range(10):
        step(next(it))
    sync()
    per = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            step(next(it))
        sync()
        per.append((time.perf_counter() - t) / steps)
    return statistics.median(per)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    pool = batches(a.device)
    paths = ["default", "python", "autograd"] + ([] if a.no_compile else ["compile"])
    steps = {"vmap": vmap_step(a.device)}
    info = {}
    for p in paths:
        steps[p] = metareg_step(a.device, p)
        if p == "compile":
            t = time.perf_counter()
            steps[p](pool[0])
            info["compile_s"] = round(time.perf_counter() - t, 1)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(2):  # interleaved rounds: a change of machine load hits every path alike
        for k, fn in steps.items():
            times[k].append(time_steps(fn, pool, a.device, a.steps, a.repeats))
    best = {k: min(v) for k, v in times.items()}
    print(f"MAML sinusoid outer step on {a.device} (T=25, K=10, second order, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)){'; compile took %.1f s' % info['compile_s'] if 'compile_s' in info else ''}")
    print("| path | ms per outer step | vs vmap |\n|---|---|---|")
    for k in ["vmap", *paths]:
        print(f"| {k} | {best[k] * 1e3:.3f} | {best['vmap'] / best[k]:.2f}x |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"device": a.device, "ms": {k: v * 1e3 for k, v in best.items()}, **info}, fh, indent=1)


if __name__ == "__main__":
    main()
