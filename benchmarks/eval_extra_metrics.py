"""Score a saved run's learner on the held-out tasks of its final evaluation with the learner's
own extra metrics (``learner.eval_metrics(batch) -> {name: per-task tensor [T]}``, e.g. CNP's
``nll``), which the evaluator does not carry yet.

    python benchmarks/eval_extra_metrics.py RUN_DIR [RUN_DIR ...]

The tasks are drawn exactly as the run's final evaluation drew them (the run's seed, the "test"
generator, chunks of ``eval_chunk``), so the benchmark metric printed beside them must equal the
one in the run's summary.json: the check that these are the same tasks.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from metareg.evaluate import evaluation_generator
from metareg.runner import load_run
from metareg.tasks.base import task_metric


def _mean_ci(vals: torch.Tensor) -> tuple[float, float]:
    return vals.mean().item(), 1.96 * vals.std(unbiased=True).item() / math.sqrt(len(vals))


@torch.no_grad()
def score(folder: str) -> dict[str, float]:
    run = load_run(folder)
    cfg, learner, bench = run.config, run.learner, run.bench
    if not hasattr(learner, "eval_metrics"):
        raise SystemExit(f"{folder}: {type(learner).__name__} has no eval_metrics")
    g = evaluation_generator(cfg.seed, "test")
    metric = bench.info.metric
    per: dict[str, list[torch.Tensor]] = {}
    learner.eval()
    done = 0
    while done < cfg.eval_tasks:
        n = min(cfg.eval_chunk, cfg.eval_tasks - done)
        batch = bench.eval_batch(g, n, "test").to(run.device, run.dtype)
        pred = learner.adapt_predict(batch, [0])[0]
        per.setdefault(metric, []).append(task_metric(pred, batch.query_y, metric).double().cpu())
        for name, vals in learner.eval_metrics(batch).items():
            per.setdefault(name, []).append(vals.double().cpu())
        done += n
    out: dict[str, float] = {"eval_tasks": done}
    for name, chunks in per.items():
        out[name], out[name + "_ci95"] = _mean_ci(torch.cat(chunks))
    summary = Path(folder) / "summary.json"
    if summary.is_file():
        out[f"summary_{metric}"] = json.loads(summary.read_text()).get(metric)
    return out


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print(folder, json.dumps(score(folder)))
