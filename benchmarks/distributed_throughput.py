"""Data-parallel throughput on one machine: N processes x 1 thread against 1 process x N threads
(the same cores), and what crosses the wire per outer step.

    python benchmarks/distributed_throughput.py [--nproc 2] [--steps 20]

Prints, per workload, steps/s of both, their ratio, the bytes all-reduced per outer step and the
time spent in all-reduce (gloo over loopback on CPU).  Results go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

WORKLOADS = {
    "MAML sinusoid (meta_batch 24)": ["maml", "-b", "sinusoid", "--set", "meta_batch=24"],
    "MAML Conv4 glyphs 5w1s (meta_batch 8)": ["maml", "-b", "glyphs", "--set", "meta_batch=8"],
    "hard_sharing + PCGrad sinusoid_mtl": ["hard_sharing", "-b", "sinusoid_mtl", "--set", "combiner=pcgrad"],
}


def run(args: list[str], steps: int, nproc: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "run"
        cmd = [sys.executable, "-m", "metareg", "run", *args, "--steps", str(steps), "--set", "eval_tasks=4",
               "--set", "val_every=0", "--set", "checkpoint_every=0", "--set", "checkpoint_every_s=0", "--out", str(out),
               "--json"]
        if nproc > 1:
            cmd += ["--nproc", str(nproc)]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        if p.returncode:
            raise SystemExit(p.stderr[-2000:])
        return json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    print(f"| workload | 1 proc x {a.nproc} threads (steps/s) | {a.nproc} procs x 1 thread (steps/s) | ratio | "
          "all-reduced per step | all-reduce time per step |")
    print("|---|---|---|---|---|---|")
    for label, args in WORKLOADS.items():
        one = run(args, a.steps, 1, a.nproc)
        many = run(args, a.steps, a.nproc, 1)
        ratio = many["steps_per_s"] / one["steps_per_s"]
        print(f"| {label} | {one['steps_per_s']:.2f} | {many['steps_per_s']:.2f} | {ratio:.2f}x | "
              f"{many['allreduce_bytes_per_step'] / 1024:.1f} KiB | {many['allreduce_ms_per_step']:.2f} ms |", flush=True)


if __name__ == "__main__":
    main()
