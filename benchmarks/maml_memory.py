"""Peak memory and time per outer step of second-order MAML against inner_steps (issue 13, item 4).

Conv4, 5-way 1-shot 15-query, 28x28x1 synthetic images, meta-batch T (32), one full outer step
including Adam, for each inner-step count and each path:

* ``stored``    metareg maml, every inner step's second-order graph kept until the backward (on
                CPU with ``task_parallel``, the default, the step runs Conv4's own chunks of tasks,
                2 here, each with its graph, on two workers per thread, or one by one with one
                thread);
* ``stored_whole`` the same with ``task_parallel=false``: the whole meta-batch's graph at once;
* ``recompute`` metareg maml with ``recompute=true`` (one step's graph at a time in the backward;
                on CPU the step follows Conv4's own chunks of tasks, 2 here, so one chunk's graph
                is alive at a time);
* ``recompute_whole`` ``recompute=true`` with ``task_chunk=T``: the whole meta-batch's query graph
                at once (what ``recompute`` was before it followed the backbone's chunks);
* ``chunked``   ``recompute=true`` and ``task_chunk=--chunk`` (2): the meta-batch a chunk at a time;
* ``imaml``     metareg imaml (proximal inner steps without a graph, ``cg_steps`` CG iterations);
* ``loop``      the per-task loop of learn2learn and higher: for each task, the inner steps with
                ``autograd.grad(create_graph=True)`` through ``functional_call`` on an nn.Module
                Conv4, then that task's query loss backpropagated at once (one task's graph alive);
* ``loop1``     the per-task loop of benchmarks/bench_maml_conv4.py: every task's query loss
                summed, one backward at the end (every task's graph alive).

Memory.  On CPU each configuration runs in its own process and its peak is that process's peak
resident set size (``ru_maxrss`` from ``os.wait4`` on the child); the table also gives the RSS
after the model and the data are built (``base``) and the difference (``step``).  On CUDA all
configurations run in this process and the peak is ``torch.cuda.max_memory_allocated`` after a
reset (allocator bytes, not the process's).

    OMP_NUM_THREADS=1 python benchmarks/maml_memory.py                      # T=32, steps 1 5 10 20
    OMP_NUM_THREADS=1 python benchmarks/maml_memory.py --tasks 8 --reps 3
    python benchmarks/maml_memory.py --device cuda --reps 10                  # benchmarks/gpu_check.sh
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

WAYS, SHOTS, QUERY, LR = 5, 1, 15, 0.1
PATHS = ("stored", "stored_whole", "recompute", "recompute_whole", "chunked", "imaml", "loop", "loop1")


def episodes(t: int, device: str):
    g = torch.Generator().manual_seed(0)
    sx = torch.rand(t, WAYS * SHOTS, 1, 28, 28, generator=g).to(device)
    qx = torch.rand(t, WAYS * QUERY, 1, 28, 28, generator=g).to(device)
    sy = torch.arange(WAYS).repeat_interleave(SHOTS).expand(t, -1).contiguous().to(device)
    qy = torch.arange(WAYS).repeat_interleave(QUERY).expand(t, -1).contiguous().to(device)
    return sx, sy, qx, qy


def _module() -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for i in range(4):
        layers += [nn.Conv2d(1 if i == 0 else 64, 64, 3, padding=1), nn.BatchNorm2d(64, track_running_stats=False),
                   nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, WAYS))


def make_step(path: str, steps: int, t: int, device: str, cg_steps: int, chunk: int):
    """A function running one outer step (meta-gradient and Adam) of ``path``."""
    sx, sy, qx, qy = episodes(t, device)
    if path in ("loop", "loop1"):
        model = _module().to(device)
        params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
        opt = torch.optim.Adam(params.values(), lr=1e-3)

        def task_loss(i):
            fast = params
            for _ in range(steps):
                loss = F.cross_entropy(functional_call(model, fast, (sx[i],)), sy[i])
                g = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
                fast = {k: p - LR * gi for (k, p), gi in zip(fast.items(), g)}
            return F.cross_entropy(functional_call(model, fast, (qx[i],)), qy[i]) / t

        def meta_backward():
            if path == "loop":
                for i in range(t):
                    task_loss(i).backward()
            else:
                sum(task_loss(i) for i in range(t)).backward()
    else:
        from metareg.learners import LearnerContext
        from metareg.nets.conv import conv4
        from metareg.plugins import get_registry
        from metareg.tasks import TaskBatch, TaskInfo

        info = TaskInfo(input_shape=(1, 28, 28), output_dim=WAYS, loss="cross_entropy", metric="accuracy")
        ctx = LearnerContext(task=info, make_backbone=lambda name=None: conv4((1, 28, 28), WAYS),
                             generator=torch.Generator().manual_seed(0), device=torch.device(device))
        over = {"inner_lr": LR, "inner_steps": steps}
        if path == "imaml":
            spec = get_registry().get("algorithm", "imaml")
            over.update(cg_steps=cg_steps, lam=1.0)
        else:
            spec = get_registry().get("algorithm", "maml")
            over.update(recompute=path in ("recompute", "recompute_whole", "chunked"),
                        task_chunk={"chunked": chunk, "recompute_whole": t}.get(path, 0),
                        task_parallel=path != "stored_whole")
        learner = spec.factory(spec.config(**over), ctx).to(device)
        opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
        batch = TaskBatch(sx, sy, qx, qy)

        def meta_backward():
            learner.step(batch)

    def step():
        opt.zero_grad(set_to_none=True)
        meta_backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(path: str, steps: int, t: int, device: str, reps: int, cg_steps: int, chunk: int) -> dict:
    """Run one configuration here: warm-up, then ``reps`` timed outer steps."""
    step = make_step(path, steps, t, device, cg_steps, chunk)
    out = {"path": path, "inner_steps": steps, "tasks": t}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        out["base_mb"] = torch.cuda.memory_allocated() / 2**20
    else:
        out["base_mb"] = rss_mb()
    step()  # warm-up (its peak counts: every step peaks alike)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    out["s_per_step"] = statistics.median(times)
    out["s_min"] = min(times)
    if device == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_child(path: str, steps: int, args) -> dict:
    """One configuration in its own process; peak RSS from the kernel's accounting of that child."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", path, str(steps), "--tasks", str(args.tasks),
           "--reps", str(args.reps), "--cg-steps", str(args.cg_steps), "--chunk", str(args.chunk), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    text = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return {"path": path, "inner_steps": steps, "tasks": args.tasks, "error": f"exit {proc.returncode}"}
    out = json.loads(text.strip().splitlines()[-1])
    out["peak_mb"] = usage.ru_maxrss / 1024  # kilobytes on Linux
    return out


def table(rows: list[dict]) -> str:
    by = {(r["path"], r["inner_steps"]): r for r in rows}
    lines = ["| path | inner steps | peak MB | base MB | step MB (peak - base) | peak / 1-step peak | s per outer step "
             "(min) | time / stored |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['path']} | {r['inner_steps']} | {r['error']} | | | | | |")
            continue
        one = by.get((r["path"], 1))
        stored = by.get(("stored", r["inner_steps"]))
        ratio = f"{r['peak_mb'] / one['peak_mb']:.2f}" if one and "peak_mb" in one else "-"
        tr = f"{r['s_per_step'] / stored['s_per_step']:.2f}" if stored and "s_per_step" in stored else "-"
        lines.append(f"| {r['path']} | {r['inner_steps']} | {r['peak_mb']:.0f} | {r['base_mb']:.0f} | "
                     f"{r['peak_mb'] - r['base_mb']:.0f} | {ratio} | {r['s_per_step']:.2f} ({r['s_min']:.2f}) | {tr} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=32, help="meta-batch size T")
    ap.add_argument("--steps", default="1,5,10,20", help="inner-step counts, comma-separated")
    ap.add_argument("--paths", default="stored,recompute,chunked,imaml,loop",
                    help=f"comma-separated, from {','.join(PATHS)}")
    ap.add_argument("--reps", type=int, default=2, help="timed outer steps after one warm-up")
    ap.add_argument("--cg-steps", type=int, default=5, help="iMAML's conjugate-gradient iterations")
    ap.add_argument("--chunk", type=int, default=2, help="task_chunk of the 'chunked' path")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--one", nargs=2, metavar=("PATH", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.tasks, args.device, args.reps, args.cg_steps,
                                 args.chunk)))
        return 0
    paths = [p for p in args.paths.split(",") if p]
    bad = [p for p in paths if p not in PATHS]
    if bad:
        ap.error(f"unknown path(s) {bad}; choose from {PATHS}")
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, OMP_NUM_THREADS={threads}"
    print(f"Conv4 5-way 1-shot 15-query, T={args.tasks}, torch {torch.__version__}, {where}; memory: "
          f"{'max_memory_allocated' if args.device == 'cuda' else 'peak RSS of a process per configuration'}",
          flush=True)
    rows = []
    for steps in [int(s) for s in args.steps.split(",")]:
        for path in paths:
            t0 = time.perf_counter()
            if args.device == "cuda":
                try:
                    r = measure(path, steps, args.tasks, "cuda", args.reps, args.cg_steps, args.chunk)
                except torch.OutOfMemoryError:
                    r = {"path": path, "inner_steps": steps, "tasks": args.tasks, "error": "out of memory"}
                    torch.cuda.empty_cache()
            else:
                r = run_child(path, steps, args)
            r["wall_s"] = time.perf_counter() - t0
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
