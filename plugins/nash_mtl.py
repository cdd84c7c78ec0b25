"""Multi-task combiner ``nash_mtl``: multi-task learning as a bargaining game.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya. Multi-Task Learning as a
Bargaining Game. ICML 2022, eq. (2) / Theorem 5.1: the Nash bargaining update is
d = sum_i alpha_i g_i with alpha > 0 solving G alpha = 1 / alpha (elementwise).

The paper reaches alpha through a sequence of convex programs in cvxpy.  metareg does not depend
on cvxpy: G alpha = 1/alpha is exactly the stationarity condition of the strictly convex
phi(alpha) = 1/2 alpha' G alpha - sum_i log alpha_i, a quadratic plus a log barrier (hence
self-concordant), so damped Newton (Boyd & Vandenberghe, Convex Optimization, 9.6) converges
from any positive start, quadratically near the solution, in ~10 [T, T] solves.  It runs on G
scaled to unit largest diagonal, G = s^2 G^, and uses alpha = alpha^ / s (so |d| does not depend
on the gradients' scale, as in the paper).  A regulariser 1e-10 of the largest diagonal keeps
alpha finite where the exact equation has no solution: a zero gradient, or gradients that cancel
with positive weights (g and -g), whose alphas then multiply a zero combination.  The paper's extras
(updating alpha only every few steps, clipping |d|) are not applied.
"""

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
        """alpha = alpha^ / scale, alpha^ > 0 solving (G^ + 1e-10 I) alpha^ = 1/alpha^."""
        g = gram
        t = g.shape[0]
        eye = torch.eye(t, dtype=g.dtype, device=g.device)
        a = g + 1e-10 * eye
        alpha = a.diagonal().rsqrt()  # exact when the gradients are orthogonal
        for _ in range(self.config.max_iter):
            grad = a @ alpha - 1 / alpha
            hess = a + torch.diag(alpha.pow(-2))
            delta = metareg.solve_spd(hess, grad)
            dec = float(grad @ delta)  # squared Newton decrement
            if dec < 1e-20:
                break
            lam = dec ** 0.5
            # full steps once in the quadratic region; before that the damped step of a
            # self-concordant function, which stays inside alpha > 0
            alpha = alpha - (delta if lam < 0.25 else delta / (1 + lam))
        return alpha / scale


@metareg.hookimpl
def register_algorithms(register):
    register(NashMTL)
