"""Relation Networks.

Sung, Yang, Zhang, Xiang, Torr, Hospedales. Learning to Compare: Relation Network for Few-Shot
Learning. CVPR 2018.  Eq. 1: r_{i,j} = g_phi(C(f(x_i), f(x_j))) with C concatenation and f the
embedding; for K-shot the class representation is the sum of its support embeddings (section
3.2); eq. 2: trained by mean squared error of r against 1[y_i == y_j].  The paper's relation
module is two conv blocks (64 channels) and two fully connected layers (8 hidden units) on the
concatenated feature maps; on 28x28 inputs Conv4 leaves a 1x1 map, where a conv block reduces to a
fully connected layer, so g_phi here is an MLP 2F -> ``relation_channels`` (64, standing in for
the conv blocks) -> ``relation_hidden`` (8) -> 1.  Without the 64-wide layer (2F -> 8 -> 1) the
module collapsed to constant scores on glyphs (its 8 ReLUs died; loss stuck at 0.16, the MSE of
predicting 1/N everywhere).  The paper's conv blocks carry batch norm; ``relation_norm="batch"``
(the default) keeps it after the first layer, per episode (nothing is shared across the tasks of a
meta-batch) and by the benchmark's rule: over the episode's query-class pairs when batch norm is
transductive, else over its support-class pairs only, so no query sees another's statistics.
``"layer"`` normalises each pair alone, ``"none"`` drops it.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

import metareg
from metareg import EmbeddingLearner, batch_norm, class_means, one_hot


@metareg.config
class RelationNetConfig:
    relation_channels: int = metareg.param(64, "width of g_phi's first layer (the paper's conv blocks: 64)", ge=1)
    relation_hidden: int = metareg.param(8, "width of g_phi's last hidden layer (the paper uses 8)", ge=1)
    relation_norm: Literal["batch", "layer", "none"] = metareg.param(
        "batch", "normalisation after g_phi's first layer: batch (over each episode's pairs, as the paper's conv blocks), "
                 "layer (each pair alone) or none")
    backbone: str = metareg.param("", "embedding backbone (its layers before the head); empty: the benchmark's default")
    combiner: str = metareg.param("equal", "how the per-episode gradients of a meta-batch are combined: 'equal' (the "
                                           "mean loss) or a multi-task combiner (pcgrad, mgda, cagrad, upgrad, ...)")
    adversarial: float = metareg.param(0.0, "weight of a task discriminator on the embeddings trained through gradient "
                                            "reversal (0: off); needs training tasks with ids", ge=0)
    task_parallel: bool = metareg.param(True, metareg.TASK_PARALLEL_HELP)


@metareg.algorithm("relation_net", kind="meta", family="metric", summary="a learned relation score between query and class",
                   paper="Sung et al. Learning to Compare: Relation Network for Few-Shot Learning. CVPR 2018",
                   config=RelationNetConfig, requires={"episodic", "classification"})
class RelationNet(EmbeddingLearner):
    episodes_independent = True  # the relation module's batch statistics are per episode too

    def __init__(self, config, context):
        super().__init__(config, context)
        d, c, h = self.feature_dim, config.relation_channels, config.relation_hidden
        gen = context.generator
        self.relation = _Relation(2 * d, c, h, config.relation_norm)
        with torch.no_grad():  # seeded like every other parameter, not from the global RNG
            for name, p in self.relation.named_parameters():
                if name.startswith("norm_"):
                    continue  # scale 1, shift 0
                bound = 1.0 / (p.shape[-1] ** 0.5) if p.dim() > 1 else 0.1
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
        self.relation.to(context.device, context.dtype)

    def logits(self, query, support, labels):
        counts = one_hot(labels, self.ways, support.dtype).sum(1).unsqueeze(-1)  # [T, N, 1]
        classes = class_means(support, labels, self.ways) * counts  # sum of the class's support embeddings
        q = query.shape[1]
        if self.config.relation_norm == "batch" and not self.net.transductive:
            # the statistics come from the support examples' pairs, which ride along in front
            scores = self.relation(_pairs(torch.cat([support, query], 1), classes), stats_rows=support.shape[1])
            return torch.sigmoid(scores[:, -q:])
        return torch.sigmoid(self.relation(_pairs(query, classes)))  # [T, Q, N] relation scores in [0, 1]

    def loss_from_logits(self, scores, y):
        return F.mse_loss(scores, one_hot(y, self.ways, scores.dtype))

    def episode_losses(self, scores, y):
        return F.mse_loss(scores, one_hot(y, self.ways, scores.dtype), reduction="none").flatten(1).mean(1)


def _pairs(x, classes):
    """x [T, M, F] beside each class representation [T, N, F] -> [T, M, N, 2F]."""
    t, m, d = x.shape
    n = classes.shape[1]
    return torch.cat([x.unsqueeze(2).expand(t, m, n, d), classes.unsqueeze(1).expand(t, m, n, d)], -1)


class _Relation(nn.Module):
    """g_phi on pairs [T, M, N, 2F] -> [T, M, N]: Linear, normalisation, ReLU, Linear, ReLU, Linear.

    Batch statistics are per episode, over all its pairs or over those of its first ``stats_rows``
    examples."""

    def __init__(self, d_in: int, width: int, hidden: int, norm: str) -> None:
        super().__init__()
        self.first, self.hidden, self.out = nn.Linear(d_in, width), nn.Linear(width, hidden), nn.Linear(hidden, 1)
        self.norm = norm
        if norm != "none":
            self.norm_weight, self.norm_bias = nn.Parameter(torch.ones(width)), nn.Parameter(torch.zeros(width))

    def forward(self, pairs: torch.Tensor, stats_rows: int | None = None) -> torch.Tensor:
        h = self.first(pairs)
        if self.norm == "batch":  # the backbone's per-task batch norm, the pairs as its examples
            t, m, n, c = h.shape
            h = batch_norm(h.reshape(t, m * n, c, 1, 1), self.norm_weight, self.norm_bias,
                           support_size=None if stats_rows is None else stats_rows * n).view(t, m, n, c)
        elif self.norm == "layer":
            h = F.layer_norm(h, h.shape[-1:], self.norm_weight, self.norm_bias)
        return self.out(F.relu(self.hidden(F.relu(h)))).squeeze(-1)


@metareg.hookimpl
def register_algorithms(register):
    register(RelationNet)
