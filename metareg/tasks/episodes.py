"""N-way K-shot episodes from class-split image pools.

A benchmark holds each split (background / validation / evaluation) as a :class:`ClassPool`: one
tensor of all its images, classes in blocks, so an episode is a few vectorised index operations
(pick ``ways`` classes per task, ``shots + query`` distinct instances per class, one gather) and
never a Python loop over tasks or images.  Splits are separate pools built from disjoint class
lists, so no class of one split can appear in an episode of another.

Episode layout (what learners may rely on): support ``[T, ways*shots, C, H, W]`` and query
``[T, ways*query, C, H, W]``, class-major (example ``i`` of the support set has label
``i // shots``); labels are ``long``.  Which dataset class gets label ``j`` is drawn afresh for
every task, so labels carry no information across episodes.
"""

from __future__ import annotations

import math

from collections.abc import Sequence

import torch
from torch import Tensor

from ..config import config, param
from ..errors import ConfigError, DataError
from .base import TaskBatch, TaskDistribution, TaskInfo

__all__ = ["DataError", "EpisodeConfig", "ClassPool", "EpisodicImages", "sample_episodes"]


@config
class EpisodeConfig:
    ways: int = param(5, "classes per task (N)", ge=2)
    shots: int = param(1, "support examples per class (K)", ge=1)
    query: int = param(15, "query examples per class during training", ge=1)
    meta_batch: int = param(32, "tasks per training batch (T)", ge=1)
    eval_query: int = param(0, "query examples per class at evaluation (0: same as query)", ge=0)
    transductive: bool = param(True, "batch-norm statistics from all examples of each forward (MAML's transductive "
                                     "setting) or from the support set only; recorded in every result")

    @property
    def eval_query_size(self) -> int:
        return self.eval_query or self.query


class ClassPool:
    """The images of one split: ``images`` [M, C, H, W] (uint8 or float) with the instances of
    class ``c`` at rows ``offsets[c] : offsets[c] + counts[c]``.

    ``rotations`` > 1 multiplies the classes: class ``c * rotations + r`` is class ``c`` turned by
    ``r`` quarter turns (Omniglot's augmentation), applied after the gather so the pool stores each
    image once.
    """

    def __init__(self, images: Tensor, counts: Sequence[int] | Tensor, *, name: str = "split", rotations: int = 1,
                 class_names: Sequence[str] | None = None) -> None:
        counts = torch.as_tensor(counts, dtype=torch.long)
        if images.dim() != 4:
            raise ValueError(f"ClassPool needs images [M, C, H, W], got shape {tuple(images.shape)}")
        if int(counts.sum()) != images.shape[0]:
            raise ValueError(f"class counts sum to {int(counts.sum())} but there are {images.shape[0]} images")
        if rotations not in (1, 2, 4):
            raise ValueError(f"rotations must be 1, 2 or 4, got {rotations}")
        if rotations > 1 and images.shape[-1] != images.shape[-2]:
            raise ValueError("rotated classes need square images")
        self.images = images
        self.counts = counts
        self.offsets = torch.cumsum(counts, 0) - counts
        self.name = name
        self.rotations = rotations
        self.class_names = list(class_names) if class_names is not None else None
        self.num_classes = len(counts) * rotations
        self.min_count = int(counts.min()) if len(counts) else 0
        self._uniform = bool(len(counts)) and int(counts.max()) == self.min_count

    def check(self, ways: int, per_class: int, what: str) -> None:
        """Raise a :class:`ConfigError` when ``ways``-way episodes with ``per_class`` instances per
        class cannot be drawn from this pool."""
        if ways > self.num_classes:
            raise ConfigError(f"{what}: ways={ways} but the {self.name} split has only {self.num_classes} classes; "
                              f"use ways <= {self.num_classes}.")
        if per_class > self.min_count:
            raise ConfigError(f"{what}: each class needs shots + query = {per_class} distinct examples, but some "
                              f"{self.name} class has only {self.min_count}; lower shots or query.")

    def sample(self, generator: torch.Generator, num_tasks: int, ways: int, per_class: int) -> Tensor:
        """Images of ``num_tasks`` episodes: [T, ways, per_class, C, H, W] float in [0, 1]
        (uint8 pools) or as stored (float pools).  Classes are distinct within a task, instances
        distinct within a class."""
        t = num_tasks
        # ways distinct classes per task: the first `ways` of a random permutation, drawn for all
        # tasks at once (argsort of uniforms is a uniform permutation)
        classes = torch.rand(t, self.num_classes, generator=generator).argsort(1)[:, :ways]
        base, rot = classes // self.rotations, classes % self.rotations
        counts = self.counts[base]  # [T, ways]
        if self._uniform:
            inst = torch.rand(t, ways, self.min_count, generator=generator).argsort(-1)[..., :per_class]
        else:
            width = int(self.counts.max())
            keys = torch.rand(t, ways, width, generator=generator)
            keys = keys.masked_fill(torch.arange(width) >= counts.unsqueeze(-1), 2.0)  # padding sorts last
            inst = keys.argsort(-1)[..., :per_class]
        rows = (self.offsets[base].unsqueeze(-1) + inst).reshape(-1)
        x = self.images[rows]
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.clone()
        x = x.view(t, ways, per_class, *x.shape[1:])
        if self.rotations > 1:
            x = _rotate(x, rot)
        return x


def _rotate(x: Tensor, quarter_turns: Tensor) -> Tensor:
    """x [T, W, K, C, H, H] with ``quarter_turns`` [T, W] in {0..3}: each class turned its own way."""
    out = x
    for r in range(1, 4):
        mask = quarter_turns == r
        if bool(mask.any()):
            out = torch.where(mask.view(*mask.shape, 1, 1, 1, 1), torch.rot90(x, r, dims=(-2, -1)), out)
    return out


def sample_episodes(pool: ClassPool, generator: torch.Generator, num_tasks: int, ways: int, shots: int,
                    query: int) -> TaskBatch:
    """``num_tasks`` ways-way shots-shot episodes with ``query`` query examples per class."""
    x = pool.sample(generator, num_tasks, ways, shots + query)
    t = num_tasks
    labels = torch.arange(ways)
    return TaskBatch(
        x[:, :, :shots].reshape(t, ways * shots, *x.shape[3:]),
        labels.repeat_interleave(shots).expand(t, -1).contiguous(),
        x[:, :, shots:].reshape(t, ways * query, *x.shape[3:]),
        labels.repeat_interleave(query).expand(t, -1).contiguous(),
    )


class EpisodicImages(TaskDistribution):
    """Base of the image benchmarks: subclasses build ``self.pools`` (keys ``train``, ``val``,
    ``test``) in ``__init__`` and call :meth:`_finish`."""

    pools: dict[str, ClassPool]

    def _finish(self, input_shape: tuple[int, ...], default_backbone: str = "conv4",
                backbone_options: tuple[tuple[str, object], ...] = ()) -> None:
        c = self.config
        self.pools["train"].check(c.ways, c.shots + c.query, "training episodes")
        for split in ("val", "test"):
            if split in self.pools:
                self.pools[split].check(c.ways, c.shots + c.eval_query_size, f"{split} episodes")
        self.info = TaskInfo(input_shape=tuple(input_shape), output_dim=c.ways, loss="cross_entropy",
                             metric="accuracy", default_backbone=default_backbone,
                             backbone_options=(*backbone_options, ("transductive", c.transductive)))

    def batch_bytes(self) -> int:
        c = self.config
        per_image = 4 * math.prod(self.info.input_shape)
        return per_image * c.ways * max(c.meta_batch * (c.shots + c.query), c.shots + c.eval_query_size)

    def train_batch(self, generator: torch.Generator) -> TaskBatch:
        c = self.config
        return sample_episodes(self.pools["train"], generator, c.meta_batch, c.ways, c.shots, c.query)

    def eval_batch(self, generator: torch.Generator, num_tasks: int, split: str = "test") -> TaskBatch:
        if split not in ("val", "test"):
            raise ConfigError(f"eval_batch split must be 'val' or 'test', got {split!r}.")
        pool = self.pools.get(split)
        if pool is None:
            raise ConfigError(f"{type(self).__name__} has no {split} split.")
        c = self.config
        return sample_episodes(pool, generator, num_tasks, c.ways, c.shots, c.eval_query_size)

    def describe_splits(self) -> dict[str, int]:
        """Classes per split (for logs and reports)."""
        return {k: p.num_classes for k, p in self.pools.items()}

