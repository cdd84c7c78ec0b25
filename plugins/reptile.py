"""Reptile: first-order meta-learning by moving the initialisation towards adapted weights.

Nichol, Achiam, Schulman. On First-Order Meta-Learning Algorithms. arXiv:1803.02999, 2018.
Algorithm 2 (batched): W_t = SGD_k(theta, task t) for the T tasks of a meta-batch, then
theta <- theta + epsilon * mean_t (W_t - theta).  Here the runner's optimizer applies the step:
``theta.grad = theta - mean_t W_t`` with SGD at lr epsilon reproduces the paper's update exactly.

With a gradient combiner (``--set combiner=pcgrad``) the per-task displacements theta - W_t are the
rows [T, P] it aggregates (their mean is the paper's update); loss-weighting combiners have no
loss to weight here and are refused.  ``adversarial`` adds the task discriminator's gradient (at
theta) to the step.
"""

import torch

import metareg
from metareg import GradientMetaConfig, GradientMetaLearner


@metareg.config
class ReptileConfig(GradientMetaConfig):
    inner_lr: float = metareg.param(0.02, "inner SGD learning rate", gt=0)
    inner_steps: int = metareg.param(5, "inner SGD steps per task (k)", ge=1)
    first_order: bool = metareg.param(True, "Reptile is first-order by construction (must stay true)")

    def __post_init__(self):
        if not self.first_order:
            raise metareg.errors.ConfigError("reptile is first-order by construction; use maml for second order.")


@metareg.algorithm("reptile", kind="meta", family="optimization",
                   summary="first-order: move the init towards task-adapted weights",
                   paper="Nichol, Achiam, Schulman. On First-Order Meta-Learning Algorithms. 2018",
                   config=ReptileConfig, requires={"episodic"}, run_defaults={"optimizer": "sgd", "lr": 1.0})
class Reptile(GradientMetaLearner):
    capabilities = frozenset({"first_order", "fast_weights"})

    def __init__(self, config, context):
        super().__init__(config, context)
        self.meta_objective.require_rows("reptile", "displacements theta - W_t")

    def step(self, batch):
        # Reptile trains on all of a task's data: support and query together
        x = torch.cat([batch.support_x, batch.query_x], 1)
        y = torch.cat([batch.support_y, batch.query_y], 1)
        theta = self.theta.detach()
        mo = self.meta_objective

        # on CPU, task_parallel runs the backbone's chunks of tasks on workers of one thread each
        t = batch.num_tasks
        chunk = self._parallel_chunk(batch) or t
        self.step_workers = self._task_workers(batch) if chunk < t else 1

        def adapt(i: int) -> tuple[torch.Tensor, torch.Tensor]:  # tasks i:i+chunk: losses before, fast weights
            xs, ys = x[i: i + chunk], y[i: i + chunk]
            with torch.no_grad():
                before_t = self.losses(self.predict(theta, xs), ys)
            with torch.enable_grad():
                fast, _ = self.inner_loop(theta, xs, ys, self.config.inner_steps, create_graph=False)
            return before_t, fast.detach()

        parts = metareg.in_order(adapt, range(0, t, chunk), self.step_workers)
        before_t, fast = (torch.cat(v) for v in zip(*parts))
        before = before_t.mean().item()
        out = {}
        if mo.needs_jacobian:
            self.theta.grad, out = mo.aggregate(theta - fast.detach(), before_t, batch.task_ids)
        else:
            self.theta.grad = theta - fast.detach().mean(0)
        if mo.adversarial:
            s = batch.support_x.shape[1]
            feats = self.net.forward(self.theta[: self.net.head_offset], x, 0, self.net.head_from, support_size=s)
            extra, adv = mo.adversarial_loss(feats, batch.task_ids)
            extra.backward()  # adds to theta.grad and fills the discriminator's
            out.update(adv)
        return {"loss": before, **out}


@metareg.hookimpl
def register_algorithms(register):
    register(Reptile)
