"""``glyph_clusters``: glyphs episodes from clusters of scripts whose inputs share no structure.

A meta-learning distribution whose training tasks conflict, for the multi-task methods inside
meta-learning (:mod:`metareg.learners.meta_batch`).  The training scripts (glyphs' background
groups) are dealt round-robin into K clusters, and cluster k's images are seen through its own
fixed random pixel permutation (cluster 0: none), as in permuted MNIST (Goodfellow et al. 2013;
Kirkpatrick et al. 2017): a task of one cluster shares no spatial structure with a task of
another, so a shared initialisation or embedding has to serve K unrelated input layouts.  Every
training episode draws its cluster, then ``ways`` classes of that cluster; its ``task_ids`` entry
is the cluster (``num_train_tasks`` = K), which is what task-aware combiners (GradVac, GradNorm)
and the task discriminator read.

Held-out episodes come from glyphs' evaluation (or validation) groups, never trained on, each seen
through one of the same K permutations drawn per episode: the score is the mean over the input
layouts the meta-learner trained on.  The default backbone is an MLP (a convolution's locality
prior would favour cluster 0).

Registered as the built-in benchmark ``glyph_clusters`` by plugins/glyph_clusters.py (used by
benchmarks/meta_conflict.py and benchmarks/bench_meta_combiners.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import config, param
from ..errors import ConfigError
from .base import TaskBatch, TaskInfo
from .glyphs import OUT, Glyphs, GlyphsConfig

__all__ = ["GlyphClustersConfig", "GlyphClusters"]


@config
class GlyphClustersConfig(GlyphsConfig):
    clusters: int = param(4, "clusters K of training scripts, each seen through its own pixel permutation", ge=1, le=18)
    cluster_seed: int = param(1234, "seed of the permutations (fixed across runs)")
    meta_batch: int = param(8, "tasks per training batch (T)", ge=1)


class GlyphClusters(Glyphs):
    def __init__(self, config: GlyphClustersConfig) -> None:
        super().__init__(config)
        c = config
        train_pool = self.pools["train"]
        groups = [name.split("/")[0] for name in train_pool.class_names]
        order = list(dict.fromkeys(groups))  # training groups in glyphs' order
        if c.clusters > len(order):
            raise ConfigError(f"glyph_clusters: {c.clusters} clusters but only {len(order)} training scripts.")
        cluster_of_group = {g: i % c.clusters for i, g in enumerate(order)}
        cluster = torch.tensor([cluster_of_group[g] for g in groups])
        self.cluster_classes = [torch.nonzero(cluster == k).squeeze(1) for k in range(c.clusters)]
        self.cluster_groups = [[g for g in order if cluster_of_group[g] == k] for k in range(c.clusters)]
        small = min(len(ix) for ix in self.cluster_classes)
        if c.ways > small:
            raise ConfigError(f"glyph_clusters: ways={c.ways} but the smallest cluster has {small} classes.")
        g = torch.Generator().manual_seed(c.cluster_seed)
        perms = [torch.arange(OUT * OUT)] + [torch.randperm(OUT * OUT, generator=g) for _ in range(c.clusters - 1)]
        self.permutations = torch.stack(perms)  # [K, H*W]
        self.info = TaskInfo(input_shape=(1, OUT, OUT), output_dim=c.ways, loss="cross_entropy", metric="accuracy",
                             num_train_tasks=c.clusters, default_backbone="mlp",
                             backbone_options=(("hidden", (128, 128)), ("transductive", c.transductive)))

    def _permute(self, x: Tensor, k: Tensor) -> Tensor:
        """x [T, N, 1, H, W], clusters k [T] -> each task's images through its cluster's permutation."""
        t, n = x.shape[:2]
        idx = self.permutations[k].view(t, 1, -1).expand(t, n, -1)
        return torch.gather(x.reshape(t, n, -1), 2, idx).view_as(x)

    def _permuted(self, b: TaskBatch, k: Tensor) -> TaskBatch:
        return TaskBatch(self._permute(b.support_x, k), b.support_y, self._permute(b.query_x, k), b.query_y, k)

    def train_batch(self, generator: torch.Generator) -> TaskBatch:
        c = self.config
        k = torch.randint(c.clusters, (c.meta_batch,), generator=generator)
        pool = self.pools["train"]
        parts = []
        for j in range(c.clusters):  # one vectorised draw per cluster, then back in batch order
            n = int((k == j).sum())
            if n:
                classes = self.cluster_classes[j]
                pick = torch.rand(n, len(classes), generator=generator).argsort(1)[:, : c.ways]
                parts.append((j, classes[pick]))
        x = torch.empty(c.meta_batch, c.ways, c.shots + c.query, 1, OUT, OUT)
        for j, cls in parts:
            rows = pool.offsets[cls].unsqueeze(-1) + torch.rand(
                *cls.shape, pool.min_count, generator=generator).argsort(-1)[..., : c.shots + c.query]
            imgs = pool.images[rows.reshape(-1)].float().div_(255)
            x[k == j] = imgs.view(*rows.shape, 1, OUT, OUT)
        s = c.shots
        t = c.meta_batch
        labels = torch.arange(c.ways)
        b = TaskBatch(x[:, :, :s].reshape(t, c.ways * s, 1, OUT, OUT), labels.repeat_interleave(s).expand(t, -1).contiguous(),
                      x[:, :, s:].reshape(t, -1, 1, OUT, OUT), labels.repeat_interleave(c.query).expand(t, -1).contiguous())
        return self._permuted(b, k)

    def eval_batch(self, generator: torch.Generator, num_tasks: int, split: str = "test") -> TaskBatch:
        b = super().eval_batch(generator, num_tasks, split)
        k = torch.randint(self.config.clusters, (num_tasks,), generator=generator)
        out = self._permuted(b, k)
        return TaskBatch(out.support_x, out.support_y, out.query_x, out.query_y)  # held-out: no training-task id

    def describe_clusters(self) -> list[tuple[int, list[str]]]:
        """(classes, scripts) of each cluster."""
        return [(len(ix), gr) for ix, gr in zip(self.cluster_classes, self.cluster_groups)]
