"""Few-shot evaluation shared by both paradigms: adapt on K support examples, score the query set.

Every learner answers :meth:`~metareg.learners.Learner.adapt_predict`, so meta-learners and
multi-task learners are scored on the same held-out tasks (drawn from a generator seeded
independently of training, so every algorithm run with the same seed sees the same tasks).
Results are reported as papers do: the mean over tasks and a 95% confidence interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .tasks.base import TaskDistribution, task_metric

__all__ = ["evaluate", "evaluate_train_tasks", "metric_name"]


def metric_name(metric: str, k: int, *, stepwise: bool = True) -> str:
    """``mse_before``, ``mse_after_1_step``, ``mse_after_10_steps`` ...; just ``accuracy`` for a
    learner that adapts without steps."""
    if not stepwise:
        return metric
    if k == 0:
        return f"{metric}_before"
    return f"{metric}_after_{k}_step{'s' if k != 1 else ''}"


def evaluate(
    learner,
    bench: TaskDistribution,
    *,
    num_tasks: int,
    steps: Sequence[int],
    generator: torch.Generator,
    chunk: int = 100,
    split: str = "test",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Mean and 95% CI of the benchmark metric over ``num_tasks`` held-out tasks, after each
    number of adaptation steps in ``steps``."""
    metric = bench.info.metric
    per_step: dict[int, list[torch.Tensor]] = {}
    stepwise = getattr(learner, "step_adaptation", True)
    if not stepwise:
        steps = [0]
    was_training = learner.training
    learner.eval()
    try:
        done = 0
        while done < num_tasks:
            n = min(chunk, num_tasks - done)
            batch = bench.eval_batch(generator, n, split).to(device, dtype)
            preds = learner.adapt_predict(batch, steps)
            for k, pred in preds.items():
                per_step.setdefault(k, []).append(task_metric(pred, batch.query_y, metric).double().cpu())
            done += n
    finally:
        learner.train(was_training)
    out: dict[str, float] = {}
    for k in sorted(per_step):
        vals = torch.cat(per_step[k])
        mean = vals.mean().item()
        ci = 1.96 * vals.std(unbiased=True).item() / math.sqrt(len(vals)) if len(vals) > 1 else float("nan")
        name = metric_name(metric, k, stepwise=stepwise)
        out[name] = mean
        out[name + "_ci95"] = ci
    out["eval_tasks"] = num_tasks
    return out


def evaluate_train_tasks(
    learner,
    bench: TaskDistribution,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, object]:
    """In-distribution error on the tasks trained on: the benchmark's fresh (held-out) samples of
    its M training tasks (``bench.train_tasks_batch``) scored with the learner's trained heads
    (``learner.predict_tasks``).  Mean and 95% CI over the M tasks, and the per-task values.
    Empty for a benchmark or learner without them (episodic benchmarks, meta-learners)."""
    if not (hasattr(bench, "train_tasks_batch") and hasattr(learner, "predict_tasks")):
        return {}
    metric = bench.info.metric
    was_training = learner.training
    learner.eval()
    try:
        batch = bench.train_tasks_batch(generator).to(device, dtype)
        pred = learner.predict_tasks(batch.query_x, batch.task_ids)
        vals = task_metric(pred, batch.query_y, metric).double().cpu()
    finally:
        learner.train(was_training)
    name = f"train_tasks_{metric}"
    ci = 1.96 * vals.std(unbiased=True).item() / math.sqrt(len(vals)) if len(vals) > 1 else float("nan")
    return {name: vals.mean().item(), name + "_ci95": ci, name + "_per_task": vals.tolist()}
