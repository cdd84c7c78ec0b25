"""Multi-task combiner ``uncertainty``: homoscedastic-uncertainty loss weighting.

Kendall, Gal, Cipolla. Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry
and Semantics. CVPR 2018, eq. (7): L = sum_i 1/(2 sigma_i^2) L_i + log sigma_i.  We learn
s_i = log sigma_i^2 (the paper's section 3.2 advice: regressing the log-variance avoids dividing
by zero), which turns each term into 1/2 exp(-s_i) L_i + 1/2 s_i, and average over the tasks of
the batch instead of summing so that with s = 0 the scale is half of ``equal``'s, independent of T.
The s_i are parameters of the combiner, a submodule of the learner, so the runner's optimizer
trains them with the network.
"""

import torch
from torch import nn

import metareg
from metareg import Combiner


@metareg.config
class UncertaintyConfig:
    init_log_var: float = metareg.param(0.0, "initial log-variance s_i = log sigma_i^2 of every task")


@metareg.combiner("uncertainty", family="weighting",
                  summary="learned per-task log-variances: 1/2 exp(-s_i) L_i + 1/2 s_i",
                  paper="Kendall, Gal, Cipolla. Multi-Task Learning Using Uncertainty to Weigh Losses. CVPR 2018",
                  config=UncertaintyConfig)
class Uncertainty(Combiner):
    def __init__(self, config=None, num_tasks=None):
        super().__init__(config or UncertaintyConfig(), num_tasks)
        if num_tasks is None:
            raise metareg.errors.ConfigError("uncertainty learns one log-variance per task: build it with num_tasks=M.")
        self.log_var = nn.Parameter(torch.full((num_tasks,), float(self.config.init_log_var)))

    def loss(self, losses, task_ids=None):
        s = self.log_var[self.task_index(losses.shape[0], task_ids, losses.device)].to(losses.dtype)
        return (0.5 * torch.exp(-s) * losses + 0.5 * s).mean()


@metareg.hookimpl
def register_algorithms(register):
    register(Uncertainty)
