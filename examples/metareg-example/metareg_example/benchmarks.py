"""A benchmark: linear regression tasks y = w . x + b, whose input size depends on its config."""

import torch

import metareg


@metareg.config
class LinearConfig:
    dim: int = metareg.param(1, "input dimension of every task", ge=1)
    shots: int = metareg.param(5, "support examples per task", ge=1)
    query: int = metareg.param(15, "query examples per task", ge=1)
    meta_batch: int = metareg.param(16, "tasks per batch", ge=1)


@metareg.benchmark("linear", summary="y = w . x + b with w, b ~ N(0, 1); --set dim=D for D inputs",
                   config=LinearConfig, provides={"episodic"}, metric="mse")
class Linear(metareg.TaskDistribution):
    @property
    def info(self):  # the input size comes from the config, so info is computed, not a constant
        return metareg.TaskInfo(input_shape=(self.config.dim,), output_dim=1, loss="mse", metric="mse")

    def _tasks(self, n, query, g):
        w = torch.randn(n, 1, self.config.dim, generator=g)
        b = torch.randn(n, 1, 1, generator=g)
        x = torch.randn(n, self.config.shots + query, self.config.dim, generator=g)
        y = (x * w).sum(-1, keepdim=True) + b
        k = self.config.shots
        return metareg.TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])

    def train_batch(self, generator):
        return self._tasks(self.config.meta_batch, self.config.query, generator)

    def eval_batch(self, generator, num_tasks, split="test"):
        return self._tasks(num_tasks, self.config.query, generator)
