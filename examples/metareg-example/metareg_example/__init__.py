"""A third-party metareg plugin: a benchmark and an algorithm, using only metareg's public API."""

import torch

import metareg


@metareg.config
class LinearConfig:
    shots: int = metareg.param(5, "support examples per task", ge=1)
    query: int = metareg.param(15, "query examples per task", ge=1)
    meta_batch: int = metareg.param(16, "tasks per batch", ge=1)


@metareg.benchmark("linear", summary="y = a x + b with a, b ~ N(0, 1)", config=LinearConfig,
                   provides={"episodic"}, metric="mse")
class Linear(metareg.TaskDistribution):
    info = metareg.TaskInfo(input_shape=(1,), output_dim=1, loss="mse", metric="mse")

    def _tasks(self, n, query, g):
        ab = torch.randn(n, 2, 1, 1, generator=g)
        x = torch.randn(n, self.config.shots + query, 1, generator=g)
        y = ab[:, 0] * x + ab[:, 1]
        k = self.config.shots
        return metareg.TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])

    def train_batch(self, generator):
        return self._tasks(self.config.meta_batch, self.config.query, generator)

    def eval_batch(self, generator, num_tasks, split="test"):
        return self._tasks(num_tasks, self.config.query, generator)


@metareg.config
class ClippedMAMLConfig(metareg.GradientMetaConfig):
    clip: float = metareg.param(1.0, "clip each task's inner gradient to this norm", gt=0)


@metareg.algorithm("clipped_maml", kind="meta", family="optimization", summary="MAML with clipped inner gradients",
                   paper="(example plugin)", config=ClippedMAMLConfig, requires={"episodic"})
class ClippedMAML(metareg.GradientMetaLearner):
    def inner_update(self, fast, grads, lr):
        scale = (self.config.clip / grads.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
        return super().inner_update(fast, grads * scale, lr)


@metareg.hookimpl
def register_benchmarks(register):
    register(Linear)


@metareg.hookimpl
def register_algorithms(register):
    register(ClippedMAML)
