"""Task batches and the task-distribution protocol shared by both paradigms.

One batch format serves meta-learners and multi-task learners alike: ``T`` tasks, each with a
support set (``S`` examples, what a learner adapts on) and a query set (``Q`` examples, what it
is scored on).  Benchmarks with fixed training tasks also fill ``task_ids`` so a multi-task
learner knows which head each task uses.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TaskBatch", "TaskInfo", "TaskDistribution", "task_losses", "task_metric"]


@dataclasses.dataclass
class TaskBatch:
    """``support_x`` [T, S, *in], ``support_y`` [T, S, *out], ``query_x`` [T, Q, *in],
    ``query_y`` [T, Q, *out]; ``task_ids`` [T] (long) for benchmarks with fixed training tasks."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    task_ids: Tensor | None = None

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TaskBatch":
        def mv(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device)

        return TaskBatch(*(mv(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def slice(self, start: int, end: int) -> "TaskBatch":
        return TaskBatch(*(None if (t := getattr(self, f.name)) is None else t[start:end] for f in dataclasses.fields(self)))


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What a learner must know about the tasks to build its network and loss."""

    input_shape: tuple[int, ...]
    output_dim: int
    loss: Literal["mse", "cross_entropy"]
    metric: Literal["mse", "accuracy"]
    num_train_tasks: int | None = None  # fixed training tasks (multi-task); None for episodic only
    default_backbone: str = "mlp"
    backbone_options: tuple[tuple[str, object], ...] = ()


def task_losses(pred: Tensor, y: Tensor, loss: str) -> Tensor:
    """Mean loss of each task: pred [T, N, O], y [T, N, O] (mse) or [T, N] (labels) -> [T]."""
    if loss == "mse":
        d = pred - y
        # d * d: a cheaper backward than pow(2); a mean over dims, not a flatten: fewer graph nodes
        return (d * d).mean(dim=tuple(range(1, d.dim())))
    if loss == "cross_entropy":
        t, n = y.shape[:2]
        return F.cross_entropy(pred.reshape(t * n, -1), y.reshape(t * n), reduction="none").view(t, n).mean(1)
    raise ValueError(f"unknown loss {loss!r}")


def task_metric(pred: Tensor, y: Tensor, metric: str) -> Tensor:
    """Per-task evaluation metric [T] (lower is better for mse, higher for accuracy)."""
    if metric == "mse":
        return (pred - y).pow(2).flatten(1).mean(1)
    if metric == "accuracy":
        return (pred.argmax(-1) == y).float().flatten(1).mean(1)
    raise ValueError(f"unknown metric {metric!r}")


class TaskDistribution:
    """Base class of benchmarks.  Subclasses set ``info`` and implement the two samplers.

    Randomness comes only from the ``generator`` argument (the runner owns the seeds), so the
    same seed yields the same tasks.
    """

    info: TaskInfo

    def __init__(self, config) -> None:
        self.config = config

    def train_batch(self, generator: torch.Generator) -> TaskBatch:
        """One meta-batch (episodic) or one batch of the fixed training tasks."""
        raise NotImplementedError

    def batch_bytes(self) -> int | None:
        """Bytes of the largest batch's inputs (training or one evaluation task), or None when
        unknown: lets the runner refuse sizes that cannot fit before allocating anything."""
        return None

    def eval_batch(self, generator: torch.Generator, num_tasks: int, split: str = "test") -> TaskBatch:
        """``num_tasks`` held-out tasks (never seen in training) with the evaluation query size."""
        raise NotImplementedError
