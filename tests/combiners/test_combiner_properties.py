"""Property tests run on every registered combiner, so a new plugin is checked for free.

Gradient methods (``needs_jacobian``) are fed random task Jacobians; loss-weighting methods are
fed random task losses.  Which combiners are not order-invariant is read from the class
(``order_invariant``): PCGrad and GradVac draw a random visiting order per row index, so
permuting the rows changes which task gets which order.  Stateful combiners (GradNorm, DWA,
uncertainty, GradVac's goals) are keyed by task id, so they are tested under a joint permutation
of rows and task ids, over several calls.
"""

import math

import pytest
import torch
from combiner_util import apply, combiner_names, make, pcgrad_oracle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metareg

NAMES = combiner_names()
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def jacobians(draw, min_tasks=1, max_tasks=6, min_p=1, max_p=10, dtype=torch.float32, degenerate=True):
    """A [T, P] Jacobian: Gaussian rows at one scale; if ``degenerate``, maybe some zero rows and
    an exactly opposed pair."""
    t = draw(st.integers(min_tasks, max_tasks))
    p = draw(st.integers(min_p, max_p))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-25, 1e-9, 1.0, 1e9, 1e25]))
    j = torch.randn(t, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if not degenerate:
        return (j * scale).to(dtype)
    zero = draw(st.lists(st.booleans(), min_size=t, max_size=t))
    j[torch.tensor(zero)] = 0
    if t >= 2 and draw(st.booleans()):
        j[1] = -draw(st.sampled_from([0.5, 1.0, 3.0])) * j[0]  # exactly opposed pair
    return (j * scale).to(dtype)


def losses_for(t, seed, scale=1.0):
    return torch.rand(t, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float() * scale + 1e-3


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(j=jacobians(), seed=st.integers(0, 1000), loss_scale=st.sampled_from([1e-6, 1.0, 1e6]))
def test_finite_output(name, j, seed, loss_scale):
    t, p = j.shape
    c = make(name, t)
    losses = losses_for(t, seed, loss_scale)
    for _ in range(3):  # stateful combiners: later calls see the state the first ones left
        out = apply(c, j, losses)
        if c.needs_jacobian:
            assert out.shape == (p,) and out.dtype == j.dtype
        else:
            assert out.shape == ()
        assert torch.isfinite(out).all(), f"{name} gave {out} for a Jacobian of scale {j.abs().max():.1e}"


@pytest.mark.parametrize("name", NAMES)
def test_weighting_objective_is_differentiable(name):
    c = make(name, 3)
    if c.needs_jacobian:
        pytest.skip("gradient method: no scalar objective")
    losses = torch.tensor([0.5, 2.0, 8.0], requires_grad=True)
    c.loss(losses).backward()
    assert torch.isfinite(losses.grad).all() and (losses.grad > 0).all()


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(j=jacobians(min_tasks=2, min_p=7, max_p=12, dtype=torch.float64, degenerate=False),
       seed=st.integers(0, 2**31 - 1))
def test_permutation_equivariance(name, j, seed):
    """Relabelling the tasks (rows, losses and ids together) does not change the update.

    On generic full-rank Jacobians only: with a zero gradient CAGrad's worst-task improvement is
    0 for a whole set of directions, and with gradients that cancel Nash-MTL's equation has no
    solution (it returns a regularised one, large alphas times a near-zero combination); which
    of those the solver returns, and its rounding, may depend on the order."""
    t = j.shape[0]
    a, b = make(name, t), make(name, t)
    if not a.order_invariant:
        pytest.skip(f"{name} visits tasks in a random order drawn per row: not order-invariant by design")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(t, generator=g)
    ids = torch.arange(t)
    for step in range(3):
        losses = torch.rand(t, generator=g, dtype=torch.float64) + 0.1
        jj = j * (1 + step)
        out_a = apply(a, jj, losses, ids)
        out_b = apply(b, jj[perm], losses[perm], ids[perm])
        scale = max(float(jj.abs().max()), 1e-300)
        assert torch.allclose(out_a / scale, out_b / scale, atol=1e-7, rtol=1e-6), (name, step, out_a, out_b)


@pytest.mark.parametrize("name", [n for n in NAMES if not make(n, 3).order_invariant])
def test_random_order_is_seeded(name):
    """Order-dependent combiners are still reproducible: the order comes from their own seed."""
    j = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    j[1:] -= 1.5 * j[0]  # plenty of conflicts, so the order matters
    outs = {s: make(name, 5, seed=s).aggregate(j) for s in (0, 1, 2, 3)}
    assert torch.equal(outs[0], make(name, 5, seed=0).aggregate(j))
    assert any(not torch.allclose(outs[0], outs[s]) for s in (1, 2, 3))


@pytest.mark.parametrize("name", NAMES)
def test_single_task_follows_its_gradient(name):
    """With T=1 nothing is combined: the update points along the task's own gradient."""
    g = torch.tensor([[3.0, -4.0]])
    c = make(name, 1)
    if not c.needs_jacobian:
        loss = torch.tensor([2.0], requires_grad=True)
        c.loss(loss).backward()
        assert loss.grad.item() > 0
        return
    out = c.aggregate(g, torch.ones(1))
    cos = float(out @ g[0]) / (float(out.norm()) * 5.0)
    assert cos == pytest.approx(1.0, abs=1e-6)


# -- PCGrad ----------------------------------------------------------------------------------------

@SETTINGS
@given(j=jacobians(min_tasks=2, max_tasks=2, min_p=2, dtype=torch.float64))
def test_pcgrad_two_tasks_orthogonal_not_against(j):
    c = make("pcgrad", 2)
    g, _ = metareg.normalized_gram(j, cosine=True)
    projected = c.coefficients(g, c.projection_order(2)) @ j
    for i, k in ((0, 1), (1, 0)):
        scale = float(j[i].norm() * j[k].norm()) + 1e-300
        dot = float(projected[i] @ j[k]) / scale
        if float(j[i] @ j[k]) < 0:
            assert abs(dot) < 1e-9  # projected onto the normal plane of the other gradient
        else:
            assert torch.equal(projected[i], j[i])  # no conflict: left alone
        assert dot > -1e-9
    assert torch.allclose(make("pcgrad", 2).aggregate(j), projected.mean(0), rtol=1e-9, atol=1e-9 * float(j.abs().max()))


@SETTINGS
@given(j=jacobians(min_tasks=3, max_tasks=6, min_p=2, dtype=torch.float64), seed=st.integers(0, 1000))
def test_pcgrad_equals_sequential_projection_in_seeded_order(j, seed):
    t = j.shape[0]
    j = j - 0.7 * j.mean(0)  # make conflicts common
    twin = make("pcgrad", t, seed=seed)
    order = twin.projection_order(t)
    expected = pcgrad_oracle(j, order).mean(0)
    got = make("pcgrad", t, seed=seed).aggregate(j)
    scale = float(j.abs().max()) + 1e-300
    assert torch.allclose(got / scale, expected / scale, atol=1e-9), (got, expected)


# -- GradVac ---------------------------------------------------------------------------------------

def test_gradvac_reaches_the_goal_cosine():
    """Wang et al. 2021, eq. (5): after the correction, cos(g_i', g_j) equals the goal phi^_ij."""
    j = torch.tensor([[1.0, 0.2, 0.0], [-0.6, 1.0, 0.3]], dtype=torch.float64)
    c = make("gradvac", 2)
    c.goal.fill_(0.5)
    g, _ = metareg.normalized_gram(j, cosine=True)
    coef = c.coefficients(g, c.projection_order(2), torch.arange(2))
    adjusted = coef @ j
    for i, k in ((0, 1), (1, 0)):
        cos = float(adjusted[i] @ j[k] / (adjusted[i].norm() * j[k].norm()))
        assert cos == pytest.approx(0.5, abs=1e-10)


@SETTINGS
@given(j=jacobians(min_tasks=2, max_tasks=5, min_p=2, dtype=torch.float64), seed=st.integers(0, 1000))
def test_gradvac_with_zero_goals_is_pcgrad(j, seed):
    """With the initial goals phi^ = 0 the GradVac correction is PCGrad's projection."""
    t = j.shape[0]
    got = make("gradvac", t, seed=seed).aggregate(j)
    expected = make("pcgrad", t, seed=seed).aggregate(j)
    scale = float(j.abs().max()) + 1e-300
    assert torch.allclose(got / scale, expected / scale, atol=1e-9)


# -- MGDA ------------------------------------------------------------------------------------------

def simplex_grid(n):
    i, k = torch.meshgrid(torch.arange(n + 1), torch.arange(n + 1), indexing="ij")
    keep = i + k <= n
    w = torch.stack([i[keep], k[keep], n - i[keep] - k[keep]], 1).double() / n
    return w


@SETTINGS
@given(j=jacobians(min_tasks=3, max_tasks=3, min_p=2, max_p=6, dtype=torch.float64))
def test_mgda_is_the_min_norm_point(j):
    """Brute force over a dense grid of the simplex (T=3) and the exact optimality condition."""
    scale = float(j.abs().max())
    if scale == 0:
        return
    j = j / scale
    d = make("mgda", 3).aggregate(j)
    grid = simplex_grid(240)
    g = j @ j.T
    brute = ((grid @ g) * grid).sum(1).min()
    got = float(d @ d)
    assert got <= float(brute) + 1e-12
    # the grid is 1/240 apart: its best point is within O(h) of the optimum in weight space
    assert got >= float(brute) - 2 * float(g.abs().max()) / 240
    # d is the min-norm point of the hull iff d . g_i >= |d|^2 for every i (projection of 0)
    assert (j @ d >= got - 1e-10).all()


# -- UPGrad ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
@SETTINGS
@given(data=st.data())
def test_upgrad_conflicts_with_no_task(dtype, tol, data):
    j = data.draw(jacobians(min_tasks=2, max_tasks=6, min_p=2, max_p=10, dtype=dtype))
    j = j - 0.8 * j.mean(0)
    d = make("upgrad", j.shape[0]).aggregate(j)
    # relative to |g|^2, not |d|: when the dual cone is {0} the exact update is 0 and d is rounding
    top = float(j.double().norm(dim=1).max()) ** 2
    dots = (j.double() @ d.double()) / max(top, 1e-300)
    assert (dots >= -tol).all(), dots


def cone_projection_2d(j, v):
    """Exact projection of v onto {x : J x >= 0} in the plane: v itself, or the nearest point on
    a feasible boundary ray (perpendicular to some row), or 0."""
    def feasible(x):
        return bool((j @ x >= -1e-12).all())

    best = torch.zeros(2, dtype=j.dtype)
    if feasible(v):
        return v
    for row in j:
        if row.norm() == 0:
            continue
        for ray in (torch.stack([-row[1], row[0]]), torch.stack([row[1], -row[0]])):
            ray = ray / ray.norm()
            if feasible(ray):
                cand = torch.clamp(v @ ray, min=0) * ray
                if (cand - v).norm() < (best - v).norm():
                    best = cand
    return best


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), t=st.integers(2, 4))
def test_upgrad_matches_exact_cone_projections_in_2d(seed, t):
    j = torch.randn(t, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = torch.stack([cone_projection_2d(j, j[i]) for i in range(t)]).mean(0)
    got = make("upgrad", t).aggregate(j)
    # atol: the QP is regularised by 1e-12 of G's diagonal; when the cone is {0} (three
    # gradients spanning the plane in conflict) that leaves |d| up to ~1e-8 instead of 0
    assert torch.allclose(got, expected, atol=1e-6), (got, expected)


@SETTINGS
@given(j=jacobians(min_tasks=1, max_tasks=5, min_p=2, dtype=torch.float64))
def test_upgrad_without_conflict_is_the_mean(j):
    j = j.abs()  # non-negative entries: every pair of gradients agrees
    got = make("upgrad", j.shape[0]).aggregate(j)
    assert torch.allclose(got, j.mean(0), rtol=1e-10, atol=1e-300)


# -- CAGrad ----------------------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), t=st.integers(2, 4), c=st.sampled_from([0.2, 0.4, 0.8]))
def test_cagrad_maximises_the_worst_task_in_the_ball(seed, t, c):
    """Liu et al. 2021, eq. (2), checked by brute force over a polar grid of the 2-D ball."""
    j = torch.randn(t, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    d = make("cagrad", t, c=c).aggregate(j)
    g0 = j.mean(0)
    r = c * float(g0.norm())
    assert float((d - g0).norm()) <= r * (1 + 1e-6) + 1e-12
    rad = torch.linspace(0, r, 200, dtype=torch.float64)
    ang = torch.linspace(0, 2 * math.pi, 1440, dtype=torch.float64)
    pts = g0 + torch.stack([rad[:, None] * ang.cos(), rad[:, None] * ang.sin()], -1).reshape(-1, 2)
    brute = float((pts @ j.T).min(1).values.max())
    got = float((j @ d).min())
    assert got >= brute - 1e-6 * (1 + abs(brute))


def test_cagrad_with_zero_radius_is_the_mean():
    j = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(make("cagrad", 4, c=0.0).aggregate(j), j.mean(0))


# -- Nash-MTL --------------------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), t=st.integers(1, 5), scale=st.sampled_from([1e-6, 1.0, 1e6]))
def test_nash_mtl_solves_the_bargaining_equation(seed, t, scale):
    """Navon et al. 2022, eq. (2): d = J' alpha with alpha > 0 and G alpha = 1/alpha."""
    j = torch.randn(t, t + 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    d = make("nash_mtl", t).aggregate(j)
    alpha = torch.linalg.lstsq(j.T, d[:, None]).solution[:, 0]  # J has full row rank
    assert (alpha > 0).all()
    assert torch.allclose((j @ j.T) @ alpha, 1 / alpha, rtol=1e-5)
