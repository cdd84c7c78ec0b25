"""GradNorm's task weights on its own toy problem (Chen et al. 2018, section 4; issue 5).

Trains ``hard_sharing`` with ``combiner=gradnorm`` and with ``combiner=equal`` on ``gradnorm_toy``
(task scales sigma_i log-spaced from 1 to 100), reads GradNorm's weights back from the run's
metrics.jsonl (``combiner.weights``, logged every step) and prints their trajectory, then the
error of each trained task on fresh samples divided by sigma_i^2 (a scale-free error) for both.
Usage (2 cores shared: one thread):

    OMP_NUM_THREADS=1 python benchmarks/mtl/gradnorm_toy_weights.py --tasks 2 --steps 1000 --out /tmp/gn
"""

import argparse
import json
from pathlib import Path

import torch

from metareg.runner import Run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=100, help="print the weights every N steps")
    ap.add_argument("--out", default="/tmp/gradnorm_toy")
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = {}
    for combiner in ("gradnorm", "equal"):
        out = Path(args.out) / f"{combiner}-T{args.tasks}-s{args.seed}"
        over = {"combiner": combiner, "num_tasks": args.tasks, "steps": args.steps, "seed": args.seed,
                "log_every": args.every, "val_every": 0, "eval_tasks": 100}
        runs[combiner] = (Run("hard_sharing", "gradnorm_toy", over, out=out).execute(progress=False), out)
    summary, out = runs["gradnorm"]
    sigma = torch.logspace(0, 2, args.tasks) if args.tasks > 1 else torch.ones(1)
    print("sigma:", [round(float(s), 2) for s in sigma])
    print("step | GradNorm weights w_i | w_last / w_first")
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("split") == "train" and "combiner.weights" in rec:
            w = rec["combiner.weights"]
            print(f"{rec['step']:>5} | {' '.join(f'{v:.4f}' for v in w)} | {w[-1] / w[0]:.4f}")
    for combiner, (s, _) in runs.items():
        per = s["train_tasks_mse_per_task"]
        scaled = [e / float(sig) ** 2 for e, sig in zip(per, sigma)]
        print(f"{combiner:<9} train_tasks_mse / sigma^2 per task: {' '.join(f'{v:.4f}' for v in scaled)}  "
              f"(held-out tasks, mse after ridge head: {s['mse_after_1_step']:.1f})")


if __name__ == "__main__":
    main()
