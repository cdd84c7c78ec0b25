"""The Gram-based combiners at extreme scales: task gradients whose norms differ by 1e0 to 1e6.

Each combiner is checked against an independent exact solution of its paper's definition,
computed from J itself in 50-digit arithmetic (mpmath) by enumerating active sets, which is
feasible for T <= 4:

* MGDA (Sener & Koltun 2018, eq. 3): the min-norm point of the convex hull of the rows;
* UPGrad (Quinton & Rey 2024, eq. 6): the mean of the projections of the rows onto the dual cone
  {x : J x >= 0};
* CAGrad (Liu et al. 2021, eqs. 2-3): d = g0 + c|g0| g_w / |g_w| for the minimiser w of the dual
  g_w . g0 + c|g0||g_w| over the simplex;
* Nash-MTL (Navon et al. 2022, eq. 2): alpha > 0 with G alpha = 1/alpha (unique: the stationary
  point of a strictly convex function), checked by its residual in 50 digits;
* PCGrad / GradVac need no solver: their [T, T] recurrence is checked against the paper's loop.

Errors are measured relative to each task's own gradient norm (|g_k . (d - d_ref)| <= tol |g_k| S,
S the natural scale of d): an error relative to the largest gradient alone is what let a
regulariser fixed relative to G's largest diagonal hide a conflict with a task 1e4 times smaller.
"""

import itertools
import math

import pytest
import torch
from combiner_util import make, pcgrad_oracle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metareg

mpmath = pytest.importorskip("mpmath")  # a dependency of sympy, hence of torch
mp = mpmath.mp

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
RATIOS = [1e0, 1e2, 1e4, 1e6]


@st.composite
def scaled_jacobians(draw, min_tasks=2, max_tasks=4, dtype=torch.float64, ratios=RATIOS):
    """A [T, P] Jacobian (P >= T, so generic rows are independent) whose row norms span exactly
    ``ratio``: one row of norm 1, one of 1/ratio, the rest log-uniform between, in random order,
    times an overall scale.  Directions are Gaussian, optionally pushed against their mean so
    that most pairs conflict."""
    t = draw(st.integers(min_tasks, max_tasks))
    p = t + draw(st.integers(0, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    ratio = draw(st.sampled_from(ratios))
    overall = draw(st.sampled_from([1e-6, 1.0, 1e6]))
    shift = draw(st.sampled_from([0.0, 0.8]))
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(t, p, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    u = u - shift * u.mean(0)
    u = u / u.norm(dim=1, keepdim=True)
    e = torch.rand(t, generator=g, dtype=torch.float64)
    e[0], e[1] = 0.0, 1.0
    e = e[torch.randperm(t, generator=g)]
    return (u * ratio ** -e[:, None] * overall).to(dtype)


# -- 50-digit references ----------------------------------------------------------------------------

def _rows(j):
    return [[mp.mpf(x) for x in row] for row in j.double().tolist()]


def _dot(a, b):
    return mp.fsum(x * y for x, y in zip(a, b))


def _gram(rows):
    return [[_dot(a, b) for b in rows] for a in rows]


def _solve(m, rhs):
    """m^-1 rhs for a small square list-of-lists m, or None when m is singular."""
    try:
        return list(mpmath.lu_solve(mpmath.matrix(m), mpmath.matrix(rhs)))
    except ZeroDivisionError:
        return None


def _combine(w, rows):
    return [mp.fsum(wk * r[i] for wk, r in zip(w, rows)) for i in range(len(rows[0]))]


def _subsets(t, empty=False):
    for size in range(0 if empty else 1, t + 1):
        yield from itertools.combinations(range(t), size)


def mgda_reference(rows):
    """Min-norm point of the hull: on the face of support S the optimum has G_SS a = lambda 1,
    i.e. a ~ G_SS^-1 1; the best feasible (a >= 0) candidate over all faces is the optimum."""
    g = _gram(rows)
    best, best_d = None, None
    for s in _subsets(len(rows)):
        y = _solve([[g[i][k] for k in s] for i in s], [1] * len(s))
        if y is None or mp.fsum(y) <= 0 or min(y) < 0:
            continue
        a = [0] * len(rows)
        for i, yi in zip(s, y):
            a[i] = yi / mp.fsum(y)
        d = _combine(a, rows)
        if best is None or _dot(d, d) < best:
            best, best_d = _dot(d, d), d
    return best_d


def cone_projection_reference(rows, v):
    """Projection of v onto {x : g_k . x >= 0 for all k}: the projection lies in null(J_S) for its
    active set S and is v's projection onto that subspace; the closest feasible candidate over
    all S is it."""
    g = _gram(rows)
    best, best_x = None, None
    for s in _subsets(len(rows), empty=True):
        if s:
            lam = _solve([[g[i][k] for k in s] for i in s], [_dot(rows[i], v) for i in s])
            if lam is None:
                continue
            x = [vi - ci for vi, ci in zip(v, _combine(lam, [rows[i] for i in s]))]
        else:
            x = list(v)
        scale = mp.sqrt(_dot(v, v))
        if any(_dot(r, x) < -mp.mpf(10) ** -40 * mp.sqrt(_dot(r, r)) * scale for r in rows):
            continue
        gap = _dot([a - b for a, b in zip(x, v)], [a - b for a, b in zip(x, v)])
        if best is None or gap < best:
            best, best_x = gap, x
    return best_x


def upgrad_reference(rows):
    projections = [cone_projection_reference(rows, r) for r in rows]
    return [mp.fsum(col) / len(rows) for col in zip(*projections)]


def cagrad_reference(rows, c):
    """Liu et al. 2021's dual over the simplex, enumerated: on support S stationarity reads
    b_S + r G_SS w / |g_w| = lambda 1, so w_S = (q / r)(lambda y - z) with y = G_SS^-1 1,
    z = G_SS^-1 b_S, and |g_w| = q, sum(w) = 1 give a quadratic in lambda.  The feasible candidate
    of least dual value is the optimum; d = g0 + r g_w / |g_w|."""
    t = len(rows)
    g = _gram(rows)
    g0 = [mp.fsum(col) / t for col in zip(*rows)]
    b = [_dot(r, g0) for r in rows]
    r = c * mp.sqrt(_dot(g0, g0))
    best, best_d = None, None
    for s in _subsets(t):
        m = [[g[i][k] for k in s] for i in s]
        y, z = _solve(m, [1] * len(s)), _solve(m, [b[i] for i in s])
        if y is None:
            continue
        qa, qb, qc = mp.fsum(y), mp.fsum(z), _dot([b[i] for i in s], z)
        disc = qb * qb - qa * (qc - r * r)
        if disc < 0:
            continue
        for lam in ((qb + mp.sqrt(disc)) / qa, (qb - mp.sqrt(disc)) / qa):
            if lam * qa - qb <= 0:
                continue
            q = r / (lam * qa - qb)
            w = [0] * t
            for i, yi, zi in zip(s, y, z):
                w[i] = q / r * (lam * yi - zi)
            if min(w) < -mp.mpf(10) ** -40:
                continue
            gw = _combine(w, rows)
            norm = mp.sqrt(_dot(gw, gw))
            value = _dot(gw, g0) + r * norm
            if best is None or value < best:
                best, best_d = value, [a + r * x / norm for a, x in zip(g0, gw)]
    return best_d


def assert_close_per_task(j, d, ref, scale, tol):
    """|g_k . (d - ref)| <= tol |g_k| scale for every task k, and |d - ref| <= tol scale."""
    rows = _rows(j)
    diff = [mp.mpf(float(a)) - b for a, b in zip(d.double().tolist(), ref)]
    assert float(mp.sqrt(_dot(diff, diff))) <= tol * scale, (float(mp.sqrt(_dot(diff, diff))), scale)
    for k, row in enumerate(rows):
        err = float(abs(_dot(row, diff)) / mp.sqrt(_dot(row, row)))
        assert err <= tol * scale, (k, err, scale)


def _norms(j):
    return j.double().norm(dim=1)


# -- UPGrad ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@SETTINGS
@given(data=st.data())
def test_upgrad_conflicts_with_no_task_at_any_scale(dtype, tol, data):
    """g_k . d >= -tol |g_k| max_i |g_i| for every task, whatever the ratio of the norms."""
    j = data.draw(scaled_jacobians(max_tasks=8, dtype=dtype))
    d = make("upgrad", j.shape[0]).aggregate(j).double()
    n = _norms(j)
    assert ((j.double() @ d) / (n * n.max()) >= -tol).all()


@SETTINGS
@given(j=scaled_jacobians())
def test_upgrad_matches_exact_cone_projections(j):
    mp.dps = 50
    d = make("upgrad", j.shape[0]).aggregate(j)
    assert_close_per_task(j, d, upgrad_reference(_rows(j)), float(_norms(j).max()), 1e-9)


# -- MGDA -----------------------------------------------------------------------------------------

@SETTINGS
@given(j=scaled_jacobians())
def test_mgda_matches_the_exact_min_norm_point(j):
    """Relative to the smallest gradient, which bounds the min-norm point."""
    mp.dps = 50
    d = make("mgda", j.shape[0]).aggregate(j)
    assert_close_per_task(j, d, mgda_reference(_rows(j)), float(_norms(j).min()), 1e-9)
    # the optimality condition of the min-norm point: g_k . d >= |d|^2 for every k
    dd = d @ d
    assert ((j @ d - dd) / (_norms(j) * d.norm()) >= -1e-9).all()


# -- CAGrad ---------------------------------------------------------------------------------------

@SETTINGS
@given(j=scaled_jacobians(), c=st.sampled_from([0.2, 0.4, 0.8]))
def test_cagrad_matches_the_exact_dual_solution(j, c):
    mp.dps = 50
    d = make("cagrad", j.shape[0], c=c).aggregate(j)
    g0 = j.mean(0)
    assert float((d - g0).norm()) <= c * float(g0.norm()) * (1 + 1e-9)
    assert_close_per_task(j, d, cagrad_reference(_rows(j), c), float(g0.norm()), 1e-9)


# -- Nash-MTL -------------------------------------------------------------------------------------

@SETTINGS
@given(j=scaled_jacobians())
def test_nash_mtl_solves_the_bargaining_equation_at_any_scale(j):
    """alpha_k (G alpha)_k = 1 for every task, in 50 digits, and the update is alpha @ J.

    Exactly: the combiner solves (C + 1e-10 I) beta = 1/beta for beta_k = alpha_k |g_k| (C the
    cosine matrix; the regulariser keeps beta finite for gradients that cancel), i.e.
    alpha_k (G alpha)_k = 1 - 1e-10 beta_k^2; a regulariser relative to G's largest diagonal
    instead would leave the small tasks' equations off by 1e-10 / |g_k|^2."""
    mp.dps = 50
    c = make("nash_mtl", j.shape[0])
    g, scale = metareg.normalized_gram(j)
    alpha = c.weights(g, scale).tolist()
    assert min(alpha) > 0
    gram = _gram(_rows(j))
    for k, row in enumerate(gram):
        beta_sq = float(alpha[k] ** 2 * row[k])
        assert abs(float(alpha[k] * _dot(row, alpha)) - 1 + 1e-10 * beta_sq) <= 1e-9
    d = c.aggregate(j)
    torch.testing.assert_close(d, torch.tensor(alpha, dtype=j.dtype) @ j, rtol=1e-12, atol=0)


# -- PCGrad and GradVac ---------------------------------------------------------------------------

@SETTINGS
@given(j=scaled_jacobians(max_tasks=6), seed=st.integers(0, 1000))
def test_pcgrad_equals_the_paper_loop_at_any_scale(j, seed):
    t = j.shape[0]
    twin = make("pcgrad", t, seed=seed)
    expected = pcgrad_oracle(j, twin.projection_order(t)).mean(0)
    got = make("pcgrad", t, seed=seed).aggregate(j)
    n = _norms(j)
    # per task, relative to that task's norm: a small task's projection is not rounding of a big one
    assert ((j @ (got - expected)).abs() / n <= 1e-9 * n.max()).all()
    assert float((got - expected).norm()) <= 1e-9 * float(n.max())


@SETTINGS
@given(j=scaled_jacobians(max_tasks=6), seed=st.integers(0, 1000))
def test_gradvac_with_zero_goals_is_pcgrad_at_any_scale(j, seed):
    t = j.shape[0]
    got = make("gradvac", t, seed=seed).aggregate(j)
    expected = make("pcgrad", t, seed=seed).aggregate(j)
    n = _norms(j)
    assert ((j @ (got - expected)).abs() / n <= 1e-9 * n.max()).all()


# -- the reported case ----------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", RATIOS)
def test_upgrad_small_task_is_not_overridden(ratio):
    """Issue 14: a large gradient and a small one at 135 degrees.  The small task's projection
    is orthogonal to the large gradient; the large one's must keep a non-negative inner product
    with the small one however small it is (it did not from a ratio of 1e4 on)."""
    j = torch.tensor([[1.0, 0.0], [-1.0 / ratio, 1.0 / ratio]], dtype=torch.float64)
    d = make("upgrad", 2).aggregate(j)
    # exact: g1 projects onto the ray x1 = x2, (1/2, 1/2); g2 onto the ray x1 = 0, (0, 1/ratio)
    torch.testing.assert_close(d, torch.tensor([0.25, 0.25 + 0.5 / ratio], dtype=torch.float64), rtol=1e-10, atol=0)
    assert float(j[1] @ d) >= 0
