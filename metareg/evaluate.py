"""Few-shot evaluation shared by both paradigms: adapt on K support examples, score the query set.

Every learner answers :meth:`~metareg.learners.Learner.adapt_predict`, so meta-learners and
multi-task learners are scored on the same held-out tasks (drawn from a generator seeded
independently of training, so every algorithm run with the same seed sees the same tasks).
Results are reported as papers do: the mean over tasks and a 95% confidence interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import DataError
from .tasks.base import TaskBatch, TaskDistribution, TaskInfo, task_metric

__all__ = ["evaluate", "evaluate_tasks", "evaluate_train_tasks", "metric_name", "is_metric_key",
           "evaluation_generator", "load_task_file", "EVAL_SEED_OFFSETS"]


def metric_name(metric: str, k: int, *, stepwise: bool = True) -> str:
    """``mse_before``, ``mse_after_1_step``, ``mse_after_10_steps`` ...; just ``accuracy`` for a
    learner that adapts without steps."""
    if not stepwise:
        return metric
    if k == 0:
        return f"{metric}_before"
    return f"{metric}_after_{k}_step{'s' if k != 1 else ''}"


#: which generator each evaluation draws its tasks from: ``seed * 1_000_003 + offset``, so every
#: algorithm run with the same seed is scored on the same tasks, apart from the training tasks
EVAL_SEED_OFFSETS = {"val": 1, "test": 2, "train_tasks": 3}


def evaluation_generator(seed: int, purpose: str) -> torch.Generator:
    """The generator of the ``purpose`` evaluation ("val", "test", "train_tasks") of a run with ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + EVAL_SEED_OFFSETS[purpose])


def is_metric_key(key: str, metric: str | None = None) -> bool:
    """Whether a summary key is an evaluation score (not its CI, not a per-task list): ``mse``,
    ``accuracy_before``, ``mse_after_10_steps``, ``train_tasks_mse`` ...  With ``metric`` (the
    benchmark's, recorded in every summary) any metric name works, not only the built-in two."""
    if key.endswith(("_ci95", "_per_task")):
        return False
    names = (metric,) if metric else ("mse", "accuracy")
    body = key.removeprefix("train_tasks_")
    return any(body == m or body == f"{m}_before" or body.startswith(f"{m}_after_") for m in names)


def _score(learner, batches, *, steps: Sequence[int], metric: str, device, dtype) -> dict[str, float]:
    per_step: dict[int, list[torch.Tensor]] = {}
    extra: dict[str, list[torch.Tensor]] = {}
    stepwise = getattr(learner, "step_adaptation", True)
    if not stepwise:
        steps = [0]
    was_training = learner.training
    learner.eval()
    n = 0
    try:
        for batch in batches:
            batch = batch.to(device, dtype)
            preds = learner.adapt_predict(batch, steps)
            for k, pred in preds.items():
                per_step.setdefault(k, []).append(task_metric(pred, batch.query_y, metric).double().cpu())
            extra_fn = getattr(learner, "eval_metrics", None)
            if extra_fn is not None:  # a learner's own per-task scores, e.g. CNP's negative log-likelihood
                with torch.no_grad():
                    for name, vals in extra_fn(batch).items():
                        extra.setdefault(name, []).append(vals.detach().double().reshape(-1).cpu())
            n += batch.num_tasks
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
    for name, parts in extra.items():
        vals = torch.cat(parts)
        out[name] = vals.mean().item()
        out[name + "_ci95"] = 1.96 * vals.std(unbiased=True).item() / math.sqrt(len(vals)) if len(vals) > 1 else float("nan")
    out["eval_tasks"] = n
    return out


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

    def batches():
        done = 0
        while done < num_tasks:
            n = min(chunk, num_tasks - done)
            yield bench.eval_batch(generator, n, split)
            done += n

    return _score(learner, batches(), steps=steps, metric=bench.info.metric, device=device, dtype=dtype)


def evaluate_tasks(learner, batch: TaskBatch, info: TaskInfo, *, steps: Sequence[int], chunk: int = 100,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """The same scores on tasks the caller supplies (``metareg eval --tasks FILE``)."""
    batches = (batch.slice(i, i + chunk) for i in range(0, batch.num_tasks, chunk))
    return _score(learner, batches, steps=steps, metric=info.metric, device=device, dtype=dtype)


TASK_FILE_KEYS = ("support_x", "support_y", "query_x", "query_y")


def load_task_file(path: str | Path, info: TaskInfo) -> TaskBatch:
    """Tasks from a file: ``.pt`` (``torch.save`` of a dict) or ``.npz`` (``numpy.savez``) holding
    ``support_x`` [T, S, *input_shape], ``support_y`` [T, S] class indices (classification) or
    [T, S, output_dim] (regression), ``query_x`` [T, Q, *input_shape] and ``query_y`` likewise.
    Every problem is a :class:`~metareg.errors.DataError` naming the file and the expected shape."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise DataError(f"task file {p} does not exist.")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                raw = {k: torch.from_numpy(np.asarray(z[k])) for k in z.files}
        elif p.suffix in (".pt", ".pth"):
            raw = torch.load(p, map_location="cpu", weights_only=True)
        else:
            raise DataError(f"task file {p}: use a .pt (torch.save of a dict) or .npz file.")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file: name it and why
        raise DataError(f"task file {p} cannot be read: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    if not isinstance(raw, dict) or any(not isinstance(raw.get(k), torch.Tensor) for k in TASK_FILE_KEYS):
        raise DataError(f"task file {p} must hold tensors {', '.join(TASK_FILE_KEYS)}; got "
                        f"{sorted(raw) if isinstance(raw, dict) else type(raw).__name__}.")
    sx, sy, qx, qy = (raw[k] for k in TASK_FILE_KEYS)
    shape = tuple(info.input_shape)
    classification = info.loss == "cross_entropy"
    for name, x, y in (("support", sx, sy), ("query", qx, qy)):
        if x.dim() != len(shape) + 2 or tuple(x.shape[2:]) != shape or not x.is_floating_point():
            raise DataError(f"task file {p}: {name}_x must be float [T, N, {', '.join(map(str, shape))}], "
                            f"got {x.dtype} {list(x.shape)}.")
        if classification:
            ok = y.dim() == 2 and not y.is_floating_point() and y.shape == x.shape[:2]
            ok = ok and (y.numel() == 0 or (int(y.min()) >= 0 and int(y.max()) < info.output_dim))
            want = f"integer class indices [T, N] in [0, {info.output_dim})"
        else:
            ok = y.dim() == 3 and y.shape[:2] == x.shape[:2] and y.shape[2] == info.output_dim and y.is_floating_point()
            want = f"float [T, N, {info.output_dim}]"
        if not ok:
            raise DataError(f"task file {p}: {name}_y must be {want} matching {name}_x; got {y.dtype} {list(y.shape)}.")
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise DataError(f"task file {p}: {name}_x holds NaN or Inf.")
    if sx.shape[0] != qx.shape[0] or sx.shape[0] == 0 or sx.shape[1] == 0 or qx.shape[1] == 0:
        raise DataError(f"task file {p}: support and query must hold the same number T >= 1 of tasks with at least "
                        f"one example each; got {list(sx.shape[:2])} and {list(qx.shape[:2])}.")
    return TaskBatch(sx, sy, qx, qy)


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
