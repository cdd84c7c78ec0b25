"""Multi-task combiner ``cagrad``: conflict-averse gradient descent, any number of tasks.

Liu, Liu, Jin, Stone, Liu. Conflict-Averse Gradient Descent for Multi-task Learning. NeurIPS 2021,
eqs. (2)-(3) and Algorithm 1: the update d maximises the worst task improvement min_i g_i . d in
the ball |d - g0| <= c |g0| around the mean gradient g0.  Its dual is

    min_{w in simplex} F(w) = g_w . g0 + c |g0| |g_w|,   g_w = sum_i w_i g_i,

and d = g0 + (c |g0| / |g_w|) g_w.  The official code solves that dual with scipy's SLSQP (and
LibMTL hard-codes three tasks); a first-order solver stalls once task gradients differ in norm by
1e4 or more, because the optimum then sits on the small gradients and F's curvature differs by
the square of the ratio between coordinates.  This solves the primal exactly instead, for any T,
as a parametric QP in the worst-task level t:

    d(t) = projection of g0 onto {d : g_i . d >= t for all i} = g0 + sum_i mu_i g_i,  mu >= 0,

whose distance |d(t) - g0| grows with t; the answer is d(t*) with |d(t*) - g0| = c |g0|.  On a
fixed active set S the multipliers are linear in t (G_SS mu_S = t 1 - G_S 1/T), so the path is
followed exactly from t = min_i g_i . g0 (where d = g0) through the t at which a multiplier
reaches 0 or another constraint becomes active, to the root of |d(t) - g0|^2 = (c|g0|)^2, a
quadratic on the last piece (homotopy / parametric active set, as LARS follows the lasso path).
The [T, T] systems are solved on the cosine matrix D^-1/2 G D^-1/2 with each constraint scaled by
its own gradient norm, so the answer is exact at any ratio of task-gradient norms.  d is
returned as weights 1/T + mu.  A zero task gradient caps t at 0 (its improvement is always 0);
when g0 = 0 the ball is a point and d = g0.  The official code's optional rescaling d / (1 + c^2)
is not applied (the paper's Algorithm 1 has none).
"""

import math

import numpy as np
import torch

import metareg
from metareg import GramCombiner

# A constraint whose gradient is within this many units of J's rounding (as a squared sine) of the
# span of the active ones does not enter: the level cannot rise past the point where it becomes
# active, and solving on from there would take the direction from rounding in the Gram matrix
# and weights ~1/sqrt(that sine) that w @ J cannot resolve (an opposed pair in float32).  A
# regulariser on the diagonal instead, as in nonneg_qp, would move a nearly opposed pair's answer
# by ~reg / (1 - |cos|) of |g0| even where the data resolve it.
_DEPENDENT_ULPS = 1e3


@metareg.config
class CAGradConfig:
    c: float = metareg.param(0.4, "radius c of the ball around the mean gradient (paper: 0.4 on NYUv2)", ge=0)


@metareg.combiner("cagrad", family="gradient",
                  summary="maximise the worst task's improvement within a ball around the mean gradient",
                  paper="Liu et al. Conflict-Averse Gradient Descent for Multi-task Learning. NeurIPS 2021",
                  config=CAGradConfig)
class CAGrad(GramCombiner):
    def aggregate(self, jacobian, losses=None, task_ids=None):
        g, scale = metareg.normalized_gram(jacobian)
        if scale == 0 or math.isnan(scale):
            return jacobian.mean(0)  # all-zero J: zero update; non-finite J: let the NaN show
        # the Gram matrix is only as precise as J's dtype, which decides what counts as dependent
        w = self.weights(g, scale, task_ids, eps=torch.finfo(jacobian.dtype).eps)
        return w.to(device=jacobian.device, dtype=jacobian.dtype) @ jacobian

    def weights(self, gram, scale, task_ids=None, eps=torch.finfo(torch.float64).eps):
        """w [T] = 1/T + mu, d = w @ J; ``eps``: the rounding unit of the J that ``gram`` came from."""
        g = gram.detach().cpu().numpy()
        t = g.shape[0]
        b = g.sum(1) / t  # g_i . g0
        g0_sq = float(b.sum()) / t
        w = np.full(t, 1.0 / t)
        if g0_sq > 0 and self.config.c > 0:
            w = w + self.multipliers(g, b, self.config.c * math.sqrt(g0_sq), _DEPENDENT_ULPS * eps)
        return torch.from_numpy(w).to(gram.device)

    @staticmethod
    def multipliers(g, b, r, dependent):
        """mu [T] >= 0 with d = g0 + sum_i mu_i g_i the CAGrad update, for G [T, T] (numpy),
        b = G 1/T, the radius r = c |g0|, and the squared sine below which a gradient counts as
        dependent on the active ones."""
        t = g.shape[0]
        mu = np.zeros(t)
        live = np.diagonal(g) > 0
        cap = math.inf if live.all() else 0.0  # a zero gradient: min_i g_i . d <= 0
        idx = np.flatnonzero(live)
        n = np.sqrt(np.diagonal(g)[idx])
        # in the scaled variables nu = n mu the active rows read (C nu)_k = t v_k - beta_k
        cos = np.clip(g[np.ix_(idx, idx)] / n[:, None] / n[None, :], -1.0, 1.0)
        cos[np.diag_indices_from(cos)] = 1.0
        v = 1 / n
        beta = b[idx] / n  # u_k . g0
        level = float(b[idx].min())
        if level >= cap:
            return mu  # d = g0 already improves every task by at least the cap
        active = np.zeros(len(idx), dtype=bool)
        active[b[idx].argmin()] = True
        nu = np.zeros(len(idx))
        for _ in range(3 * len(idx) + 10):
            s_idx = np.flatnonzero(active)
            m = cos[np.ix_(s_idx, s_idx)]
            sol = np.linalg.solve(m, np.stack([level * v[s_idx] - beta[s_idx], v[s_idx]], 1))
            nu = np.zeros(len(idx))
            y = np.zeros(len(idx))
            nu[s_idx] = np.maximum(sol[:, 0], 0.0)
            y[s_idx] = sol[:, 1]
            c_nu, c_y = cos @ nu, cos @ y
            # |d(level + s) - g0|^2 = |nu|_C^2 + 2 s v'nu + s^2 v'y; v'nu = sum(mu) >= 0, so the
            # positive root is computed without cancellation
            rem = max(r * r - float(nu @ c_nu), 0.0)
            lin, quad = float(v @ nu), float(v @ y)
            disc = lin * lin + quad * rem  # < 0 only where rounding made cos indefinite
            den = lin + math.sqrt(disc) if disc >= 0 else 0.0
            s_root = 0.0 if rem == 0 else rem / den if den > 0 else math.inf
            with np.errstate(divide="ignore", invalid="ignore"):
                leave = np.where(active & (y < 0), nu / -y, math.inf)
                slope = c_y - v  # d/ds of the scaled slack beta_k + (C nu)_k - t v_k
                slack = np.maximum(beta + c_nu - level * v, 0.0)
                enter = np.where(~active & (slope < 0), slack / -slope, math.inf)
            k_leave, k_enter = int(leave.argmin()), int(enter.argmin())
            step = min(s_root, cap - level, leave[k_leave], enter[k_enter])
            if not math.isfinite(step):
                break
            if step >= s_root or step >= cap - level:
                nu = nu + step * y
                break
            if leave[k_leave] <= enter[k_enter]:
                active[k_leave] = False
            else:
                col = cos[s_idx, k_enter]
                if 1.0 - col @ np.linalg.solve(m, col) <= dependent:
                    nu = nu + step * y
                    break
                active[k_enter] = True
            level += step
        mu[idx] = np.maximum(nu, 0.0) / n
        return mu if np.isfinite(mu).all() else np.zeros(t)


@metareg.hookimpl
def register_algorithms(register):
    register(CAGrad)
