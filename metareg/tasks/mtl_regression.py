"""Multi-task regression benchmarks: the GradNorm toy and a family with tunable task relatedness.

Both have M fixed training tasks (a head each in a multi-task learner; ``task_ids`` in every
training batch), held-out tasks drawn from the same family for few-shot evaluation, and
:meth:`train_tasks_batch`: fresh samples of the M training tasks, for the in-distribution error
on the tasks trained on (``train_tasks_mse`` in a run's summary).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ..config import config, param
from ..errors import ConfigError
from .base import TaskBatch, TaskDistribution, TaskInfo

__all__ = ["GradNormToyConfig", "GradNormToy", "RelatednessConfig", "Relatedness", "fixed_task_ids", "check_meta_batch"]


def fixed_task_ids(num_tasks: int, meta_batch: int, generator: torch.Generator) -> Tensor:
    """All M training tasks in order, or a random subset of ``meta_batch`` of them."""
    if meta_batch >= num_tasks:
        return torch.arange(num_tasks)
    return torch.randperm(num_tasks, generator=generator)[:meta_batch]


def check_meta_batch(cfg) -> None:
    """A batch of fixed tasks holds each at most once."""
    if cfg.meta_batch > cfg.num_tasks:
        raise ConfigError(f"meta_batch ({cfg.meta_batch}) must not exceed num_tasks ({cfg.num_tasks}).")


class _FixedRegression(TaskDistribution):
    """Tasks are rows of per-task parameters; subclasses implement :meth:`_draw` (task parameters
    for n tasks) and :meth:`_targets` (y for x [T, N, D] under task parameters)."""

    def _inputs(self, t: int, n: int, g: torch.Generator) -> Tensor:
        return torch.randn(t, n, self.config.input_dim, generator=g)

    def _make(self, params, n_support: int, n_query: int, g: torch.Generator, ids: Tensor | None) -> TaskBatch:
        t = ids.shape[0] if ids is not None else self._count(params)
        x = self._inputs(t, n_support + n_query, g)
        y = self._targets(params, x, g)
        return TaskBatch(x[:, :n_support], y[:, :n_support], x[:, n_support:], y[:, n_support:], ids)

    def train_batch(self, generator: torch.Generator) -> TaskBatch:
        c = self.config
        ids = fixed_task_ids(c.num_tasks, c.meta_batch, generator)
        return self._make(self._index(self.tasks, ids), c.shots, c.query, generator, ids)

    def eval_batch(self, generator: torch.Generator, num_tasks: int, split: str = "test") -> TaskBatch:
        return self._make(self._draw(num_tasks, generator), self.config.shots, self.config.eval_query, generator, None)

    def train_tasks_batch(self, generator: torch.Generator) -> TaskBatch:
        """Fresh samples (``eval_query`` per task) of all M training tasks, with their ids."""
        c = self.config
        ids = torch.arange(c.num_tasks)
        return self._make(self.tasks, 0, c.eval_query, generator, ids)

    def _index(self, params, ids):
        return tuple(p[ids] for p in params)

    @staticmethod
    def _count(params) -> int:
        return params[-1].shape[0]


@config
class GradNormToyConfig:
    num_tasks: int = param(2, "training tasks T (the paper: 2 and 10)", ge=1)
    meta_batch: int = param(0, "tasks per training batch (0: all of them)", ge=0)
    scale_max: float = param(100.0, "largest task scale sigma; scales are log-spaced from 1 to it", ge=1)
    input_dim: int = param(250, "input dimension (paper: 250)", ge=1)
    output_dim: int = param(100, "output dimension of every task (paper: 100)", ge=1)
    shots: int = param(10, "support examples per held-out task (K)", ge=1)
    query: int = param(22, "further training examples per task and step (support + query are used)", ge=1)
    eval_query: int = param(100, "query examples per held-out task, and test examples per training task", ge=1)
    task_seed: int = param(1234, "seed of B and of the training tasks' eps_i (fixed across runs)")

    def __post_init__(self) -> None:
        check_meta_batch(self)


class GradNormToy(_FixedRegression):
    """Chen et al. 2018, section 4: task i's target is sigma_i tanh((B + eps_i) x) with x in
    R^250, B [100, 250] with entries ~ N(0, 10) shared by all tasks, eps_i with entries ~ N(0, 3.5)
    per task, and scales sigma_i differing by ``scale_max`` (log-spaced, so T = 2 gives the paper's
    1 and 100).  x ~ N(0, I).  Held-out tasks: a new eps and sigma log-uniform in [1, scale_max].
    As in the paper the products (B + eps_i) x have standard deviation ~58, so tanh is mostly
    saturated: each output is nearly sigma_i times the sign of a random hyperplane."""

    def __init__(self, config: GradNormToyConfig) -> None:
        super().__init__(config)
        c = config
        if c.meta_batch == 0:
            self.config = config = dataclasses.replace(c, meta_batch=c.num_tasks)
        g = torch.Generator().manual_seed(config.task_seed)
        self.b = torch.randn(config.output_dim, config.input_dim, generator=g) * math.sqrt(10.0)
        eps = torch.randn(config.num_tasks, config.output_dim, config.input_dim, generator=g) * math.sqrt(3.5)
        t = config.num_tasks
        sigma = torch.logspace(0, math.log10(config.scale_max), t) if t > 1 else torch.ones(1)
        self.tasks = (eps, sigma)
        self.info = TaskInfo(input_shape=(config.input_dim,), output_dim=config.output_dim, loss="mse", metric="mse",
                             num_train_tasks=t, default_backbone="mlp",
                             backbone_options=(("hidden", (100, 100, 100)),))

    @property
    def sigmas(self) -> Tensor:
        return self.tasks[1]

    def _draw(self, n: int, g: torch.Generator):
        c = self.config
        eps = torch.randn(n, c.output_dim, c.input_dim, generator=g) * math.sqrt(3.5)
        sigma = torch.exp(torch.rand(n, generator=g) * math.log(c.scale_max))
        return eps, sigma

    def _targets(self, params, x, g):
        eps, sigma = params
        return sigma.view(-1, 1, 1) * torch.tanh(torch.einsum("toi,tni->tno", self.b + eps, x))


@config
class RelatednessConfig:
    rho: float = param(0.5, "task relatedness: weight of the shared component (the private one has sqrt(1-rho^2))",
                       ge=0, le=1)
    num_tasks: int = param(10, "training tasks M", ge=1)
    meta_batch: int = param(0, "tasks per training batch (0: all of them)", ge=0)
    input_dim: int = param(8, "input dimension D", ge=1)
    hidden: int = param(32, "hidden units of the random target networks", ge=1)
    noise: float = param(0.1, "standard deviation of the observation noise on targets", ge=0)
    train_size: int = param(40, "fixed training examples per training task (0: fresh samples every step)", ge=0)
    shots: int = param(10, "support examples per held-out task (K)", ge=1)
    query: int = param(10, "further training examples per task and step (support + query are used)", ge=1)
    eval_query: int = param(200, "query examples per held-out task, and test examples per training task", ge=1)
    task_seed: int = param(1234, "seed of the shared component and the training tasks (fixed across runs)")

    def __post_init__(self) -> None:
        check_meta_batch(self)
        if self.train_size and self.train_size < self.shots + self.query:
            raise ConfigError(f"train_size ({self.train_size}) must hold shots + query = {self.shots + self.query} "
                              "examples per step; raise train_size or lower shots/query (train_size=0: fresh samples).")


class Relatedness(_FixedRegression):
    """Regression tasks whose relatedness is a parameter.  Task t's target is

        f_t(x) = rho g_0(x) + sqrt(1 - rho^2) g_t(x) + noise,

    with g_0 shared by every task (training and held-out) and g_t private, each a random
    one-hidden-layer tanh network D -> ``hidden`` -> 1 scaled to unit variance over x ~ N(0, I),
    so every task has unit signal variance and two tasks' targets correlate by rho^2: rho = 1 is
    one task M times, rho = 0 are M unrelated tasks.  Training tasks have a fixed training set of
    ``train_size`` examples each (each step draws shots + query of them); their test error is on
    fresh samples.  Held-out tasks draw a new g_t with the same g_0 and rho."""

    def __init__(self, config: RelatednessConfig) -> None:
        super().__init__(config)
        c = config
        if c.meta_batch == 0:
            self.config = config = dataclasses.replace(c, meta_batch=c.num_tasks)
        g = torch.Generator().manual_seed(config.task_seed)
        self.probe = torch.randn(2048, config.input_dim, generator=g)
        self.shared_fn = self._networks(1, g)
        self.tasks = self._networks(config.num_tasks, g)
        self.train_x = self.train_y = None
        if config.train_size:
            self.train_x = torch.randn(config.num_tasks, config.train_size, config.input_dim, generator=g)
            self.train_y = self._targets(self.tasks, self.train_x, g)
        self.info = TaskInfo(input_shape=(config.input_dim,), output_dim=1, loss="mse", metric="mse",
                             num_train_tasks=config.num_tasks, default_backbone="mlp")

    def _networks(self, n: int, g: torch.Generator):
        """n random networks (W [n, H, D], b [n, H], v [n, H]) scaled to unit output variance."""
        d, h = self.config.input_dim, self.config.hidden
        w = torch.randn(n, h, d, generator=g) / math.sqrt(d) * 2.0
        b = torch.randn(n, h, generator=g) * 0.5
        v = torch.randn(n, h, generator=g)
        out = self._apply((w, b, v), self.probe.expand(n, -1, -1))
        return w, b, v / out.std(1, keepdim=True).squeeze(-1).clamp_min(1e-8)

    @staticmethod
    def _apply(net, x):
        w, b, v = net
        return (torch.tanh(x @ w.transpose(1, 2) + b.unsqueeze(1)) @ v.unsqueeze(-1))  # [T, N, 1]

    def _draw(self, n: int, g: torch.Generator):
        return self._networks(n, g)

    def _targets(self, params, x, g):
        rho = self.config.rho
        shared = self._apply(self.shared_fn, x.reshape(1, -1, x.shape[-1])).view(*x.shape[:2], 1)
        y = rho * shared + math.sqrt(max(0.0, 1 - rho * rho)) * self._apply(params, x)
        if self.config.noise:
            y = y + self.config.noise * torch.randn(y.shape, generator=g)
        return y

    def clean_targets(self, params, x):
        """Noise-free f_t(x) (for tests and oracles)."""
        rho = self.config.rho
        shared = self._apply(self.shared_fn, x.reshape(1, -1, x.shape[-1])).view(*x.shape[:2], 1)
        return rho * shared + math.sqrt(max(0.0, 1 - rho * rho)) * self._apply(params, x)

    def train_batch(self, generator: torch.Generator) -> TaskBatch:
        c = self.config
        if not c.train_size:
            return super().train_batch(generator)
        ids = fixed_task_ids(c.num_tasks, c.meta_batch, generator)
        n = c.shots + c.query
        pick = torch.rand(len(ids), c.train_size, generator=generator).argsort(1)[:, :n]
        x = torch.gather(self.train_x[ids], 1, pick.unsqueeze(-1).expand(-1, -1, c.input_dim))
        y = torch.gather(self.train_y[ids], 1, pick.unsqueeze(-1))
        return TaskBatch(x[:, : c.shots], y[:, : c.shots], x[:, c.shots:], y[:, c.shots:], ids)
