"""Multi-task learners with a shared encoder and one head per training task.

The encoder's parameters are one flat vector ``shared`` [P_s] and the heads one matrix ``heads``
[M, P_h] (row m is task m's head), so per-task forwards are batched over tasks exactly as in the
meta-learners, and gradient combiners receive the task Jacobian of ``shared`` as one [T, P_s]
matrix.  For evaluation on a task never trained on, a learner fits a fresh head on the frozen
encoder from the task's K support examples (:meth:`SharedEncoderLearner.adapt_predict`), so it is
scored by the same protocol as the meta-learners.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import IncompatibleError
from ..tasks.base import TaskBatch
from .base import Learner, LearnerContext
from .combiners import task_jacobian

__all__ = ["SharedEncoderLearner"]


class SharedEncoderLearner(Learner):
    """Shared encoder (all backbone layers before its head) + M task heads."""

    kind = "multitask"
    capabilities = frozenset({"task_heads", "combiner"})

    def __init__(self, config, context: LearnerContext) -> None:
        super().__init__(config, context)
        m = context.task.num_train_tasks
        if not m:
            raise IncompatibleError("this multi-task learner needs a benchmark with fixed training tasks (e.g. sinusoid_mtl).")
        self.net = context.make_backbone(config.backbone or None)
        self.split = self.net.head_offset
        g = context.generator
        init = self.net.init_flat(g, dtype=context.dtype)
        self.shared = nn.Parameter(init[: self.split].clone().to(context.device))
        heads = torch.stack([self.net.init_flat(g, dtype=context.dtype)[self.split:] for _ in range(m)])
        self.heads = nn.Parameter(heads.to(context.device))
        self.combiner = context.make_combiner(config.combiner, {"num_tasks": m})

    def encode(self, shared: Tensor, x: Tensor) -> Tensor:
        return self.net.forward(shared, x, 0, self.net.head_from)

    def head(self, head_params: Tensor, feats: Tensor) -> Tensor:
        return self.net.forward(head_params, feats, self.net.head_from)

    def task_losses(self, batch: TaskBatch) -> Tensor:
        # every example of a training task is training data: support and query together
        x = torch.cat([batch.support_x, batch.query_x], 1)
        y = torch.cat([batch.support_y, batch.query_y], 1)
        if batch.task_ids is None:
            raise IncompatibleError("the batch has no task ids: multi-task learners need a benchmark with fixed tasks.")
        return self.losses(self.head(self.heads[batch.task_ids], self.encode(self.shared, x)), y)

    def step(self, batch: TaskBatch) -> dict[str, float]:
        losses = self.task_losses(batch)
        c = self.combiner
        if c.needs_jacobian:
            jac = task_jacobian(losses, self.shared)
            self.shared.grad = c.aggregate(jac, losses.detach(), batch.task_ids)
            # heads are task-specific: each gets only its own task's gradient
            losses.sum().backward(inputs=[self.heads, *c.parameters()])
        else:
            c.loss(losses, batch.task_ids).backward()
        return {"loss": losses.mean().item()}

    # -- evaluation on new tasks: a fresh head on the frozen encoder ----------------------------
    @torch.no_grad()
    def adapt_predict(self, batch: TaskBatch, steps: Sequence[int]) -> dict[int, Tensor]:
        feats_s = self.encode(self.shared, batch.support_x)
        feats_q = self.encode(self.shared, batch.query_x)
        t = feats_s.shape[0]
        mean_head = self.heads.mean(0)
        out: dict[int, Tensor] = {}
        wanted = sorted(set(steps))
        if self.config.head_fit == "ridge":
            fitted = self._ridge(feats_s, batch.support_y, mean_head)
            for k in wanted:
                out[k] = self.head(mean_head if k == 0 else fitted, feats_q)
            return out
        head = mean_head.expand(t, -1).clone()
        with torch.enable_grad():
            for k in range(0, max(wanted) + 1):
                if k in wanted:
                    out[k] = self.head(head, feats_q).detach()
                if k == max(wanted):
                    break
                h = head.requires_grad_()
                loss = self.losses(self.head(h, feats_s), batch.support_y).sum()
                (g,) = torch.autograd.grad(loss, h)
                head = (h - self.config.adapt_lr * g).detach()
        return out

    def _ridge(self, feats: Tensor, y: Tensor, prior: Tensor) -> Tensor:
        """Closed-form ridge fit of a linear head, shrunk towards ``prior`` (the mean trained head):
        argmin_w |[F 1] w - y|^2 + lambda |w - prior|^2, per task, batched."""
        if self.task.loss != "mse" or len(self.net.layers) - self.net.head_from != 1:
            raise IncompatibleError("head_fit='ridge' needs a regression benchmark and a linear head; use head_fit='sgd'.")
        t, k, f = feats.shape
        o = self.net.out_dim
        phi = torch.cat([feats, feats.new_ones(t, k, 1)], -1)  # [T, K, F+1]
        w0 = self.net.views(prior, self.net.head_from)[0]
        prior_mat = torch.cat([w0["weight"].T, w0["bias"].unsqueeze(0)], 0)  # [F+1, O]
        resid = y.reshape(t, k, o) - phi @ prior_mat
        lam = self.config.ridge
        a = phi.transpose(1, 2) @ phi + lam * torch.eye(f + 1, dtype=phi.dtype, device=phi.device)
        delta = torch.linalg.solve(a, phi.transpose(1, 2) @ resid)  # [T, F+1, O]
        w = prior_mat + delta
        weight = w[:, :f, :].transpose(1, 2).reshape(t, -1)  # [T, O*F] row-major like nn.Linear
        bias = w[:, f, :]
        return torch.cat([weight, bias], 1)
