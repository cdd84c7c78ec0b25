"""Metric-based meta-learners: classify query examples by comparing embeddings with the support set.

:class:`EmbeddingLearner` owns the embedding network (every backbone layer before its head, one
flat parameter vector ``theta`` shared by all tasks) and the episode plumbing; a subclass only
says how query embeddings [T, Q, F] are scored against support embeddings [T, S, F] and labels
[T, S] (:meth:`EmbeddingLearner.logits`).  Adaptation to a new task is the comparison itself, so
these learners have no adaptation steps: evaluation reports one plain metric (``accuracy``).

A config with ``combiner`` and ``adversarial`` fields makes the episodes of a meta-batch a
multi-task problem (:mod:`metareg.learners.meta_batch`): a gradient combiner aggregates the
per-episode gradients [T, P] of the embedding ``theta`` (one backward through an embedding batched
with per-episode copies of theta), and a task discriminator behind gradient reversal reads the
embeddings.  With the defaults the step is the plain mean loss, computed as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import IncompatibleError
from ..nets.functional import differentiated_once
from ..tasks.base import TaskBatch
from .base import Learner, LearnerContext, accumulate_chunks, backbone_chunk, task_parallel_on, task_parallel_workers
from .meta_batch import MetaBatchObjective

__all__ = ["EmbeddingLearner", "class_means", "one_hot"]


def one_hot(labels: Tensor, ways: int, dtype: torch.dtype) -> Tensor:
    """[T, S] integer labels -> [T, S, N] one-hot."""
    return F.one_hot(labels, ways).to(dtype)


def class_means(emb: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Per-class mean embedding (a prototype): emb [T, S, F], labels [T, S] -> [T, N, F].

    One batched matmul with the one-hot label matrix instead of a loop over classes; a class with
    no support example gets a zero prototype rather than a division by zero.
    """
    oh = one_hot(labels, ways, emb.dtype)  # [T, S, N]
    counts = oh.sum(1).clamp_min(1).unsqueeze(-1)  # [T, N, 1]
    return oh.transpose(1, 2) @ emb / counts


class EmbeddingLearner(Learner):
    kind = "meta"
    step_adaptation = False
    capabilities = frozenset({"metric"})
    #: whether :meth:`logits` and :meth:`episode_losses` treat each episode on its own (no
    #: statistic across the episodes of a meta-batch), so that a config with ``task_parallel``
    #: may run the meta-batch in chunks of episodes; off unless a subclass says so
    episodes_independent: bool = False

    def __init__(self, config, context: LearnerContext) -> None:
        super().__init__(config, context)
        if context.task.loss != "cross_entropy":
            raise IncompatibleError(f"{type(self).__name__} classifies: it needs a classification benchmark.")
        self.ways = context.task.output_dim
        self.net = context.make_backbone(config.backbone or None)
        body = self.net.head_offset
        self.theta = nn.Parameter(self.net.init_flat(context.generator, dtype=context.dtype)[:body].clone().to(context.device))
        with torch.no_grad():
            probe = torch.zeros(1, 2, *context.task.input_shape, dtype=context.dtype, device=context.device)
            self.feature_dim = self.embed(probe, support_size=2).shape[-1]
        self.meta_objective = MetaBatchObjective(config, context, self.feature_dim)
        #: threads that ran the last step's chunks of episodes (1: the caller's thread; summary.json)
        self.step_workers = 1

    def embed(self, x: Tensor, support_size: int | None = None, theta: Tensor | None = None) -> Tensor:
        """x [T, N, *in] -> [T, N, F] with the shared embedding network (the first
        ``support_size`` examples are the support set, for non-transductive normalisation);
        ``theta``: other embedding parameters, [P] or per-task [T, P] (default: the learner's)."""
        theta = self.theta if theta is None else theta
        return self.net.forward(theta, x, 0, self.net.head_from, support_size=support_size).flatten(2)

    def logits(self, query: Tensor, support: Tensor, labels: Tensor) -> Tensor:
        """Scores [T, Q, N] of each query embedding for each class; log-probabilities or logits."""
        raise NotImplementedError

    def loss_from_logits(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    def episode_losses(self, logits: Tensor, y: Tensor) -> Tensor:
        """Per-episode losses [T] (their mean is :meth:`loss_from_logits` when every episode has
        the same number of queries).  A subclass that overrides :meth:`loss_from_logits` should
        override this too; until it does, its loss is taken one episode at a time."""
        if type(self).loss_from_logits is EmbeddingLearner.loss_from_logits:
            t = y.shape[0]
            return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(t, -1).mean(1)
        return torch.stack([self.loss_from_logits(logits[i: i + 1], y[i: i + 1]) for i in range(y.shape[0])])

    def _episode(self, batch: TaskBatch, theta: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(logits [T, Q, N], embeddings [T, S+Q, F]) of an episode batch."""
        s = batch.support_x.shape[1]
        # one forward over support and query together: fewer launches, same statistics per task
        emb = self.embed(torch.cat([batch.support_x, batch.query_x], 1), support_size=s, theta=theta)
        return self.logits(emb[:, s:], emb[:, :s], batch.support_y), emb

    def _parallel_chunk(self, batch: TaskBatch) -> int:
        """Episodes per chunk of a ``task_parallel`` step: the backbone's own chunk of the
        episodes' support and query examples on CPU (``ConvNet.tasks_per_chunk``); 0 (the whole
        meta-batch) where it has none, for combiners and ``adversarial`` (they need every episode
        at once) and for learners whose episodes are not independent."""
        mo = self.meta_objective
        if not self.episodes_independent or not mo.plain or mo.adversarial or not task_parallel_on(self.config, batch):
            return 0
        q = batch.query_x
        both = q[:, :1].expand(-1, batch.support_x.shape[1] + q.shape[1], *q.shape[2:])  # the shape embed() sees
        return backbone_chunk(self.net, both)

    def _chunked_step(self, batch: TaskBatch, chunk: int) -> dict[str, float]:
        """The plain mean loss ``chunk`` episodes at a time, on workers of one thread each: each
        chunk's gradient of its share of the loss (every episode has the same number of queries),
        summed in the chunks' order."""
        t = batch.num_tasks
        params = [p for p in self.parameters() if p.requires_grad]

        def chunk_gradient(start: int) -> tuple:
            part = batch.slice(start, start + chunk)
            with differentiated_once():
                logits, _ = self._episode(part)
            losses = self.episode_losses(logits, part.query_y)
            grads = torch.autograd.grad(losses.sum() / t, params, allow_unused=True)
            return grads, losses.detach().sum(), (logits.detach().argmax(-1) == part.query_y).sum()

        self.step_workers = task_parallel_workers(self.config, batch)
        parts = accumulate_chunks(params, chunk_gradient, range(0, t, chunk), self.step_workers)
        loss = sum(p[0] for p in parts) / t
        return {"loss": loss.item(), "accuracy": (sum(p[1] for p in parts) / batch.query_y.numel()).item()}

    def step(self, batch: TaskBatch) -> dict[str, float]:
        chunk = self._parallel_chunk(batch)
        if chunk:
            return self._chunked_step(batch, chunk)
        mo = self.meta_objective
        rows = mo.task_rows(self.theta, batch.num_tasks) if mo.needs_jacobian else None
        # the plain objective differentiates the episode once: Conv4 may end its blocks with
        # metareg.ops.bn_pool_relu (see metareg.nets.differentiated_once)
        with differentiated_once() if rows is None and mo.plain else contextlib.nullcontext():
            logits, emb = self._episode(batch, rows)
        extra, out = None, {}
        if mo.adversarial:
            extra, out = mo.adversarial_loss(emb, batch.task_ids)
        if rows is not None:
            losses = self.episode_losses(logits, batch.query_y)
            out.update(mo.backward(self.theta, rows, losses, self.parameters(), extra, batch.task_ids))
            loss = losses.detach().mean()
        elif mo.plain:
            loss = self.loss_from_logits(logits, batch.query_y)
            (loss if extra is None else loss + extra).backward()
        else:
            losses = self.episode_losses(logits, batch.query_y)
            (mo.loss(losses, batch.task_ids) if extra is None else mo.loss(losses, batch.task_ids) + extra).backward()
            loss = losses.detach().mean()
        acc = (logits.argmax(-1) == batch.query_y).float().mean().item()
        return {"loss": loss.item(), "accuracy": acc, **out}

    @torch.no_grad()
    def adapt_predict(self, batch: TaskBatch, steps: Sequence[int]) -> dict[int, Tensor]:
        logits, _ = self._episode(batch)
        return {k: logits for k in steps}
