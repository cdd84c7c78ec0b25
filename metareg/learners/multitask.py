"""Multi-task learners: architectures that share something between M fixed training tasks.

Every architecture keeps the parameters that more than one task's loss depends on in one flat
vector ``shared`` [P_s] (what gradient combiners see: the task Jacobian of ``shared`` is one
[T, P_s] matrix), its task-specific parameters (private networks, gates, coefficients) in other
parameters, and one output head per task in ``heads`` [M, P_h] (row m is task m's head), so
per-task forwards are batched over tasks exactly as in the meta-learners.

:class:`MultiTaskLearner` owns everything the architectures have in common:

* :meth:`~MultiTaskLearner.step`: per-task losses through the combiner (weighting methods
  backpropagate ``combiner.loss``; gradient methods get the task Jacobian of ``shared`` and the
  gradient of every other parameter is its tasks' summed loss), plus an architecture's own
  regulariser (L2 tie, adversarial and orthogonality losses), whose gradient is added outside the
  combiner because it is no task's loss;
* the negative-transfer log: the pairwise cosine of the task gradients of ``shared`` (a [T, T]
  matrix from :func:`metareg.ops.pairwise_cosine`), returned in the step metrics every
  ``conflict_every`` steps (the runner writes them to metrics.jsonl; the ``gradient_conflict``
  observer plots them);
* evaluation on a task never trained on (:meth:`~MultiTaskLearner.adapt_predict`): a fresh head on
  the encoder the architecture defines for a new task (:meth:`~MultiTaskLearner.new_task_encoder`),
  fitted from the task's K support examples, optionally fine-tuning that encoder too, so
  multi-task learners are scored by the same protocol as the meta-learners.

:class:`SharedEncoderLearner` is hard parameter sharing: ``shared`` is the whole encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from .. import ops
from ..config import config, param
from ..errors import ConfigError, IncompatibleError
from ..nets import FunctionalNet, Linear
from ..tasks.base import TaskBatch
from .base import Learner, LearnerContext
from .combiners import task_jacobian

__all__ = ["MultiTaskConfig", "MultiTaskLearner", "SharedEncoderLearner", "TaskNetworksLearner", "conflict_metrics",
           "feature_dim", "run_columns", "pick_columns"]

#: The log costs: on sinusoid_mtl (hard sharing, 20 tasks, 1 thread) the task Jacobian and its
#: cosine cost about 5.5x a plain summed-loss step (loss-weighting combiners do not need the
#: Jacobian otherwise); where a gradient combiner has the Jacobian anyway, the cosine of the short,
#: wide [3, 82k] Jacobian of the hard-sharing model of shared/BENCHMARKS.md costs ~60 us through
#: metareg.ops.pairwise_cosine's wide CPU path (~0.75 ms before it), ~2% of that PCGrad step.  The
#: runner writes metrics.jsonl only every
#: ``log_every`` (default 10) steps, so the log is computed every 10 steps by default: every written
#: line has it; ``conflict_every=1`` (with ``log_every=1``) records every step.
DEFAULT_CONFLICT_EVERY = 10


@config
class MultiTaskConfig:
    combiner: str = param("equal", "how task losses/gradients are combined (see `metareg list --kind multitask`)")
    backbone: str = param("", "backbone name; empty: the benchmark's default")
    head_fit: Literal["auto", "ridge", "sgd"] = param(
        "auto", "new-task head: 'ridge' (closed form towards the mean head; regression with a linear head), 'sgd' "
        "(steps from the mean head, or from the prototype head for classification), 'auto' (ridge where it applies)")
    ridge: float = param(0.1, "ridge strength lambda of head_fit='ridge'", gt=0)
    adapt_lr: float = param(0.01, "learning rate of head_fit='sgd' and of adapt_encoder", gt=0)
    adapt_encoder: bool = param(
        False, "new tasks: fine-tune the new-task encoder together with the head by SGD (else the encoder is frozen)")
    conflict_every: int = param(
        DEFAULT_CONFLICT_EVERY, "log the [T,T] cosine of task gradients every N steps (0: never; match the run's "
        "log_every, whose lines are the ones written)", ge=0)

    def __post_init__(self) -> None:
        if self.adapt_encoder and self.head_fit == "ridge":
            raise ConfigError("adapt_encoder=true fine-tunes encoder and head by SGD steps; set head_fit='sgd' "
                              "(ridge fits the head in closed form on a frozen encoder).")


def feature_dim(net: FunctionalNet) -> int:
    """Width of the features the backbone's head reads (its head must start with a Linear)."""
    first = net.layers[net.head_from]
    if not isinstance(first, Linear):
        raise IncompatibleError(f"this architecture needs a backbone whose head starts with a linear layer; "
                                f"got {type(first).__name__}.")
    return first.in_features


def conflict_metrics(jac: Tensor, task_ids: Tensor | None) -> dict[str, object]:
    """Negative-transfer log of one step from the task Jacobian [T, P]: the pairwise cosine [T, T]
    of the task gradients (``grad_cosine``, nested lists; rows in batch order, ``grad_cosine_tasks``
    says which training task each row is), the mean off-diagonal cosine and the fraction of task
    pairs in conflict (cosine < 0)."""
    t = jac.shape[0]
    cos = ops.pairwise_cosine(jac.detach()).double()
    out: dict[str, object] = {"grad_cosine": cos.tolist(),
                              "grad_cosine_tasks": (task_ids.tolist() if task_ids is not None else list(range(t)))}
    if t > 1:
        off = cos[~torch.eye(t, dtype=torch.bool, device=cos.device)]
        out["grad_cosine_mean"] = off.mean().item()
        out["grad_conflict_frac"] = (off < 0).double().mean().item()
    return out


class MultiTaskLearner(Learner):
    """Base of the multi-task architectures.

    A subclass builds ``shared`` (an ``nn.Parameter`` [P_s]), its task-specific parameters and
    ``heads`` [M, P_h], and implements :meth:`features`, :meth:`new_task_encoder` and
    :meth:`encode_new`; :meth:`penalty` and :meth:`objective` add regularisers.
    """

    kind = "multitask"
    capabilities = frozenset({"task_heads", "combiner"})

    shared: nn.Parameter
    heads: nn.Parameter

    def __init__(self, config, context: LearnerContext) -> None:
        super().__init__(config, context)
        m = context.task.num_train_tasks
        if not m:
            raise IncompatibleError("this multi-task learner needs a benchmark with fixed training tasks (e.g. sinusoid_mtl).")
        self.num_train_tasks = m
        self.net = context.make_backbone(config.backbone or None)
        # the task head: by default the backbone's own head layers, applied to encoder features
        self.head_net, self.head_start = self.net, self.net.head_from
        self.combiner = context.make_combiner(config.combiner, {"num_tasks": m})
        self._steps = 0

    def _init_heads(self, generator: torch.Generator) -> nn.Parameter:
        """M heads of ``head_net``, each initialised like the backbone's head."""
        start = self.head_net.offset(self.head_start)
        heads = torch.stack([self.head_net.init_flat(generator, dtype=self.context.dtype)[start:]
                             for _ in range(self.num_train_tasks)])
        return nn.Parameter(heads.to(self.context.device))

    # -- what an architecture defines -------------------------------------------------------------
    def features(self, x: Tensor, task_ids: Tensor) -> Tensor:
        """Features [T, N, F] of the examples x [T, N, ...] of training tasks ``task_ids`` [T]."""
        raise NotImplementedError

    def penalty(self) -> Tensor | None:
        """A regulariser of the parameters alone (added to the objective, outside the combiner)."""
        return None

    def new_task_encoder(self) -> Tensor:
        """The encoder of a task never trained on, as a flat vector [P_e] (detached) that
        :meth:`encode_new` reads; fine-tuned per task when ``adapt_encoder`` is set."""
        raise NotImplementedError

    def encode_new(self, enc: Tensor, x: Tensor) -> Tensor:
        """Features [T, N, F] of x [T, N, ...] under per-task new-task encoders ``enc`` [T, P_e]."""
        raise NotImplementedError

    # -- training ---------------------------------------------------------------------------------
    def head(self, head_params: Tensor, feats: Tensor) -> Tensor:
        return self.head_net.forward(head_params, feats, self.head_start)

    def objective(self, batch: TaskBatch) -> tuple[Tensor, Tensor | None, dict[str, float]]:
        """(per-task losses [T], regulariser or None, extra metrics) on a training batch."""
        if batch.task_ids is None:
            raise IncompatibleError("the batch has no task ids: multi-task learners need a benchmark with fixed tasks.")
        # every example of a training task is training data: support and query together
        x = torch.cat([batch.support_x, batch.query_x], 1)
        y = torch.cat([batch.support_y, batch.query_y], 1)
        ids = batch.task_ids
        losses = self.losses(self.head(self.heads[ids], self.features(x, ids)), y)
        return losses, self.penalty(), {}

    def task_losses(self, batch: TaskBatch) -> Tensor:
        return self.objective(batch)[0]

    def step(self, batch: TaskBatch) -> dict[str, object]:
        self._steps += 1
        losses, extra, metrics = self.objective(batch)
        dist = self.context.distributed
        if dist is not None:
            # each rank holds part of every task's examples: the combiner sees the global losses
            # (their value), while the gradient stays this rank's (the runner averages it)
            losses = dist.global_value(losses)
        c = self.combiner
        every = self.config.conflict_every
        log_conflicts = every > 0 and self._steps % every == 0
        jac = task_jacobian(losses, self.shared) if (c.needs_jacobian or log_conflicts) else None
        if jac is not None and self.context.distributed is not None:
            self.context.distributed.mean_(jac)  # the global batch's Jacobian: every rank combines the same
        if c.needs_jacobian:
            update = c.aggregate(jac, losses.detach(), batch.task_ids)
            rest = [p for p in self.parameters() if p.requires_grad and p is not self.shared]
            if extra is not None:
                (g_extra,) = torch.autograd.grad(extra, self.shared, retain_graph=True, allow_unused=True)
                if g_extra is not None:
                    update = update + g_extra
            self.shared.grad = update
            # task-specific parameters get only their own tasks' gradients, unweighted
            objective = losses.sum() if extra is None else losses.sum() + extra
            if rest:
                objective.backward(inputs=rest)
        else:
            objective = c.loss(losses, batch.task_ids)
            (objective if extra is None else objective + extra).backward()
        out: dict[str, object] = {"loss": losses.mean().item(), **metrics}
        if extra is not None:
            out["regularizer"] = extra.item()
        if log_conflicts:
            out.update(conflict_metrics(jac, batch.task_ids))
        out.update(self._combiner_state())
        return out

    def _combiner_state(self) -> dict[str, list[float]]:
        """Per-task state of the combiner (GradNorm/DWA weights, uncertainty log-variances), so
        their trajectories are in metrics.jsonl."""
        out = {}
        m = self.num_train_tasks
        for name, t in [*self.combiner.named_buffers(), *self.combiner.named_parameters()]:
            if not name.startswith("_") and "." not in name and t.dim() == 1 and t.shape[0] == m:
                out[f"combiner.{name}"] = t.detach().double().cpu().tolist()
        return out

    # -- evaluation on the M training tasks ---------------------------------------------------------
    @torch.no_grad()
    def predict_tasks(self, x: Tensor, task_ids: Tensor) -> Tensor:
        """Predictions [T, N, O] of the trained heads for examples x [T, N, ...] of training tasks
        ``task_ids`` [T] (in-distribution error on the tasks trained on)."""
        return self.head(self.heads[task_ids], self.features(x, task_ids))

    # -- evaluation on new tasks: a fresh head on the new-task encoder -----------------------------
    @torch.no_grad()
    def adapt_predict(self, batch: TaskBatch, steps: Sequence[int]) -> dict[int, Tensor]:
        t = batch.num_tasks
        enc = self.new_task_encoder().detach()
        enc_t = enc.expand(t, -1)
        mean_head = self.heads.mean(0).detach()
        wanted = sorted(set(steps))
        out: dict[int, Tensor] = {}
        if self.config.adapt_encoder:
            return self._finetune(batch, enc_t, mean_head, wanted)
        feats_s = self.encode_new(enc_t, batch.support_x)
        feats_q = self.encode_new(enc_t, batch.query_x)
        if self._head_fit() == "ridge":
            fitted = self._ridge(feats_s, batch.support_y, mean_head)
            for k in wanted:
                out[k] = self.head(mean_head if k == 0 else fitted, feats_q)
            return out
        head = self._initial_head(feats_s, batch.support_y, mean_head)
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

    def _finetune(self, batch: TaskBatch, enc: Tensor, mean_head: Tensor, wanted: list[int]) -> dict[int, Tensor]:
        """SGD on each new task's own copy of the encoder and head, from the support set."""
        enc = enc.clone()
        head = self._initial_head(self.encode_new(enc, batch.support_x), batch.support_y, mean_head)
        lr = self.config.adapt_lr
        out: dict[int, Tensor] = {}
        with torch.enable_grad():
            for k in range(0, max(wanted) + 1):
                if k in wanted:
                    out[k] = self.head(head, self.encode_new(enc, batch.query_x)).detach()
                if k == max(wanted):
                    break
                e, h = enc.requires_grad_(), head.requires_grad_()
                loss = self.losses(self.head(h, self.encode_new(e, batch.support_x)), batch.support_y).sum()
                ge, gh = torch.autograd.grad(loss, (e, h))
                enc, head = (e - lr * ge).detach(), (h - lr * gh).detach()
        return out

    def _linear_head(self) -> bool:
        return len(self.head_net.layers) - self.head_start == 1 and isinstance(self.head_net.layers[-1], Linear)

    def _head_fit(self) -> str:
        mode = self.config.head_fit
        if mode == "auto":
            return "ridge" if self.task.loss == "mse" and self._linear_head() else "sgd"
        return mode

    def _initial_head(self, feats: Tensor, y: Tensor, mean_head: Tensor) -> Tensor:
        """Where a new task's head starts [T, P_h].  Regression: the mean trained head.
        Classification: the mean head's labels mean nothing for a new task, so the prototype head
        (Snell et al. 2017, eq. 2 written as a linear layer; the Proto-MAML initialisation of
        Triantafillou et al. ICLR 2020): w_c = 2 mu_c, b_c = -|mu_c|^2 with mu_c the mean support
        feature of class c, and a logit far below the others for outputs no support example has."""
        t = feats.shape[0]
        if self.task.loss != "cross_entropy" or not self._linear_head():
            return mean_head.expand(t, -1).clone()
        o = self.head_net.out_dim
        onehot = torch.nn.functional.one_hot(y.long(), o).to(feats.dtype)  # [T, K, O]
        counts = onehot.sum(1)  # [T, O]
        mu = onehot.transpose(1, 2) @ feats / counts.clamp_min(1).unsqueeze(-1)  # [T, O, F]
        bias = -(mu * mu).sum(-1)
        bias = torch.where(counts > 0, bias, bias.min(1, keepdim=True).values - 1e3)
        return torch.cat([(2 * mu).reshape(t, -1), bias], 1)

    def _ridge(self, feats: Tensor, y: Tensor, prior: Tensor) -> Tensor:
        """Closed-form ridge fit of a linear head, shrunk towards ``prior`` (the mean trained head):
        argmin_w |[F 1] w - y|^2 + lambda |w - prior|^2, per task, batched."""
        if self.task.loss != "mse" or not self._linear_head():
            raise IncompatibleError("head_fit='ridge' needs a regression benchmark and a linear head; "
                                    "use head_fit='sgd'.")
        t, k, f = feats.shape
        o = self.head_net.out_dim
        phi = torch.cat([feats, feats.new_ones(t, k, 1)], -1)  # [T, K, F+1]
        w0 = self.head_net.views(prior, self.head_start)[0]
        prior_mat = torch.cat([w0["weight"].T, w0["bias"].unsqueeze(0)], 0)  # [F+1, O]
        resid = y.reshape(t, k, o) - phi @ prior_mat
        lam = self.config.ridge
        a = phi.transpose(1, 2) @ phi + lam * torch.eye(f + 1, dtype=phi.dtype, device=phi.device)
        delta = torch.linalg.solve(a, phi.transpose(1, 2) @ resid)  # [T, F+1, O]
        w = prior_mat + delta
        weight = w[:, :f, :].transpose(1, 2).reshape(t, -1)  # [T, O*F] row-major like nn.Linear
        bias = w[:, f, :]
        return torch.cat([weight, bias], 1)


class SharedEncoderLearner(MultiTaskLearner):
    """Hard parameter sharing: shared encoder (all backbone layers before its head) + M task heads.
    ``shared`` is the encoder; a new task's encoder is the same encoder."""

    def __init__(self, config, context: LearnerContext) -> None:
        super().__init__(config, context)
        self.split = self.net.head_offset
        g = context.generator
        init = self.net.init_flat(g, dtype=context.dtype)
        self.shared = nn.Parameter(init[: self.split].clone().to(context.device))
        self.heads = self._init_heads(g)

    def encode(self, shared: Tensor, x: Tensor) -> Tensor:
        return self.net.forward(shared, x, 0, self.net.head_from)

    def features(self, x: Tensor, task_ids: Tensor) -> Tensor:
        return self.encode(self.shared, x)

    def new_task_encoder(self) -> Tensor:
        return self.shared.detach()

    def encode_new(self, enc: Tensor, x: Tensor) -> Tensor:
        # one encoder for every task (the frozen case) runs unbatched: no [T, P] weight copies
        if enc.dim() == 2 and enc.stride(0) == 0:
            enc = enc[0]
        return self.encode(enc, x)


class TaskNetworksLearner(MultiTaskLearner):
    """One encoder of the backbone per task, stacked in ``shared`` as [M * P_enc], all from one
    initialisation, optionally tied by ``l2_weight`` times the mean pairwise squared distance
    (soft sharing); the encoder of a new task is their mean."""

    l2_weight: float = 0.0

    def __init__(self, config, context):
        super().__init__(config, context)
        m = self.num_train_tasks
        self.p_enc = self.net.head_offset
        g = context.generator
        enc = self.net.init_flat(g, dtype=context.dtype)[: self.p_enc]
        self.shared = nn.Parameter(enc.repeat(m).to(context.device))
        self.heads = self._init_heads(g)

    @property
    def encoders(self):
        return self.shared.view(self.num_train_tasks, self.p_enc)

    def features(self, x, task_ids):
        return self.net.forward(self.encoders[task_ids], x, 0, self.net.head_from)

    def penalty(self):
        m = self.num_train_tasks
        if self.l2_weight == 0 or m < 2:
            return None
        theta = self.encoders
        dev = theta - theta.mean(0, keepdim=True)
        return self.l2_weight * 2.0 / (m - 1) * (dev * dev).sum()

    def new_task_encoder(self):
        return self.encoders.mean(0).detach()

    def encode_new(self, enc, x):
        if enc.stride(0) == 0:
            enc = enc[0]
        return self.net.forward(enc, x, 0, self.net.head_from)


def run_columns(net: FunctionalNet, cols: Tensor, x: Tensor, start: int = 0, end: int | None = None) -> Tensor:
    """M networks per row on the same examples: ``cols`` [B, M, P_range] (parameters of layers
    ``start:end``) on x [B, N, ...] -> [B, M, N, ...], as one task-batched forward of B*M rows."""
    b, m = cols.shape[:2]
    xs = x.unsqueeze(1).expand(b, m, *x.shape[1:]).reshape(b * m, *x.shape[1:])
    out = net.forward(cols.reshape(b * m, cols.shape[-1]), xs, start, end)
    return out.view(b, m, *out.shape[1:])


def pick_columns(out: Tensor, task_ids: Tensor) -> Tensor:
    """Column outputs [1, M, T*N, ...] of a batch of T tasks (N examples each) -> [T, N, ...]:
    task t's examples as seen by column ``task_ids[t]``."""
    t = task_ids.shape[0]
    per_task = out[0].view(out.shape[1], t, -1, *out.shape[3:])  # [M, T, N, ...]
    return per_task[task_ids, torch.arange(t, device=task_ids.device)]
