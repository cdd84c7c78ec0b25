"""Metric-based meta-learners: classify query examples by comparing embeddings with the support set.

:class:`EmbeddingLearner` owns the embedding network (every backbone layer before its head, one
flat parameter vector ``theta`` shared by all tasks) and the episode plumbing; a subclass only
says how query embeddings [T, Q, F] are scored against support embeddings [T, S, F] and labels
[T, S] (:meth:`EmbeddingLearner.logits`).  Adaptation to a new task is the comparison itself, so
these learners have no adaptation steps: evaluation reports one plain metric (``accuracy``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import IncompatibleError
from ..tasks.base import TaskBatch
from .base import Learner, LearnerContext

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

    def embed(self, x: Tensor, support_size: int | None = None) -> Tensor:
        """x [T, N, *in] -> [T, N, F] with the shared embedding network (the first
        ``support_size`` examples are the support set, for non-transductive normalisation)."""
        return self.net.forward(self.theta, x, 0, self.net.head_from, support_size=support_size).flatten(2)

    def logits(self, query: Tensor, support: Tensor, labels: Tensor) -> Tensor:
        """Scores [T, Q, N] of each query embedding for each class; log-probabilities or logits."""
        raise NotImplementedError

    def loss_from_logits(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    def _episode(self, batch: TaskBatch) -> Tensor:
        s = batch.support_x.shape[1]
        # one forward over support and query together: fewer launches, same statistics per task
        emb = self.embed(torch.cat([batch.support_x, batch.query_x], 1), support_size=s)
        return self.logits(emb[:, s:], emb[:, :s], batch.support_y)

    def step(self, batch: TaskBatch) -> dict[str, float]:
        logits = self._episode(batch)
        loss = self.loss_from_logits(logits, batch.query_y)
        loss.backward()
        acc = (logits.argmax(-1) == batch.query_y).float().mean().item()
        return {"loss": loss.item(), "accuracy": acc}

    @torch.no_grad()
    def adapt_predict(self, batch: TaskBatch, steps: Sequence[int]) -> dict[int, Tensor]:
        logits = self._episode(batch)
        return {k: logits for k in steps}
