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

from ..machine import in_order, task_workers
from ..nets import FunctionalNet
from ..tasks.base import TaskBatch, TaskInfo, task_losses

__all__ = ["Learner", "LearnerContext", "TASK_PARALLEL_HELP", "task_parallel_on", "task_parallel_workers",
           "backbone_chunk", "accumulate_grad", "accumulate_chunks"]

#: the ``task_parallel`` option of meta-learners whose meta-batch runs in chunks of tasks
TASK_PARALLEL_HELP = ("on CPU, where the backbone splits the meta-batch into chunks of tasks anyway (conv4/resnet12), "
                      "run the step chunk by chunk, each chunk's ops on one thread, on two workers per thread of the "
                      "run (the same gradient, with the same bits for every thread count; faster, and it "
                      "holds up on a busy machine, where an op split across threads waits for a descheduled one); "
                      "false: the whole meta-batch at once, each op split across the threads")


def task_parallel_on(config: Any, batch: TaskBatch) -> bool:
    """Whether a step runs its chunks of tasks on single-threaded workers: ``config.task_parallel``
    and a CPU batch."""
    return bool(getattr(config, "task_parallel", False)) and batch.query_x.device.type == "cpu"


def task_parallel_workers(config: Any, batch: TaskBatch) -> int:
    """Workers for a step's chunks of tasks: with :func:`task_parallel_on`, two per intra-op
    thread of the run (:func:`metareg.machine.task_workers`), else 1 (the caller's thread, one
    chunk at a time)."""
    return task_workers(torch.get_num_threads()) if task_parallel_on(config, batch) else 1


def backbone_chunk(net: Any, x: Tensor) -> int:
    """Tasks of ``x`` [T, N, *in] per chunk where ``net`` splits a meta-batch into chunks anyway
    (Conv4 and ResNet-12 on CPU, ``ConvNet.tasks_per_chunk``), so chunks of that size cost no
    batching; 0 where it takes all T at once."""
    per_chunk = getattr(net, "tasks_per_chunk", None)
    chunk = per_chunk(x) if per_chunk is not None else 0
    return chunk if chunk < x.shape[0] else 0


def accumulate_grad(param: Tensor, grad: Tensor) -> None:
    """``param.grad += grad`` (``grad`` itself, in the param's dtype, when there is none yet)."""
    if param.grad is None:
        param.grad = grad.to(param.dtype)
    else:
        param.grad.add_(grad)


def accumulate_chunks(params: Sequence[Tensor], chunk: Callable[[int], tuple], starts: Sequence[int],
                      workers: int) -> list[tuple]:
    """Run ``chunk(start)`` -> (gradients aligned with ``params``, *extra) for every start on
    ``workers`` threads (:func:`metareg.machine.in_order`) and add the gradients to the params'
    ``.grad`` in the starts' order, whatever order the chunks ran in (a gradient of None: no
    contribution).  Returns each chunk's extras."""
    extras = []
    for grads, *extra in in_order(chunk, starts, workers):
        for p, g in zip(params, grads):
            if g is not None:
                accumulate_grad(p, g)
        extras.append(tuple(extra))
    return extras

@dataclasses.dataclass
class LearnerContext:
    """What the runner tells a learner about the problem it will train on."""

    task: TaskInfo
    make_backbone: Callable[..., FunctionalNet]
    generator: torch.Generator
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    make_combiner: Callable[[str, dict[str, Any]], Any] | None = None
    #: the process group of a multi-process run (:class:`metareg.distributed.Distributed`), else None;
    #: learners whose objective couples the tasks (multi-task combiners) use it, the others need not
    distributed: Any = None


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

    def eval_metrics(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Optional per-task scores [T] of the learner's own beside the benchmark's metric (e.g. a
        negative log-likelihood); the evaluation reports each as ``name`` and ``name_ci95``."""
        return {}

    #: adaptation steps :meth:`adapt` takes when none are asked for (``metareg.load`` sets it to
    #: the most steps the run was evaluated with); None: the config's ``inner_steps``, else 1
    adapt_steps: int | None = None

    def adapt(self, support_x: Tensor, support_y: Tensor, *, steps: int | None = None) -> Callable[[Tensor], Tensor]:
        """Adapt to a new task from its support set; returns ``predict(query_x) -> predictions``.

        Shapes: one task ``support_x`` [S, *input_shape], ``support_y`` [S] (class indices) or
        [S, output_dim]; or T tasks at once with a leading [T, ...] dimension.  ``predict`` takes
        [Q, *input_shape] (or [T, Q, ...]) and returns [Q, output_dim] (or [T, Q, output_dim]):
        class scores for classification, values for regression.  ``steps`` is the number of
        adaptation steps (ignored by learners that adapt without steps, e.g. metric-based ones).
        The learner's own parameters are never changed; each ``predict`` call adapts afresh from
        the support set (learners adapt and predict in one pass), so pass every query at once.
        """
        from ..errors import ShapeError

        info = self.task
        single = support_x.dim() == len(info.input_shape) + 1
        sx, sy = (support_x.unsqueeze(0), support_y.unsqueeze(0)) if single else (support_x, support_y)
        if sx.dim() != len(info.input_shape) + 2 or tuple(sx.shape[2:]) != tuple(info.input_shape):
            raise ShapeError(f"support_x must be [S, {', '.join(map(str, info.input_shape))}] (one task) or "
                             f"[T, S, ...] (several); got {list(support_x.shape)}.")
        classification = info.loss == "cross_entropy"
        want = 2 if classification else 3
        if sy.dim() != want or sy.shape[:2] != sx.shape[:2]:
            raise ShapeError(f"support_y must be {'class indices [S]' if classification else f'[S, {info.output_dim}]'} "
                             f"matching support_x's {list(support_x.shape[: 1 if single else 2])}; got {list(support_y.shape)}.")
        param = next(iter(self.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        sx = sx.detach().to(device, dtype)
        sy = sy.detach().to(device, torch.long if classification else dtype)
        k = steps if steps is not None else (self.adapt_steps if self.adapt_steps is not None
                                             else getattr(self.config, "inner_steps", 1))
        k = k if self.step_adaptation else 0

        def predict(query_x: Tensor) -> Tensor:
            qx = query_x.unsqueeze(0) if single else query_x
            if qx.dim() != sx.dim() or qx.shape[0] != sx.shape[0] or tuple(qx.shape[2:]) != tuple(info.input_shape):
                raise ShapeError(f"query_x must be [{'Q' if single else f'{sx.shape[0]}, Q'}, "
                                 f"{', '.join(map(str, info.input_shape))}]; got {list(query_x.shape)}.")
            qx = qx.detach().to(device, dtype)
            qy = (torch.zeros(qx.shape[:2], dtype=torch.long, device=device) if classification
                  else torch.zeros(*qx.shape[:2], info.output_dim, dtype=dtype, device=device))
            was_training = self.training
            self.eval()
            try:
                out = self.adapt_predict(TaskBatch(sx, sy, qx, qy), [k])[k].detach()
            finally:
                self.train(was_training)
            return out[0] if single else out

        return predict

