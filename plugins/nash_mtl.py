"""Multi-task combiner ``nash_mtl``: multi-task learning as a bargaining game.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya. Multi-Task Learning as a
Bargaining Game. ICML 2022, eq. (2) / Theorem 5.1: the Nash bargaining update is
d = sum_i alpha_i g_i with alpha > 0 solving G alpha = 1 / alpha (elementwise).

The paper reaches alpha through a sequence of convex programs in cvxpy.  metareg does not depend
on cvxpy: G alpha = 1/alpha is exactly the stationarity condition of the strictly convex
phi(alpha) = 1/2 alpha' G alpha - sum_i log alpha_i, a quadratic plus a log barrier (hence
self-concordant), so damped Newton (Boyd & Vandenberghe, Convex Optimization, 9.6) converges
from any positive start, quadratically near the solution, in ~10 [T, T] solves.

The equation is scale-free: with n_i = |g_i|, C = D^-1/2 G D^-1/2 the cosine matrix and
alpha_i = beta_i / n_i, it reads C beta = 1/beta.  Newton runs on that form, so tasks whose
gradient norms differ by 1e6 (G's diagonal by 1e12) are solved as accurately as equal ones (on G
itself a regulariser or tolerance fixed relative to the largest diagonal swamps the small tasks).
A regulariser 1e-10 on C's unit diagonal (each task relative to its own norm) keeps beta finite
where the exact equation has no solution: gradients that cancel with positive weights (g and
-g), whose alphas then multiply a zero combination.  A zero gradient gets weight 0 (any weight
gives the same update).  The paper's extras (updating alpha only every few steps, clipping |d|)
are not applied.
"""

import numpy as np
import torch

import metareg
from metareg import GramCombiner


@metareg.config
class NashMTLConfig:
    max_iter: int = metareg.param(50, "cap on the damped-Newton iterations for alpha", ge=1)


@metareg.combiner("nash_mtl", family="gradient",
                  summary="Nash bargaining solution: d = sum alpha_i g_i with G alpha = 1/alpha",
                  paper="Navon et al. Multi-Task Learning as a Bargaining Game. ICML 2022", config=NashMTLConfig)
class NashMTL(GramCombiner):
    def weights(self, gram, scale, task_ids=None):
        """alpha = beta / (n scale), beta > 0 solving (C + 1e-10 I) beta = 1/beta."""
        g = gram.detach().cpu().numpy()
        live = np.diagonal(g) > 0
        idx = np.flatnonzero(live)
        n = np.sqrt(np.diagonal(g)[idx])
        # [T, T] Newton in numpy: torch's per-op cost, times ~10 iterations, rivals a pass over J
        a = np.clip(g[np.ix_(idx, idx)] / n[:, None] / n[None, :], -1.0, 1.0)
        a[np.diag_indices_from(a)] = 1.0 + 1e-10
        beta = np.ones(len(idx))  # exact when the gradients are orthogonal
        for _ in range(self.config.max_iter):
            grad = a @ beta - 1 / beta
            hess = a + np.diag(beta**-2)
            delta = np.linalg.solve(hess, grad)
            dec = float(grad @ delta)  # squared Newton decrement
            if dec < 1e-20:
                break
            lam = dec**0.5
            # full steps once in the quadratic region; before that the damped step of a
            # self-concordant function, which stays inside beta > 0
            beta = beta - (delta if lam < 0.25 else delta / (1 + lam))
        alpha = np.zeros(g.shape[0])
        alpha[idx] = beta / n
        return torch.from_numpy(alpha / scale).to(gram.device)


@metareg.hookimpl
def register_algorithms(register):
    register(NashMTL)
