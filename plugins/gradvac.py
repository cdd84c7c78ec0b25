"""Multi-task combiner ``gradvac``: Gradient Vaccine.

Wang, Tsvetkov, Firat, Cao. Gradient Vaccine: Investigating and Improving Multi-task Optimization
in Massively Multilingual Models. ICLR 2021, Algorithm 1 and eq. (5).  For each task i, visit the
other tasks j in a random order; with phi_ij the cosine of the running g_i' and g_j and phi^_ij an
exponential moving average of it (the similarity goal), whenever phi_ij < phi^_ij set

    g_i' <- g_i' + |g_i'| (phi^_ij sqrt(1 - phi_ij^2) - phi_ij sqrt(1 - phi^_ij^2))
                  / (|g_j| sqrt(1 - phi^_ij^2)) g_j,

which makes the cosine exactly phi^_ij; then phi^_ij <- (1 - beta) phi^_ij + beta phi_ij.  With
phi^ = 0 (the initial goal) the correction is PCGrad's projection.  The update is the mean of
the g_i' (the paper sums).  The goals phi^ are a [num_tasks, num_tasks] buffer indexed by task id.

As in PCGrad every g_i' is a combination of the original rows, so everything runs on [T, T]
coefficients and the Gram matrix (inner products from metareg.ops.pairwise_cosine).  Deviations:
one goal per task pair for the whole shared parameter vector (the paper also keeps one per layer
group); goals are clipped to |phi^| <= 1 - 1e-6, since the correction divides by
sqrt(1 - phi^^2).
"""

import numpy as np
import torch

import metareg
from metareg import SeededGramCombiner


@metareg.config
class GradVacConfig:
    beta: float = metareg.param(0.01, "EMA rate beta of the similarity goals (paper: 1e-2)", gt=0, le=1)
    seed: int = metareg.param(0, "seed of the random visiting order")


@metareg.combiner("gradvac", family="gradient",
                  summary="raise each pair's gradient cosine to an EMA goal (PCGrad when the goal is 0)",
                  paper="Wang et al. Gradient Vaccine. ICLR 2021", config=GradVacConfig)
class GradVac(SeededGramCombiner):
    order_invariant = False
    cosine_gram = True

    def __init__(self, config=None, num_tasks=None):
        super().__init__(config or GradVacConfig(), num_tasks)
        if num_tasks is None:
            raise metareg.errors.ConfigError("gradvac keeps a similarity goal per task pair: build it with num_tasks=M.")
        self.register_buffer("goal", torch.zeros(num_tasks, num_tasks, dtype=torch.float64))

    def projection_order(self, t):
        """The [T, T-1] visiting order of the next call (advances the generator)."""
        return metareg.projection_orders(t, self.generator)

    @torch.no_grad()
    def coefficients(self, g, order, ids):
        """C [T, T] with g_i' = C[i] @ J, from the (scaled) Gram matrix g, the visiting order and
        the task ids of the rows; moves the goals of the visited pairs.  [T, T] arithmetic in
        numpy: in torch its ~100 tiny ops cost as much as a pass over an 8 x 1M Jacobian."""
        gn = g.detach().cpu().numpy()
        t = gn.shape[0]
        order = order.cpu().numpy()
        ids = ids.cpu().numpy()
        coef = np.eye(t, dtype=gn.dtype)
        rows = np.arange(t)
        sq = np.maximum(np.diagonal(gn), 0)
        goal = self.goal.detach().cpu().numpy().astype(gn.dtype)
        lim = 1 - 1e-6
        beta = self.config.beta
        with np.errstate(divide="ignore", invalid="ignore"):
            for k in range(t - 1):
                j = order[:, k]
                cg = coef @ gn
                dot = cg[rows, j]
                ni = np.sqrt(np.maximum((cg * coef).sum(1), 0))
                nj = np.sqrt(sq[j])
                ok = (ni > 0) & (nj > 0)
                phi = np.clip(np.where(ok, dot / np.maximum(ni * nj, 1e-300), 0.0), -1, 1)
                tgt = np.clip(goal[ids, ids[j]], -lim, lim)
                hit = ok & (phi < tgt)
                step = (ni * (tgt * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - tgt**2))
                        / np.maximum(nj * np.sqrt(1 - tgt**2), 1e-300))
                coef[rows, j] += np.where(hit, step, 0.0)
                goal[ids, ids[j]] = (1 - beta) * goal[ids, ids[j]] + beta * phi
        self.goal.copy_(torch.from_numpy(goal))
        return torch.from_numpy(coef).to(g.device)

    def weights(self, gram, scale, task_ids=None):
        t = gram.shape[0]
        ids = self.task_index(t, task_ids, gram.device)
        return self.coefficients(gram, self.projection_order(t), ids).mean(0)


@metareg.hookimpl
def register_algorithms(register):
    register(GradVac)
