"""Multi-task methods inside meta-learning: the T tasks of a meta-batch as a multi-task problem.

A meta-batch is a multi-task problem whose tasks can conflict.  :class:`MetaBatchObjective` is the
part of a meta-learner (:class:`~metareg.learners.meta.GradientMetaLearner`,
:class:`~metareg.learners.metric.EmbeddingLearner`) that decides what is done with the per-task
losses [T] beyond taking their mean.  Two options, both in the learner's config:

* ``combiner``: a multi-task combiner (``metareg list --kind multitask``).  ``equal`` (the default)
  is the plain mean: the learner keeps its usual single backward and never forms a Jacobian.  A
  loss-weighting combiner (uncertainty, DWA) weights the per-task losses.  A gradient combiner
  (PCGrad, GradVac, CAGrad, MGDA, Nash-MTL, UPGrad, GradNorm) gets the per-task meta-gradients
  of the meta-parameters ``theta`` as one [T, P] Jacobian and returns the update.

  The Jacobian comes from the batched path itself, not a loop over tasks: the learner runs the
  whole meta-batch from ``rows`` = T detached copies of theta ([T, P], :meth:`task_rows`) instead
  of theta, so task t's loss depends on row t only, and ONE backward of ``sum_t L_t`` gives
  ``d L_t / d theta`` in row t.  This holds through the inner loop of second-order MAML (every
  inner step of task t reads only row t) and through a metric learner's embedding (the forward is
  batched over tasks with per-task weights).  Other meta-parameters (Meta-SGD's learned rates,
  ProtoNet's cosine scale, a relation module) get the gradient of the mean loss, as the
  task-specific parameters of a multi-task learner do.

* ``adversarial`` (> 0): task-adversarial training of the meta-learner's encoder (the layers before
  its head), as ``adversarial_sharing`` does for multi-task learners (Liu, Qiu, Huang, ACL 2017,
  eqs. 11-13; Ganin & Lempitsky, ICML 2015): a linear task discriminator on the encoder's
  features of every support and query example is trained to tell which training task the
  example's episode came from, and the encoder, through a gradient-reversal layer, to fool it.
  The loss ``adversarial * CE`` is a regulariser: its gradient is added outside the combiner.
  It needs task identities (``task_ids`` in the training batches: benchmarks with fixed training
  tasks or task clusters; ``num_train_tasks`` of them).

Combiners with per-task state (GradVac's per-pair goals, GradNorm's weights, uncertainty, DWA) need
the same task identities; on a benchmark whose episodes have none (glyphs) they are refused at
build time with the reason.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, IncompatibleError
from ..nets import FunctionalNet, Linear
from .base import LearnerContext
from .combiners import Combiner

__all__ = ["MetaBatchObjective", "reverse_gradient"]

#: log the mean pairwise cosine of the per-task meta-gradients every N Jacobian steps (the
#: runner's default log_every, so every written metrics line has it)
CONFLICT_EVERY = 10


class _GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -1 (Ganin & Lempitsky 2015, eq. 13)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


def reverse_gradient(x: Tensor) -> Tensor:
    return _GradientReversal.apply(x)


def _add_grad(p: Tensor, g: Tensor | None) -> None:
    if g is None:
        return
    p.grad = g if p.grad is None else p.grad + g


class MetaBatchObjective(nn.Module):
    """The combiner and the task discriminator of one meta-learner (a submodule of it, so their
    parameters and state are trained and checkpointed with it).

    ``feature_dim``: width of the encoder features the discriminator reads (only used when
    ``adversarial`` > 0).
    """

    def __init__(self, config, context: LearnerContext, feature_dim: int | None = None) -> None:
        super().__init__()
        name = getattr(config, "combiner", "equal")
        self.weight = float(getattr(config, "adversarial", 0.0))
        m = context.task.num_train_tasks
        self.num_tasks = m
        self.combiner: Combiner | None = None
        if context.make_combiner is not None:
            try:
                self.combiner = context.make_combiner(name, {"num_tasks": m})
            except ConfigError as e:
                if m is not None:
                    raise
                raise IncompatibleError(
                    f"combiner '{name}' keeps per-task state ({e}), but the episodes of this benchmark have no task "
                    "identity (no fixed training tasks): use it on a benchmark with task ids (relatedness, "
                    "digits_mtl, glyphs_mtl, sinusoid_mtl, gradnorm_toy), or a stateless gradient combiner here "
                    "(pcgrad, cagrad, mgda, nash_mtl, upgrad).") from None
        elif name != "equal":
            raise IncompatibleError(f"combiner '{name}' asked for, but this learner was built without "
                                    "context.make_combiner (build it through metareg.runner.Run).")
        self.name = name
        c = self.combiner
        #: a gradient combiner: the per-task meta-gradients [T, P] are formed
        self.needs_jacobian = bool(c is not None and c.needs_jacobian)
        #: the plain mean of the task losses (equal, or no combiner): the learner's usual step
        self.plain = c is None or (not c.needs_jacobian and type(c).loss is Combiner.loss)
        self._steps = 0
        if (self.needs_jacobian or not self.plain) and getattr(context, "distributed", None) is not None:
            # each process holds other tasks of the meta-batch: the combiner would need every row
            raise IncompatibleError(f"combiner '{name}' on a meta-learner runs in one process; drop it or the "
                                    "multi-process launch.")
        if self.weight > 0:
            if m is None:
                raise IncompatibleError(
                    "adversarial > 0 trains a discriminator to tell the training tasks apart; this benchmark's "
                    "episodes have no task identity. Use a benchmark with task ids (relatedness, digits_mtl, "
                    "glyphs_mtl, sinusoid_mtl, gradnorm_toy).")
            if feature_dim is None:
                raise IncompatibleError(f"{type(self).__name__}: adversarial needs the encoder's feature width.")
            # its own generator: switching the option on leaves every other initialisation as it was
            g = torch.Generator().manual_seed(context.generator.initial_seed() + 0x5EED)
            self.disc_net = FunctionalNet([Linear(feature_dim, m)], out_dim=m)
            self.disc = nn.Parameter(self.disc_net.init_flat(g, dtype=context.dtype).to(context.device))

    def require_rows(self, learner: str, rows: str) -> None:
        """For learners without one loss to weight (they form per-task update rows themselves):
        refuse a loss-weighting combiner, naming what a gradient combiner would aggregate."""
        if not (self.plain or self.needs_jacobian):
            raise IncompatibleError(
                f"{learner} has no task losses to weight: combiner '{self.name}' weights task losses; use a gradient "
                f"combiner (pcgrad, mgda, ...), which aggregates the per-task {rows}.")

    @property
    def adversarial(self) -> bool:
        return self.weight > 0

    # -- pieces the learners call ------------------------------------------------------------
    def loss(self, losses: Tensor, task_ids: Tensor | None) -> Tensor:
        """Scalar objective from the per-task losses [T] (no Jacobian): their mean, or a
        loss-weighting combiner's objective."""
        if self.combiner is None:
            return losses.mean()
        return self.combiner.loss(losses, self._ids(losses.shape[0], task_ids))

    @staticmethod
    def task_rows(theta: Tensor, t: int) -> Tensor:
        """T detached copies [T, P] of theta [P]: the leaf whose gradient rows are the per-task
        meta-gradients."""
        return theta.detach().unsqueeze(0).expand(t, -1).clone().requires_grad_()

    def adversarial_loss(self, feats: Tensor, task_ids: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        """``adversarial`` x the discriminator's cross-entropy on encoder features [T, N, F] (or
        [T, N, ...], flattened) of examples of training tasks ``task_ids`` [T], through gradient
        reversal: its gradient trains the discriminator and pushes the encoder the other way."""
        if task_ids is None:
            raise IncompatibleError("adversarial > 0 needs task ids in the training batches; this benchmark gives none.")
        t, n = feats.shape[:2]
        logits = self.disc_net.forward(self.disc, reverse_gradient(feats.reshape(t, n, -1)))
        target = task_ids.to(logits.device).view(t, 1).expand(t, n).reshape(-1)
        ce = F.cross_entropy(logits.reshape(t * n, -1), target)
        acc = (logits.detach().argmax(-1).reshape(-1) == target).double().mean().item()
        return self.weight * ce, {"adversarial_loss": ce.item(), "discriminator_acc": acc}

    def backward(self, theta: nn.Parameter, rows: Tensor, losses: Tensor, params, extra: Tensor | None = None,
                 task_ids: Tensor | None = None) -> dict[str, float]:
        """Fill ``.grad``: theta's from the combiner on the per-task meta-gradients (the gradient
        of ``sum_t losses[t]`` w.r.t. ``rows`` [T, P], one backward), every other parameter in
        ``params`` from the mean loss, plus the gradient of the regulariser ``extra``."""
        t = losses.shape[0]
        rest = [p for p in params if p.requires_grad and p is not theta]
        grads = torch.autograd.grad(losses.sum(), [rows, *rest], retain_graph=extra is not None, allow_unused=True)
        jac = grads[0]
        update = self.combiner.aggregate(jac, losses.detach(), self._ids(t, task_ids))
        _add_grad(theta, update.to(theta.dtype))
        for p, g in zip(rest, grads[1:]):
            _add_grad(p, None if g is None else g / t)
        if extra is not None:
            g_extra = torch.autograd.grad(extra, [rows, theta, *rest], allow_unused=True)
            _add_grad(theta, None if g_extra[0] is None else g_extra[0].sum(0))
            _add_grad(theta, g_extra[1])
            for p, g in zip(rest, g_extra[2:]):
                _add_grad(p, g)
        return self.conflicts(jac)

    def aggregate(self, jac: Tensor, losses: Tensor, task_ids: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """The combiner's update [P] from per-task meta-gradients ``jac`` [T, P] a learner formed
        itself (Reptile's displacements), with the conflict log."""
        update = self.combiner.aggregate(jac, losses.detach(), self._ids(jac.shape[0], task_ids))
        return update, self.conflicts(jac)

    def conflicts(self, jac: Tensor) -> dict[str, float]:
        """Every CONFLICT_EVERY-th call: the mean pairwise cosine of the rows of ``jac`` [T, P] and
        the fraction of task pairs in conflict (cosine < 0)."""
        self._steps += 1
        if self._steps % CONFLICT_EVERY or jac.shape[0] < 2:
            return {}
        from .. import ops

        cos = ops.pairwise_cosine(jac.detach()).double()
        off = cos[~torch.eye(cos.shape[0], dtype=torch.bool, device=cos.device)]
        return {"grad_cosine_mean": off.mean().item(), "grad_conflict_frac": (off < 0).double().mean().item()}

    def _ids(self, t: int, task_ids: Tensor | None) -> Tensor | None:
        # episodes without identity: combiners that get here are stateless and ignore the ids
        return task_ids if self.num_tasks is not None else None
