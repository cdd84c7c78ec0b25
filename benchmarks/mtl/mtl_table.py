"""Every multi-task architecture (and a few combiners) on one benchmark, same budget and seeds.

Prints, per (architecture, combiner): the trained tasks' error on fresh samples, the held-out
tasks' error after fitting a head from K examples, the mean pairwise cosine of the task gradients
over training (read from metrics.jsonl) and the training speed.  Usage (one thread):

    OMP_NUM_THREADS=1 python benchmarks/mtl/mtl_table.py --bench relatedness --set rho=0.9 --steps 2000
"""

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

import torch

from metareg.config import parse_value
from metareg.runner import Run

DEFAULT = ["hard_sharing:equal", "hard_sharing:pcgrad", "hard_sharing:upgrad", "single_task:equal",
           "soft_sharing_l2:equal", "cross_stitch:equal", "low_rank:equal", "mmoe:equal", "adversarial_sharing:equal"]


def mean_ci(vals):
    ci = 1.96 * statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else float("nan")
    return f"{statistics.fmean(vals):.4f} ± {ci:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="relatedness")
    ap.add_argument("--runs", nargs="+", default=DEFAULT, help="architecture:combiner pairs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides")
    args = ap.parse_args()
    torch.set_num_threads(1)
    extra = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    print("| architecture | combiner | trained tasks | held-out, head from K | mean grad cosine | steps/s |")
    print("|---|---|---|---|---|---|")
    for pair in args.runs:
        algo, combiner = pair.split(":")
        train, held, cos, speed = [], [], [], []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "run"
                over = {"combiner": combiner, "steps": args.steps, "seed": seed, "val_every": 0, "eval_tasks": 200,
                        **extra}
                s = Run(algo, args.bench, over, out=out).execute(progress=False)
                lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            metric = "accuracy" if "train_tasks_accuracy" in s else "mse"
            train.append(s[f"train_tasks_{metric}"])
            key = f"{metric}_after_1_step" if f"{metric}_after_1_step" in s else metric
            held.append(s[key])
            cos += [r["grad_cosine_mean"] for r in lines if "grad_cosine_mean" in r]
            speed.append(s["steps_per_s"])
        print(f"| {algo} | {combiner} | {mean_ci(train)} | {mean_ci(held)} | "
              f"{statistics.fmean(cos) if cos else float('nan'):+.3f} | {statistics.fmean(speed):.0f} |", flush=True)


if __name__ == "__main__":
    main()
