"""How a multi-task learner turns T task losses into one update of its shared parameters.

Two shapes, one class:

* loss weighting (equal, uncertainty, DWA, ...): :meth:`Combiner.loss` maps the per-task losses
  [T] to the scalar objective that is back-propagated;
* gradient aggregation (PCGrad, MGDA, CAGrad, UPGrad, ...; torchjd's ``Aggregator`` shape): with
  ``needs_jacobian = True`` the learner hands :meth:`Combiner.aggregate` the task Jacobian of the
  shared parameters [T, P] and uses the returned [P] vector as their gradient.

Combiners are registered like algorithms (``@metareg.combiner``) and chosen by name in a learner's
config (``--set combiner=pcgrad``), so "PCGrad on hard sharing" or "PCGrad on per-task
meta-gradients" is a constructor argument, not a new class.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import IncompatibleError, ShapeError
from ..registry import spec_of
from ._qp import gram, nonneg_qp, normalized_gram, project_simplex, projection_orders, solve_spd

__all__ = ["Combiner", "GramCombiner", "SeededGramCombiner", "task_jacobian", "gram", "normalized_gram", "nonneg_qp", "project_simplex",
           "projection_orders", "solve_spd"]


class Combiner(nn.Module):
    """Base class.  A combiner may own parameters (e.g. learned log-variances): it is a submodule
    of its learner, so the runner's optimizer updates them."""

    needs_jacobian: ClassVar[bool] = False
    #: False when the result depends on the order of the tasks beyond relabelling them (PCGrad's
    #: random projection order is drawn per row index); the property tests read it.
    order_invariant: ClassVar[bool] = True

    def __init__(self, config=None, num_tasks: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.num_tasks = num_tasks

    def loss(self, losses: Tensor, task_ids: Tensor | None = None) -> Tensor:
        """Scalar objective from per-task losses [T] (loss-weighting methods)."""
        return losses.mean()

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None, task_ids: Tensor | None = None) -> Tensor:
        """[T, P] task gradients -> [P] update direction (gradient methods).  ``losses`` [T] and
        ``task_ids`` [T] (which of the ``num_tasks`` training tasks each row is) are for combiners
        with per-task state."""
        return jacobian.mean(0)

    def task_index(self, t: int, task_ids: Tensor | None, device: torch.device) -> Tensor:
        """Indices [T] into per-task state (``num_tasks`` entries) for a batch of T tasks."""
        name = getattr(spec_of(type(self)), "name", type(self).__name__)
        if self.num_tasks is None:
            raise IncompatibleError(f"combiner '{name}' keeps per-task state and needs num_tasks; build it "
                                    "with factory(config, num_tasks=M) as the runner does.")
        if task_ids is None:
            if t != self.num_tasks:
                raise IncompatibleError(
                    f"combiner '{name}' keeps state for {self.num_tasks} tasks but got {t} without task_ids; "
                    "pass task_ids (which training task each row is) or train on all tasks in every batch "
                    "(meta_batch = num_tasks).")
            return torch.arange(t, device=device)
        ids = task_ids.to(device=device, dtype=torch.long).reshape(-1)
        if ids.numel() != t or (t and (int(ids.min()) < 0 or int(ids.max()) >= self.num_tasks)):
            raise ShapeError(f"combiner '{name}': task_ids must be {t} indices in [0, {self.num_tasks}), "
                             f"got {task_ids.tolist()}.")
        return ids


class GramCombiner(Combiner):
    """A gradient combiner whose update is ``w @ J`` for task weights w [T] computed from the Gram
    matrix G = J J^T alone (MGDA, UPGrad, CAGrad, Nash-MTL, PCGrad, GradVac, ...).

    Subclasses implement :meth:`weights` on G scaled to a unit largest diagonal (float64, so the
    [T, T] solvers see O(1) numbers whatever the gradients' scale); the cost is then one pass over
    J for G, [T, T] arithmetic, and one pass for ``w @ J``, independent of which method it is.
    """

    needs_jacobian: ClassVar[bool] = True
    #: form G through metareg.ops.pairwise_cosine (conflict detection as a custom op) times the
    #: row norms, rather than a plain product
    cosine_gram: ClassVar[bool] = False

    def weights(self, gram: Tensor, scale: float, task_ids: Tensor | None = None) -> Tensor:
        """w [T] (float64) with update ``w @ J``, from ``gram`` [T, T] where J J^T = scale^2 gram."""
        raise NotImplementedError

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None, task_ids: Tensor | None = None) -> Tensor:
        g, scale = normalized_gram(jacobian, cosine=self.cosine_gram)
        if scale == 0 or math.isnan(scale):
            return jacobian.mean(0)  # all-zero J: zero update; non-finite J: let the NaN show
        w = self.weights(g, scale, task_ids)
        return w.to(device=jacobian.device, dtype=jacobian.dtype) @ jacobian


class SeededGramCombiner(GramCombiner):
    """A Gram combiner that draws random numbers (PCGrad's and GradVac's visiting orders) from its
    own generator, seeded by its config's ``seed``.  The generator's state travels in the learner's
    state_dict (``_extra_state``), so a checkpoint restores the exact sequence, not only weights."""

    def __init__(self, config=None, num_tasks: int | None = None) -> None:
        super().__init__(config, num_tasks)
        self.generator = torch.Generator().manual_seed(int(getattr(config, "seed", 0)))

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state) -> None:
        if state and "generator" in state:
            self.generator.set_state(state["generator"])


def task_jacobian(losses: Tensor, params: Tensor, *, retain_graph: bool = True) -> Tensor:
    """Gradient of each of the T losses w.r.t. ``params`` [P], as a [T, P] matrix.

    One batched backward (``is_grads_batched``: autograd's vmap over the T unit cotangents)
    instead of T separate backward passes; falls back to the loop for graphs vmap cannot batch.
    """
    t = losses.shape[0]
    eye = torch.eye(t, dtype=losses.dtype, device=losses.device)
    try:
        (jac,) = torch.autograd.grad(losses, params, grad_outputs=eye, is_grads_batched=True, retain_graph=retain_graph)
    except RuntimeError:
        rows = [torch.autograd.grad(losses[i], params, retain_graph=True)[0] for i in range(t)]
        jac = torch.stack(rows)
    return jac.reshape(t, -1)
