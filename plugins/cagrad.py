"""Multi-task combiner ``cagrad``: conflict-averse gradient descent, any number of tasks.

Liu, Liu, Jin, Stone, Liu. Conflict-Averse Gradient Descent for Multi-task Learning. NeurIPS 2021,
eqs. (2)-(3) and Algorithm 1: the update d maximises the worst task improvement min_i g_i . d in
the ball |d - g0| <= c |g0| around the mean gradient g0.  Its dual is

    min_{w in simplex} F(w) = g_w . g0 + c |g0| |g_w|,   g_w = sum_i w_i g_i,

and d = g0 + (c |g0| / |g_w|) g_w.  In Gram terms g_w . g0 = w' G 1 / T and |g_w|^2 = w' G w, so
the dual is a T-variable problem on the simplex for any T (LibMTL's CAGrad hard-codes three
tasks).  It is solved by spectral projected gradient (Birgin, Martinez, Raydan 2000: Barzilai-
Borwein steps, Armijo backtracking, Euclidean projection onto the simplex), the role scipy's
SLSQP plays in the official code, on |g_w| smoothed as sqrt(w'Gw + 1e-12) like that code's
+1e-8.  When g_w = 0 at the optimum (a task gradient pointing against the mean) d = g0.  The
official code's optional rescaling d / (1 + c^2) is not applied (the paper's Algorithm 1 has none).
"""

import torch

import metareg
from metareg import GramCombiner


@metareg.config
class CAGradConfig:
    c: float = metareg.param(0.4, "radius c of the ball around the mean gradient (paper: 0.4 on NYUv2)", ge=0)
    max_iter: int = metareg.param(1000, "cap on the projected-gradient iterations of the dual (it stops earlier once stationary; near-degenerate duals need hundreds)", ge=1)


@metareg.combiner("cagrad", family="gradient",
                  summary="maximise the worst task's improvement within a ball around the mean gradient",
                  paper="Liu et al. Conflict-Averse Gradient Descent for Multi-task Learning. NeurIPS 2021",
                  config=CAGradConfig)
class CAGrad(GramCombiner):
    def weights(self, gram, scale, task_ids=None):
        g = gram
        t = g.shape[0]
        b = g.sum(1) / t  # g_i . g0
        g0_sq = float(b.sum()) / t
        uniform = torch.full((t,), 1.0 / t, dtype=g.dtype, device=g.device)
        if g0_sq <= 0 or self.config.c == 0:
            return uniform
        r = self.config.c * g0_sq ** 0.5
        w = self.dual(g, b, r)
        gw = float(w @ g @ w) ** 0.5 if float(w @ g @ w) > 0 else 0.0
        if gw < 1e-9:
            return uniform
        return uniform + (r / gw) * w

    def dual(self, g, b, r):
        """argmin over the simplex of b'w + r sqrt(w'Gw)."""
        t = g.shape[0]

        def f_grad(w):
            gw = g @ w
            q = (w @ gw + 1e-12).sqrt()
            return b @ w + r * q, b + r * gw / q

        w = torch.full((t,), 1.0 / t, dtype=g.dtype, device=g.device)
        f, grad = f_grad(w)
        step = 1.0
        for _ in range(self.config.max_iter):
            d = metareg.project_simplex(w - step * grad) - w
            slope = float(grad @ d)
            if slope > -1e-14:
                break  # w is stationary on the simplex
            lam = 1.0
            for _ in range(30):
                w_new = w + lam * d
                f_new, grad_new = f_grad(w_new)
                if float(f_new) <= float(f) + 1e-4 * lam * slope:
                    break
                lam *= 0.5
            s, y = w_new - w, grad_new - grad
            sy = float(s @ y)
            step = min(max(float(s @ s) / sy, 1e-6), 1e6) if sy > 0 else 1e6
            w, f, grad = w_new, f_new, grad_new
        return w


@metareg.hookimpl
def register_algorithms(register):
    register(CAGrad)
