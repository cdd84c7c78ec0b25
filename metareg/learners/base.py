"""The one protocol every learner presents to the runner and the comparison.

A learner is an ``nn.Module`` built from its frozen config and a :class:`LearnerContext`.
``step(batch)`` computes the training objective on a :class:`~metareg.tasks.TaskBatch` and fills
``.grad`` of its parameters (the runner owns the optimizer, so schedules, clipping and
checkpoints live in one place).  ``adapt_predict(batch, steps)`` is the evaluation entry both
paradigms answer: adapt to each task of the batch from its support set and predict its query set,
after each requested number of adaptation steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..nets import FunctionalNet
from ..tasks.base import TaskBatch, TaskInfo, task_losses

__all__ = ["Learner", "LearnerContext"]


@dataclasses.dataclass
class LearnerContext:
    """What the runner tells a learner about the problem it will train on."""

    task: TaskInfo
    make_backbone: Callable[..., FunctionalNet]
    generator: torch.Generator
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    make_combiner: Callable[[str, dict[str, Any]], Any] | None = None


class Learner(nn.Module):
    """Base class; subclasses set ``kind`` and implement :meth:`step` and :meth:`adapt_predict`."""

    kind: ClassVar[str] = ""
    #: capabilities as data, e.g. {"second_order", "first_order", "learned_inner_lr"}
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: False for learners that adapt without steps (metric-based: comparing with the support set
    #: is the adaptation); evaluation then reports one plain metric such as ``accuracy``
    step_adaptation: ClassVar[bool] = True

    def __init__(self, config: Any, context: LearnerContext) -> None:
        super().__init__()
        self.config = config
        self.context = context
        self.task = context.task

    def losses(self, pred: Tensor, y: Tensor) -> Tensor:
        """Per-task mean loss [T] under the benchmark's loss."""
        return task_losses(pred, y, self.task.loss)

    def step(self, batch: TaskBatch) -> dict[str, float]:
        """Compute the training objective on ``batch`` and fill ``.grad``; return scalar metrics
        (at least ``loss``).  Must not call ``optimizer.step()``."""
        raise NotImplementedError

    def adapt_predict(self, batch: TaskBatch, steps: Sequence[int]) -> dict[int, Tensor]:
        """For each ``k`` in ``steps``: predictions [T, Q, O] on ``batch.query_x`` after ``k``
        adaptation steps on ``batch.support_*`` (``k = 0``: before adaptation).  Must leave the
        learner's own parameters unchanged."""
        raise NotImplementedError
