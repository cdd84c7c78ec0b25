"""Hard sharing against single-task training on the relatedness family (issue 5).

For each rho and seed, trains ``hard_sharing`` and ``single_task`` with the same budget and reports
the error on fresh samples of the M training tasks (``train_tasks_mse``), mean and 95% CI over
seeds (each seed also draws its own training tasks).  Usage (2 cores shared: one thread):

    OMP_NUM_THREADS=1 python benchmarks/mtl/relatedness_sweep.py --steps 2000 --seeds 0 1 2 3 4
"""

import argparse
import json
import math
import statistics

import torch

from metareg.config import parse_value
from metareg.runner import Run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rhos", type=float, nargs="+", default=[0.0, 0.5, 0.9, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--algos", nargs="+", default=["hard_sharing", "single_task"])
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    extra = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    rows = []
    for rho in args.rhos:
        for algo in args.algos:
            vals = []
            for seed in args.seeds:
                # a new draw of the training tasks per seed, so the CI covers the task draw too
                over = {"rho": rho, "steps": args.steps, "seed": seed, "task_seed": 1000 + seed, "val_every": 0,
                        "eval_tasks": 100,
                        "log_every": 100, **extra}
                s = Run(algo, "relatedness", over).execute(progress=False)
                vals.append(s["train_tasks_mse"])
            mean = statistics.fmean(vals)
            ci = 1.96 * statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else float("nan")
            rows.append({"rho": rho, "algo": algo, "train_tasks_mse": mean, "ci95": ci, "per_seed": vals})
            print(f"rho={rho:<4} {algo:<14} train_tasks_mse {mean:.4f} ± {ci:.4f}  ({', '.join(f'{v:.4f}' for v in vals)})",
                  flush=True)
    # same seed = same training tasks and budget for every algorithm: the paired difference
    # removes the task-draw variance from the comparison
    by = {(r["rho"], r["algo"]): r["per_seed"] for r in rows}
    base, other = args.algos[0], args.algos[-1]
    for rho in args.rhos:
        d = [a - b for a, b in zip(by[rho, base], by[rho, other])]
        ci = 1.96 * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        print(f"rho={rho:<4} {base} - {other}: {statistics.fmean(d):+.4f} ± {ci:.4f} (negative: {base} better)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
