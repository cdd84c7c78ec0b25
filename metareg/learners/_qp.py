"""Small solvers on the [T, T] Gram matrix of task gradients, shared by the gradient combiners.

Every gradient combiner in metareg is a weighting in disguise: its update is ``w @ J`` for task
weights w [T] that depend on J [T, P] only through the Gram matrix G = J J^T (and, for PCGrad and
GradVac, a random order).  So the cost of a combiner is one pass over J to form G, a few hundred
microseconds of [T, T] arithmetic, and one more pass for ``w @ J``, whatever P is.  The [T, T]
arithmetic runs in float64: G is formed in J's dtype, but the solvers divide and take square
roots of its entries, and float32 loses the small differences that decide an active set.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..errors import ShapeError
from ..ops import gram, pairwise_cosine_norms

__all__ = ["gram", "normalized_gram", "nonneg_qp", "project_simplex", "projection_orders", "solve_spd"]

# Below this the Gram entries of a float32 J are subnormal or zero and carry no direction.
_TINY = 1e-30


def _raw_gram(jacobian: Tensor, cosine: bool, eps: float) -> Tensor:
    # Both ops pick their own path by shape and device (metareg.ops.gram, csrc/cpu/pairwise_cosine.cpp).
    if not cosine:
        return gram(jacobian)
    # The cosine op normalises each row by max(|row|, eps); multiplying back by the same clamped
    # norms recovers the exact inner products, also for rows shorter than eps (zero rows give 0).
    cos, norms = pairwise_cosine_norms(jacobian, eps)
    norms = norms.clamp_min(eps)
    return cos * norms[:, None] * norms[None, :]


def normalized_gram(jacobian: Tensor, *, cosine: bool = False, eps: float = 1e-8) -> tuple[Tensor, float]:
    """The Gram matrix of J [T, P] scaled to a largest diagonal entry of 1, in float64.

    Returns ``(g, s)`` with J J^T = s^2 g, i.e. s is the largest row norm of J; an all-zero J
    gives ``(zeros, 0.0)``.  With ``cosine=True`` the inner products come from
    :func:`metareg.ops.pairwise_cosine` (the conflict detector of PCGrad and GradVac) times the
    row norms.  Gradients too large or too small for J's dtype to square (|J| ~ 1e20 or 1e-20 in
    float32) are rescaled by their largest entry first; that extra pass over J is only paid then.
    """
    if jacobian.dim() != 2:
        raise ShapeError(f"a task Jacobian must be [T, P], got shape {tuple(jacobian.shape)}.")
    g = _raw_gram(jacobian, cosine, eps).double()
    factor = 1.0
    top = float(g.diagonal().max()) if g.numel() else 0.0
    if not math.isfinite(top) or top < _TINY or not bool(torch.isfinite(g).all()):
        amax = float(jacobian.abs().amax()) if jacobian.numel() else 0.0
        if amax == 0.0 or not math.isfinite(amax):
            if amax == 0.0:
                return torch.zeros_like(g), 0.0
            return torch.full_like(g, math.nan), math.nan
        g = _raw_gram(jacobian / amax, cosine, eps).double()
        factor = amax
        top = float(g.diagonal().max())
        if top == 0.0:
            return torch.zeros_like(g), 0.0
    g = (g + g.T) / (2 * top)
    return g, factor * math.sqrt(top)


def projection_orders(t: int, generator: torch.Generator | None = None) -> Tensor:
    """Row i: the T-1 other task indices in a uniformly random order [T, T-1] (long, CPU).

    The order in which PCGrad and GradVac visit the other tasks when correcting task i's
    gradient; one draw of T x T uniforms per step, task i itself sorted last and dropped.
    """
    keys = torch.rand(t, t, generator=generator, dtype=torch.float64)
    keys.fill_diagonal_(2.0)
    return keys.argsort(1)[:, : t - 1]


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of each row of v [..., T] onto the probability simplex.

    Duchi, Shalev-Shwartz, Singer, Chandra. Efficient projections onto the l1-ball. ICML 2008,
    Figure 1: w = max(v - theta, 0) with theta from the largest rho such that the sorted
    u_rho - (sum_{r<=rho} u_r - 1) / rho > 0.
    """
    t = v.shape[-1]
    u = v.sort(dim=-1, descending=True).values
    css = u.cumsum(-1) - 1
    ks = torch.arange(1, t + 1, dtype=v.dtype, device=v.device)
    rho = ((u - css / ks) > 0).sum(-1, keepdim=True).clamp_min(1)
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp_min(0)


def solve_spd(m: Tensor, rhs: Tensor) -> Tensor:
    """Solve m x = rhs for small symmetric positive-definite m [B, T, T] and rhs [B, T, K]
    (or m [T, T] and rhs [T]).

    Gauss-Jordan elimination without pivoting (stable for SPD matrices) in plain elementwise
    torch ops.  For T <= ~30 this beats LAPACK's batched solve, whose per-call overhead includes
    an OpenMP parallel region: on a machine whose cores are busy (2 cores shared with anything
    else) each such region waits for a descheduled thread, ~5 ms per call instead of ~20 us.
    """
    if m.dim() == 2:
        return solve_spd(m[None], rhs.reshape(1, m.shape[0], -1))[0].reshape(rhs.shape)
    t = m.shape[-1]
    if m.device.type == "cpu" and not (m.requires_grad or rhs.requires_grad):
        # the same elimination in numpy: a [T, T] solve is ~30 tiny ops, and numpy's per-op cost
        # (~1 us) is a fifth of torch's dispatch
        return torch.from_numpy(_solve_spd_numpy(m.numpy(), rhs.to(m.dtype).numpy()))
    a = torch.cat([m, rhs], -1)
    for k in range(t):
        row = a[:, k : k + 1, :] / a[:, k : k + 1, k : k + 1]
        a = a - a[:, :, k : k + 1] * row
        a[:, k : k + 1, :] = row
    return a[:, :, t:]


def _solve_spd_numpy(m: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """:func:`solve_spd`'s Gauss-Jordan elimination on numpy arrays m [B, T, T], rhs [B, T, K]."""
    t = m.shape[-1]
    a = np.concatenate([m, rhs], -1)
    for k in range(t):
        row = a[:, k : k + 1, :] / a[:, k : k + 1, k : k + 1]
        a -= a[:, :, k : k + 1] * row
        a[:, k : k + 1, :] = row
    return np.ascontiguousarray(a[:, :, t:])


def _subproblem(a: np.ndarray, c: np.ndarray, free: np.ndarray, v: np.ndarray | None) -> np.ndarray:
    """Minimiser of 1/2 z'Az + c'z over the coordinates in ``free`` (the others held at 0),
    with v'z = 1 unless ``v`` is None; batched over the rows of c [B, T]."""
    t = a.shape[0]
    m = np.where(free[:, :, None] & free[:, None, :], a, 0.0)
    m[:, np.arange(t), np.arange(t)] += ~free
    rhs = np.where(free, -c, 0.0)
    if v is None:
        return _solve_spd_numpy(m, rhs[:, :, None])[:, :, 0]
    # with the multiplier mu of v'z = 1: A_FF z = -c + mu v, so z = z_c + mu z_v for the two
    # solutions below, and mu makes v'z = 1 (v' A_FF^-1 v > 0 for a definite A_FF)
    z = _solve_spd_numpy(m, np.stack([rhs, np.where(free, v, 0.0)], -1))
    z_c, z_v = z[..., 0], z[..., 1]
    mu = (1 - z_c @ v)[:, None] / (z_v @ v)[:, None]
    return z_c + mu * z_v


def nonneg_qp(a: Tensor, c: Tensor, *, simplex: bool = False, reg: float = 1e-12, tol: float = 1e-11) -> Tensor:
    """Exact solution of min_x 1/2 x'Ax + c'x s.t. x >= 0 (and sum(x) = 1 when ``simplex``).

    A [T, T] is symmetric positive semi-definite (a Gram matrix); c is [T] or a batch [B, T] of
    problems sharing A, solved together.  Primal active-set method (Lawson & Hanson, Solving Least
    Squares Problems, 1974, ch. 23, carried over from NNLS to a strictly convex QP): free the
    coordinate with the most negative reduced gradient, solve the equality-constrained subproblem
    on the free set, and step back to the boundary when the subproblem leaves the orthant.  Unlike
    Frank-Wolfe or projected gradient it terminates in finitely many steps (at most a few T in
    practice) with the KKT conditions met to rounding, which is what makes "non-negative inner
    product with every task gradient" hold exactly.

    Scale-free: the method runs on x = z / sqrt(diag A), i.e. on the unit-diagonal (cosine) matrix
    D^-1/2 A D^-1/2, so a Gram matrix whose rows differ in norm by 1e6 (diagonal entries by 1e12)
    is as well posed as one of equal rows.  ``reg`` is added to that unit diagonal (each coordinate
    regularised relative to its own diagonal entry) so duplicate gradients still have a unique
    answer; a zero diagonal entry (a zero gradient) is left unscaled and regularised by ``reg``.
    ``tol`` is relative: a coordinate enters when its reduced gradient is below -tol times the
    scale of the problem's row (|c|, |A^1/2 x| and the multiplier of the simplex constraint, all
    in the scaled coordinates).
    """
    squeeze = c.dim() == 1
    # a few hundred operations on [T, T] numbers: in numpy on the CPU, whatever device A is on
    # (torch's per-op dispatch made the solve cost as much as a pass over an 8 x 1M Jacobian)
    x = _nonneg_qp_numpy(a.detach().cpu().numpy(), c.detach().reshape(-1, c.shape[-1]).to(a.dtype).cpu().numpy(),
                         simplex, reg, tol)
    x = torch.from_numpy(x).to(a.device)
    return x[0] if squeeze else x


def _nonneg_qp_numpy(a: np.ndarray, c: np.ndarray, simplex: bool, reg: float, tol: float) -> np.ndarray:
    """:func:`nonneg_qp`'s active-set method on numpy arrays A [T, T] and c [B, T]."""
    b, t = c.shape
    diag = np.diagonal(a)
    live = diag > 0
    n = np.sqrt(np.where(live, diag, 1.0))
    # the cosine matrix, transformed exactly like c (not clipped to [-1, 1] nor given an exact unit
    # diagonal): UPGrad's c = A e_i must stay in the range of A, or a float32 Gram whose rounding
    # makes an opposed pair's cosine -1 - 1e-8 gets weights ~1/reg
    a = a / n[:, None] / n[None, :] + reg * np.eye(t, dtype=a.dtype)
    c = c / n
    # sum(x) = sum(z / n) = v'z: the simplex becomes a weighted simplex in z
    v = 1 / n if simplex else None
    rows = np.arange(b)
    free = np.zeros((b, t), dtype=bool)
    if simplex:
        k = (0.5 * np.diagonal(a) / v**2 + c / v).argmin(1)  # the best vertex e_k / v_k
        free[rows, k] = True
        x = np.where(free, 1 / v, 0.0)
    else:
        x = np.zeros((b, t), dtype=a.dtype)
    c_scale = np.abs(c).max(1) if t else np.zeros(b)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(3 * t + 10):
            ax = x @ a
            grad = ax + c
            scale = c_scale + np.sqrt(np.maximum((ax * x).sum(1), 0.0))
            if simplex:
                # on the free set the gradient equals mu v, mu the multiplier of v'x = 1
                mu = (grad * v * free).sum(1, keepdims=True) / (v * v * free).sum(1, keepdims=True)
                grad = grad - mu * v
                scale = scale + np.abs(mu[:, 0]) * v.max()
            grad = np.where(free, math.inf, grad)
            j = grad.argmin(1)
            enter = grad[rows, j] < -tol * scale
            if not enter.any():
                break
            free = free.copy()
            free[rows[enter], j[enter]] = True
            for _ in range(t + 1):
                z = _subproblem(a, c, free, v)
                out = free & (z <= 0)
                if not out.any():
                    x = z
                    break
                # walk from x towards z until the first free coordinate reaches 0, then fix it
                # there (by index: a relative threshold on x would drop legitimately small weights)
                ratio = np.where(out, x / np.maximum(x - z, 1e-300), math.inf)
                step = np.minimum(ratio.min(1, keepdims=True), 1.0)
                x = x + step * (z - x)
                free = free & ~(out & (ratio <= step)) & (x > 0)
                x = np.where(free, x, 0.0)
    return x / n
