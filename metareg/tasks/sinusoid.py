"""Sinusoid regression (Finn et al., 2017, section 5.1) and its multi-task form.

A task is y = A sin(x - phi) with A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5].  The episodic
benchmark draws fresh tasks for every meta-batch; the multi-task form fixes M training sinusoids
(one head each in a multi-task learner) and evaluates, like the episodic one, on fresh sinusoids
that were never trained on, so both paradigms are scored on the same task family.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import config, param
from .base import TaskBatch, TaskDistribution, TaskInfo

__all__ = ["SinusoidConfig", "SinusoidMTLConfig", "Sinusoid", "SinusoidMTL", "sample_sinusoids"]


@config
class SinusoidConfig:
    shots: int = param(10, "support examples per task (K)", ge=1)
    query: int = param(10, "query examples per task during training", ge=1)
    meta_batch: int = param(25, "tasks per training batch (T)", ge=1)
    eval_query: int = param(100, "query points per held-out task at evaluation", ge=1)
    amp_min: float = param(0.1, "smallest amplitude", gt=0)
    amp_max: float = param(5.0, "largest amplitude", gt=0)
    phase_min: float = param(0.0, "smallest phase")
    phase_max: float = param(math.pi, "largest phase")
    x_min: float = param(-5.0, "smallest input")
    x_max: float = param(5.0, "largest input")

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        for lo, hi in (("amp_min", "amp_max"), ("phase_min", "phase_max")):
            if getattr(self, lo) > getattr(self, hi):
                raise ConfigError(f"{lo} ({getattr(self, lo)}) must not exceed {hi} ({getattr(self, hi)}).")
        if self.x_min >= self.x_max:  # every input equal: no function to learn
            raise ConfigError(f"x_min ({self.x_min}) must be below x_max ({self.x_max}).")


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def sample_sinusoids(cfg: SinusoidConfig, amp: Tensor, phase: Tensor, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """x [T, n, 1] uniform on the input range and y = amp * sin(x - phase)."""
    x = torch.rand(amp.shape[0], n, 1, generator=g) * (cfg.x_max - cfg.x_min) + cfg.x_min
    y = amp.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))
    return x, y


class Sinusoid(TaskDistribution):
    info = TaskInfo(input_shape=(1,), output_dim=1, loss="mse", metric="mse", default_backbone="mlp")

    def _tasks(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        c = self.config
        return _uniform(n, c.amp_min, c.amp_max, g), _uniform(n, c.phase_min, c.phase_max, g)

    def _batch(self, amp: Tensor, phase: Tensor, query: int, g: torch.Generator, ids: Tensor | None = None) -> TaskBatch:
        x, y = sample_sinusoids(self.config, amp, phase, self.config.shots + query, g)
        k = self.config.shots
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:], ids)

    def batch_bytes(self) -> int:
        c = self.config
        return 4 * 2 * max(c.meta_batch * (c.shots + c.query), c.shots + c.eval_query)

    def train_batch(self, generator: torch.Generator) -> TaskBatch:
        amp, phase = self._tasks(self.config.meta_batch, generator)
        return self._batch(amp, phase, self.config.query, generator)

    def eval_batch(self, generator: torch.Generator, num_tasks: int, split: str = "test") -> TaskBatch:
        amp, phase = self._tasks(num_tasks, generator)
        return self._batch(amp, phase, self.config.eval_query, generator)


@config
class SinusoidMTLConfig(SinusoidConfig):
    num_tasks: int = param(20, "fixed training sinusoids (M), one head each", ge=1)
    task_seed: int = param(1234, "seed that draws the M training sinusoids (fixed across runs)")
    meta_batch: int = param(20, "training tasks per batch (at most num_tasks; all of them by default)", ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        from ..errors import ConfigError

        if self.meta_batch > self.num_tasks:
            raise ConfigError(f"meta_batch ({self.meta_batch}) must not exceed num_tasks ({self.num_tasks}).")


class SinusoidMTL(Sinusoid):
    """M fixed training sinusoids; episodic learners see meta-batches drawn from those M tasks."""

    def __init__(self, config: SinusoidMTLConfig) -> None:
        super().__init__(config)
        g = torch.Generator().manual_seed(config.task_seed)
        self.amp, self.phase = self._tasks(config.num_tasks, g)
        self.info = TaskInfo(input_shape=(1,), output_dim=1, loss="mse", metric="mse",
                             num_train_tasks=config.num_tasks, default_backbone="mlp")

    def train_batch(self, generator: torch.Generator) -> TaskBatch:
        c = self.config
        if c.meta_batch == c.num_tasks:
            ids = torch.arange(c.num_tasks)
        else:
            ids = torch.randperm(c.num_tasks, generator=generator)[: c.meta_batch]
        return self._batch(self.amp[ids], self.phase[ids], c.query, generator, ids)

    def train_tasks_batch(self, generator: torch.Generator) -> TaskBatch:
        """Fresh samples (``eval_query`` per task) of all M training sinusoids, with their ids: the
        seen-task error a multi-task learner's summary reports as ``train_tasks_mse``."""
        c = self.config
        return self._batch(self.amp, self.phase, c.eval_query, generator, torch.arange(c.num_tasks))

