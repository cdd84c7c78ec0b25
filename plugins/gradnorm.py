"""Multi-task combiner ``gradnorm``: gradient normalisation.

Chen, Badrinarayanan, Lee, Rabinovich. GradNorm: Gradient Normalization for Adaptive Loss
Balancing in Deep Multitask Networks. ICML 2018, eqs. (1)-(2) and Algorithm 1.  The update of the
shared parameters is sum_i w_i(t) g_i / T with the current task weights w(t) (sum_i w_i = T, so
equal weights give ``equal``).  Then the weights take one step on

    L_grad = sum_i | G_i - mean_j(G_j) * r_i^alpha |,   G_i = || w_i g_i ||,
    r_i = (L_i(t) / L_i(0)) / mean_j (L_j(t) / L_j(0)),

with the target mean(G) r_i^alpha held constant (the paper's section 3.2), and are renormalised
to sum to T (over the tasks of the batch, so tasks not in it keep their weights).

Deviations, both deliberate:
* the paper takes the gradients w.r.t. the last shared layer to save backward passes; this
  combiner is handed the full task Jacobian of the shared parameters anyway, so G_i are the norms
  of its rows, which is the quantity the last-layer norms approximate;
* the step is taken on log w_i, with dL_grad/dlog w_i = sign(G_i - target_i) G_i divided by
  mean(G) (a constant in the paper's treatment).  Plain steps on w with the raw gradient
  sign(.) |g_i| depend on the gradients' scale, and with tasks 100x apart either crawl or
  overshoot zero; in log space the step is relative, w stays positive, and the fixed point
  (G_i = target_i) is the paper's.
"""

import torch

import metareg
from metareg import Combiner


@metareg.config
class GradNormConfig:
    alpha: float = metareg.param(1.5, "asymmetry alpha: how strongly slow tasks are favoured (paper: 1.5 on NYUv2)", ge=0)
    lr: float = metareg.param(0.025, "step size of log w on the normalised L_grad", gt=0)


@metareg.combiner("gradnorm", family="gradient",
                  summary="task weights adapted so that weighted gradient norms track the relative training rates",
                  paper="Chen et al. GradNorm: Gradient Normalization for Adaptive Loss Balancing. ICML 2018",
                  config=GradNormConfig)
class GradNorm(Combiner):
    needs_jacobian = True

    def __init__(self, config=None, num_tasks=None):
        super().__init__(config or GradNormConfig(), num_tasks)
        if num_tasks is None:
            raise metareg.errors.ConfigError("gradnorm keeps one weight per task: build it with num_tasks=M.")
        self.register_buffer("weights", torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer("initial_loss", torch.full((num_tasks,), float("nan"), dtype=torch.float64))

    def aggregate(self, jacobian, losses=None, task_ids=None):
        if losses is None:
            raise metareg.errors.IncompatibleError("gradnorm needs the task losses (its training rates L_i(t)/L_i(0)); "
                                                   "call aggregate(jacobian, losses).")
        t = jacobian.shape[0]
        ids = self.task_index(t, task_ids, self.weights.device)
        w = self.weights[ids].double()
        out = (w / t).to(jacobian.dtype).to(jacobian.device) @ jacobian
        norms = torch.linalg.vector_norm(jacobian, dim=1).double()
        if not bool(torch.isfinite(norms).all()):
            # float32 squares overflow for |g| ~ 1e19: redo in float64 (slower, so only then)
            norms = torch.linalg.vector_norm(jacobian, dim=1, dtype=torch.float64)
        norms = norms.to(w.device)
        self._update(ids, w, norms, losses.detach().double().to(w.device))
        return out

    @torch.no_grad()
    def _update(self, ids, w, norms, losses):
        first = torch.isnan(self.initial_loss[ids])
        if bool(first.any()):
            self.initial_loss[ids[first]] = losses[first].to(self.initial_loss.dtype)
        l0 = self.initial_loss[ids].double()
        ratio = torch.where(l0 > 0, losses / l0.clamp_min(1e-300), 1.0)
        mean_ratio = ratio.mean()
        rate = ratio / mean_ratio if mean_ratio > 0 else torch.ones_like(ratio)
        g = w * norms
        g_mean = g.mean()
        if not bool(torch.isfinite(g_mean)) or g_mean <= 0:
            return
        target = g_mean * rate ** self.config.alpha
        step = torch.sign(g - target) * g / g_mean
        new = w * torch.exp(-self.config.lr * step)
        new = new * (w.sum() / new.sum())
        self.weights[ids] = new.to(self.weights.dtype)


@metareg.hookimpl
def register_algorithms(register):
    register(GradNorm)
