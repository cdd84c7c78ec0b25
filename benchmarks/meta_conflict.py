"""Multi-task methods inside meta-learning on meta-training tasks that conflict (issue 10, item 4).

Trains one meta-learner plainly and with each variant (a gradient combiner over the per-task
meta-gradients, the task-adversarial encoder) with the same seed, the same budget and the same
tasks, then scores every run on the same held-out episodes: mean ± 95% CI, and the paired
difference to the plain learner ± 95% CI (same episodes, so the episode-to-episode variance
cancels).  Also reports the mean pairwise cosine of the per-task meta-gradients (logged every 10
steps by the combiner runs) and the time per training step.

    OMP_NUM_THREADS=1 python benchmarks/meta_conflict.py --bench glyph_clusters --algo protonet \\
        --steps 300 --variants equal pcgrad mgda adv:0.1
    OMP_NUM_THREADS=1 python benchmarks/meta_conflict.py --bench relatedness --algo maml --steps 2000 \\
        --set rho=0.0 --eval-step 10

``glyph_clusters`` is a built-in benchmark (plugins/glyph_clusters.py,
metareg/tasks/glyph_clusters.py); any installed benchmark works.  Variants: ``equal`` (the plain
learner), a combiner name, ``adv:W`` (adversarial weight W with the plain mean), ``NAME+adv:W``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

import metareg
from metareg.evaluate import evaluation_generator, metric_name
from metareg.overrides import parse_sets
from metareg.runner import Run


def variant_overrides(v: str) -> dict:
    out = {"combiner": "equal"}
    for part in v.split("+"):
        if part.startswith("adv:"):
            out["adversarial"] = float(part[4:])
        else:
            out["combiner"] = part
    return out


@torch.no_grad()
def per_task_scores(run: Run, k: int) -> torch.Tensor:
    """The metric of every held-out test episode [N] after k steps (the runner's test episodes)."""
    cfg = run.config
    g = evaluation_generator(cfg.seed, "test")
    bench, learner = run.bench, run.learner
    learner.eval()
    steps = [k] if learner.step_adaptation else [0]
    vals, done = [], 0
    while done < cfg.eval_tasks:
        n = min(cfg.eval_chunk, cfg.eval_tasks - done)
        batch = bench.eval_batch(g, n, "test").to(run.device, run.dtype)
        pred = learner.adapt_predict(batch, steps)[steps[0]]
        vals.append(metareg.task_metric(pred, batch.query_y, bench.info.metric).double())
        done += n
    return torch.cat(vals)


def ci95(x: torch.Tensor) -> float:
    return 1.96 * x.std(unbiased=True).item() / math.sqrt(len(x)) if len(x) > 1 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", default="glyph_clusters")
    ap.add_argument("--algo", default="protonet")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-step", type=int, default=1, help="adaptation steps the MAML family is scored after")
    ap.add_argument("--eval-tasks", type=int, default=600)
    ap.add_argument("--variants", nargs="+",
                    default=["equal", "pcgrad", "gradvac", "cagrad", "mgda", "nash_mtl", "upgrad", "gradnorm", "adv:0.1"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()
    base = {"steps": args.steps, "seed": args.seed, "eval_tasks": args.eval_tasks, "val_every": 0,
            "checkpoint_every": 0, "checkpoint_every_s": 0, "eval_steps": [0, args.eval_step]}
    base.update(parse_sets(args.set))
    rows, plain = [], None
    print(f"# {args.algo} on {args.bench}, {args.steps} steps, seed {args.seed}, {base}")
    print("| variant | score ± 95% CI | paired diff vs plain ± 95% CI | mean grad cosine | frac pairs in conflict | "
          "discriminator acc | s/step |")
    print("|---|---|---|---|---|---|---|")
    for v in args.variants:
        with tempfile.TemporaryDirectory() as tmp:
            run = Run(args.algo, args.bench, {**base, **variant_overrides(v)}, out=Path(tmp) / "run")
            t0 = time.perf_counter()
            summary = run.execute(progress=False)
            wall = time.perf_counter() - t0
            lines = [json.loads(s) for s in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines() if s.strip()]
        scores = per_task_scores(run, args.eval_step)
        metric = run.bench.info.metric
        key = metric_name(metric, args.eval_step, stepwise=run.learner.step_adaptation)
        cos = [x["grad_cosine_mean"] for x in lines if "grad_cosine_mean" in x]
        frac = [x["grad_conflict_frac"] for x in lines if "grad_conflict_frac" in x]
        acc = [x["discriminator_acc"] for x in lines if "discriminator_acc" in x]
        if plain is None and v == "equal":
            plain = scores
        diff = (scores - plain) if plain is not None and v != "equal" else None
        row = {"variant": v, "key": key, "score": scores.mean().item(), "ci95": ci95(scores),
               "summary_score": summary.get(key), "diff": None if diff is None else diff.mean().item(),
               "diff_ci95": None if diff is None else ci95(diff),
               "grad_cosine_mean": sum(cos) / len(cos) if cos else None,
               "grad_conflict_frac": sum(frac) / len(frac) if frac else None,
               "discriminator_acc_last": acc[-1] if acc else None,
               "train_time_s": summary["train_time_s"], "steps": summary["steps"],
               "s_per_step": summary["train_time_s"] / max(1, summary["steps"]), "wall_s": wall,
               "status": summary["status"]}
        rows.append(row)
        fmt = lambda x, f="{:.3f}": "" if x is None else f.format(x)  # noqa: E731
        d = "" if diff is None else f"{row['diff']:+.4f} ± {row['diff_ci95']:.4f}"
        print(f"| {v} | {row['score']:.4f} ± {row['ci95']:.4f} | {d} | {fmt(row['grad_cosine_mean'], '{:+.3f}')} | "
              f"{fmt(row['grad_conflict_frac'], '{:.2f}')} | {fmt(row['discriminator_acc_last'], '{:.2f}')} | "
              f"{row['s_per_step']:.4f} |", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "base": base, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
