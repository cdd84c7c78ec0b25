"""Multi-task image classification: ``glyphs_mtl`` (M fixed N-way problems over glyph classes) and
``digits_mtl`` (several labelings of scikit-learn's digits).

Unlike episodes, a training task here keeps its classes and its label order for the whole run (a
multi-task learner gives each a head).  Training tasks draw from training instances only; the
held-out instances of the same classes give the in-distribution test error on the trained tasks
(:meth:`train_tasks_batch`), and held-out tasks for few-shot evaluation come from classes (glyphs)
or labelings (digits) that no training task uses.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from ..config import config, param
from ..errors import ConfigError
from .base import TaskBatch, TaskDistribution, TaskInfo
from .episodes import EpisodeConfig
from .glyphs import Glyphs, GlyphsConfig
from .mtl_regression import check_meta_batch, fixed_task_ids

__all__ = ["GlyphsMTLConfig", "GlyphsMTL", "DigitsMTLConfig", "DigitsMTL", "DIGIT_TASKS"]


@config
class GlyphsMTLConfig(GlyphsConfig):
    num_tasks: int = param(20, "fixed training tasks M, each an N-way problem over its own glyph classes", ge=1)
    meta_batch: int = param(20, "training tasks per batch (at most num_tasks)", ge=1)
    query: int = param(9, "query examples per class and task during training (shots + query <= train_instances)", ge=1)
    train_instances: int = param(15, "instances per class used for training; the rest test the trained tasks", ge=2)
    task_seed: int = param(1234, "seed that picks the training tasks' classes (fixed across runs)")

    def __post_init__(self) -> None:
        check_meta_batch(self)
        if self.train_instances >= self.instances:
            raise ConfigError(f"train_instances ({self.train_instances}) must be below instances ({self.instances}) "
                              "so the trained tasks keep test instances.")
        if self.shots + self.query > self.train_instances:
            raise ConfigError(f"shots + query ({self.shots + self.query}) must not exceed train_instances "
                              f"({self.train_instances}); lower query.")


def class_major(x: Tensor, shots: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Images [T, ways, n, ...] -> support/query in the episode layout (class-major, label j =
    the j-th class): support_x, support_y, query_x, query_y."""
    t, ways, n = x.shape[:3]
    labels = torch.arange(ways)
    q = n - shots

    def lab(k: int) -> Tensor:
        return labels.repeat_interleave(k).expand(t, -1).contiguous()

    return (x[:, :, :shots].reshape(t, ways * shots, *x.shape[3:]), lab(shots),
            x[:, :, shots:].reshape(t, ways * q, *x.shape[3:]), lab(q))


class GlyphsMTL(Glyphs):
    """M tasks, each ``ways`` distinct classes of the background (training) groups, no class in two
    tasks; label j of task t is always the same class.  Held-out tasks are the usual episodes of the
    evaluation (or validation) groups, which no training task touches."""

    def __init__(self, config: GlyphsMTLConfig) -> None:
        super().__init__(config)
        c = config
        pool = self.pools["train"]
        if c.num_tasks * c.ways > pool.num_classes:
            raise ConfigError(f"glyphs_mtl: num_tasks * ways = {c.num_tasks * c.ways} classes needed, the training "
                              f"groups have {pool.num_classes}; lower num_tasks or ways.")
        g = torch.Generator().manual_seed(c.task_seed)
        picked = torch.randperm(pool.num_classes, generator=g)[: c.num_tasks * c.ways]
        self.task_classes = picked.view(c.num_tasks, c.ways)
        self.info = TaskInfo(input_shape=self.info.input_shape, output_dim=c.ways, loss="cross_entropy",
                             metric="accuracy", num_train_tasks=c.num_tasks,
                             default_backbone=self.info.default_backbone,
                             backbone_options=self.info.backbone_options)

    def _task_images(self, ids: Tensor, inst: Tensor) -> Tensor:
        """Instances ``inst`` [T, ways, n] of the classes of tasks ``ids`` -> [T, ways, n, C, H, W]."""
        pool = self.pools["train"]
        rows = pool.offsets[self.task_classes[ids]].unsqueeze(-1) + inst
        x = pool.images[rows.reshape(-1)].float().div_(255)
        return x.view(*inst.shape, *x.shape[1:])

    def train_batch(self, generator: torch.Generator) -> TaskBatch:
        c = self.config
        ids = fixed_task_ids(c.num_tasks, c.meta_batch, generator)
        keys = torch.rand(len(ids), c.ways, c.train_instances, generator=generator)
        inst = keys.argsort(-1)[..., : c.shots + c.query]
        return TaskBatch(*class_major(self._task_images(ids, inst), c.shots), ids)

    def train_tasks_batch(self, generator: torch.Generator) -> TaskBatch:
        """The held-out instances of every class of the M training tasks (the query set), with ids."""
        c = self.config
        ids = torch.arange(c.num_tasks)
        inst = torch.arange(c.train_instances, c.instances).expand(c.num_tasks, c.ways, -1)
        return TaskBatch(*class_major(self._task_images(ids, inst), 0), ids)


#: training labelings of digits_mtl: (name, label of each digit 0..9)
DIGIT_TASKS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("digit", tuple(range(10))),
    ("parity", tuple(d % 2 for d in range(10))),
    ("greater_than_4", tuple(int(d > 4) for d in range(10))),
    ("mod_3", tuple(d % 3 for d in range(10))),
    ("closed_loop", tuple(int(d in (0, 6, 8, 9)) for d in range(10))),
    ("prime", tuple(int(d in (2, 3, 5, 7)) for d in range(10))),
)
HELD_OUT_FRACTION = 0.2


@config
class DigitsMTLConfig(EpisodeConfig):
    num_tasks: int = param(6, f"training labelings M: the first M of {', '.join(n for n, _ in DIGIT_TASKS)}",
                           ge=1, le=len(DIGIT_TASKS))
    meta_batch: int = param(6, "training tasks per batch (at most num_tasks)", ge=1)
    ways: int = param(2, "classes of a held-out task (held-out tasks are binary: a set of 5 digits vs the rest)",
                      ge=2, le=2)
    shots: int = param(5, "support examples per class of a held-out task (K)", ge=1)
    query: int = param(27, "training examples per task and step besides the support ones", ge=1)
    eval_query: int = param(15, "query examples per class of a held-out task", ge=1)

    def __post_init__(self) -> None:
        check_meta_batch(self)


def _load_digits() -> tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("digits_mtl reads scikit-learn's bundled digits; install it with "
                          "`pip install metareg[digits]` (or `pip install scikit-learn`).") from None
    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # values are 0..16
    return x, torch.as_tensor(d.target, dtype=torch.long)


class DigitsMTL(TaskDistribution):
    """The 1,797 8x8 digits (scaled to [0, 1]) under several labelings (:data:`DIGIT_TASKS`):
    digit (10 classes), parity, greater than 4, mod 3, closed loop, prime.

    Different numbers of classes, one ``output_dim``: every task has 10 outputs (the most classes
    of any task) and a task with c classes uses labels 0..c-1 only.  The unused outputs are never
    a target, so cross-entropy drives their logits down within the first steps, and a padded
    output is a head parameter that costs nothing else; masking them instead would need the
    number of classes per task inside every learner's loss.

    The first 80% of each digit's images train, the rest test.  Held-out tasks (few-shot
    evaluation) are new binary labelings: a set of five digits against the other five (126
    balanced splits, less parity and greater-than-4, which are training tasks), drawn per task,
    K support and ``eval_query`` query images per class from the test images.  A balanced split
    is a function of the digit identity, which the digit task teaches: the question is whether the
    representation makes such new groupings learnable from K examples.
    """

    def __init__(self, config: DigitsMTLConfig) -> None:
        super().__init__(config)
        x, y = _load_digits()
        train, test = [], []
        for d in range(10):
            idx = torch.nonzero(y == d).squeeze(1)
            cut = int(round(len(idx) * (1 - HELD_OUT_FRACTION)))
            train.append(idx[:cut])
            test.append(idx[cut:])
        self.x, self.digit = x, y
        self.train_idx, self.test_idx = torch.cat(train), torch.cat(test)
        self.test_by_digit = test
        self.labels = torch.tensor([lab for _, lab in DIGIT_TASKS[: config.num_tasks]], dtype=torch.long)  # [M, 10]
        self.task_names = [n for n, _ in DIGIT_TASKS[: config.num_tasks]]
        trained = {tuple(lab) for _, lab in DIGIT_TASKS}
        trained |= {tuple(1 - v for v in lab) for lab in trained if max(lab) == 1}
        splits = []
        for first in itertools.combinations(range(1, 10), 4):  # digit 0 in the first set: each split once
            lab = tuple(int(d not in (0, *first)) for d in range(10))
            if lab not in trained:
                splits.append(lab)
        self.held_out_labelings = torch.tensor(splits, dtype=torch.long)  # [S, 10]
        min_count = min(len(t) for t in test)
        if config.shots + config.eval_query > 5 * min_count:
            raise ConfigError(f"digits_mtl: shots + eval_query ({config.shots + config.eval_query}) per class is more "
                              f"than the test images of five digits ({5 * min_count}); lower eval_query.")
        self.info = TaskInfo(input_shape=(1, 8, 8), output_dim=10, loss="cross_entropy", metric="accuracy",
                             num_train_tasks=config.num_tasks, default_backbone="mlp",
                             backbone_options=(("hidden", (64, 64)),))

    def _labelled(self, ids: Tensor, rows: Tensor, shots: int) -> TaskBatch:
        x = self.x[rows]  # [T, N, 1, 8, 8]
        y = torch.gather(self.labels[ids], 1, self.digit[rows])
        return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], ids)

    def train_batch(self, generator: torch.Generator) -> TaskBatch:
        c = self.config
        ids = fixed_task_ids(c.num_tasks, c.meta_batch, generator)
        n = c.shots + c.query
        pick = torch.rand(len(ids), len(self.train_idx), generator=generator).argsort(1)[:, :n]
        return self._labelled(ids, self.train_idx[pick], c.shots)

    def train_tasks_batch(self, generator: torch.Generator) -> TaskBatch:
        """Every test image under each of the M training labelings (the query set), with ids."""
        ids = torch.arange(self.config.num_tasks)
        return self._labelled(ids, self.test_idx.expand(len(ids), -1), 0)

    def eval_batch(self, generator: torch.Generator, num_tasks: int, split: str = "test") -> TaskBatch:
        if split not in ("val", "test"):
            raise ConfigError(f"eval_batch split must be 'val' or 'test', got {split!r}.")
        c = self.config
        lab = self.held_out_labelings[torch.randint(len(self.held_out_labelings), (num_tasks,), generator=generator)]
        per_class = c.shots + c.eval_query
        xs = []
        for t in range(num_tasks):
            rows = []
            for cls in (0, 1):
                pool = torch.cat([self.test_by_digit[d] for d in range(10) if int(lab[t, d]) == cls])
                rows.append(pool[torch.randperm(len(pool), generator=generator)[:per_class]])
            xs.append(torch.stack(rows))  # [2, per_class]
        rows = torch.stack(xs)  # [T, 2, per_class]
        return TaskBatch(*class_major(self.x[rows], c.shots))  # x [T, 2, per_class, 1, 8, 8]
