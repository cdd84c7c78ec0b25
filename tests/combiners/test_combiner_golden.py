"""Golden values: small Jacobians and losses whose answers are worked out by hand from each
paper's definition (derivations in the comments), plus the behaviour that the definitions imply
(uncertainty weights settle at the loss, DWA re-weights after two epochs)."""

import math

import pytest
import torch
from combiner_util import combiner_names, make

# g1 = (1, 0), g2 = (-1, 1): a 135-degree conflict, the running example below
CONFLICT = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)


def test_every_combiner_has_a_golden_value():
    assert set(combiner_names()) <= set(GOLDEN) | {"uncertainty", "dwa", "gradnorm"}, \
        "a new combiner needs a hand-derived golden value here"


GOLDEN = {
    # mean of the rows: ((1 - 1)/2, (0 + 1)/2)
    "equal": (CONFLICT, {}, [0.0, 0.5]),
    # Yu et al. 2020, Alg. 1: g1.g2 = -1 < 0, so g1' = g1 - (-1/|g2|^2) g2 = (1,0) + (-1,1)/2 = (0.5, 0.5)
    # and g2' = g2 - (-1/|g1|^2) g1 = (0, 1); mean (0.25, 0.75).  (T=2: the order does not matter.)
    "pcgrad": (CONFLICT, {}, [0.25, 0.75]),
    # Wang et al. 2021, eq. (5) with the initial goal 0: coefficient |g_i| (0 - phi sqrt(1-0)) / (|g_j| 1)
    # = -g_i.g_j / |g_j|^2, PCGrad's projection, so the same (0.25, 0.75).
    "gradvac": (CONFLICT, {}, [0.25, 0.75]),
    # Sener & Koltun 2018, eq. (3): |a g1 + (1-a) g2|^2 = (2a-1)^2 + (1-a)^2, derivative
    # 4(2a-1) - 2(1-a) = 10a - 6 = 0, a = 0.6 in [0, 1]: d = (0.6 - 0.4, 0.4) = (0.2, 0.4)
    "mgda": (CONFLICT, {}, [0.2, 0.4]),
    # Quinton & Rey 2024: dual cone {x : x1 >= 0, x2 >= x1}.  g1 = (1,0) violates x2 >= x1: its
    # projection onto the ray x1 = x2 is (0.5, 0.5); g2 = (-1,1) violates x1 >= 0: projection onto
    # the ray x1 = 0 is (0, 1).  Mean (0.25, 0.75).
    "upgrad": (CONFLICT, {}, [0.25, 0.75]),
    # Liu et al. 2021: orthogonal unit gradients, g0 = (0.5, 0.5), |g0| = 1/sqrt2.  The dual
    # g_w.g0 + c|g0||g_w| has g_w.g0 = 1/2 for every w, so it minimises |g_w|: w = (1/2, 1/2),
    # g_w = g0, and d = g0 + c|g0| g0/|g0| = (1 + c) g0 = (0.7, 0.7) for c = 0.4.
    "cagrad": (torch.eye(2, dtype=torch.float64), {"c": 0.4}, [0.7, 0.7]),
    # Navon et al. 2022, eq. (2): G = diag(1, 4), G alpha = 1/alpha gives alpha1^2 = 1,
    # 4 alpha2^2 = 1: alpha = (1, 1/2), d = 1 (1,0) + 1/2 (0,2) = (1, 1).
    "nash_mtl": (torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64), {}, [1.0, 1.0]),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_update(name):
    j, config, expected = GOLDEN[name]
    got = make(name, j.shape[0], **config).aggregate(j, torch.ones(j.shape[0], dtype=j.dtype))
    # 1e-8: the QP and Newton solvers regularise G (by 1e-12 and 1e-10 of its diagonal)
    assert got.tolist() == pytest.approx(expected, abs=1e-8)


def test_mgda_golden_unequal_lengths():
    # g1 = (1,0), g2 = (0,2): |a g1 + (1-a) g2|^2 = a^2 + 4(1-a)^2 is least at a = 4/5: (0.8, 0.4)
    j = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    assert make("mgda", 2).aggregate(j).tolist() == pytest.approx([0.8, 0.4], abs=1e-9)


def test_nash_mtl_golden_conflict():
    # G = [[1, -1], [-1, 2]]: alpha1 - alpha2 = 1/alpha1 and 2 alpha2 - alpha1 = 1/alpha2.  Adding:
    # alpha2 = 1/alpha1 + 1/alpha2; with u = alpha1, the first gives alpha2 = u - 1/u; substituting,
    # u - 1/u = 1/u + u/(u^2 - 1), i.e. (u^2 - 2)(u^2 - 1) = u^2, u^4 - 4u^2 + 2 = 0,
    # u^2 = 2 + sqrt2 (the root with alpha2 > 0).  d = alpha1 g1 + alpha2 g2 = (alpha1 - alpha2, alpha2)
    # = (1/alpha1, alpha1 - 1/alpha1).
    a1 = math.sqrt(2 + math.sqrt(2))
    got = make("nash_mtl", 2).aggregate(CONFLICT)
    assert got.tolist() == pytest.approx([1 / a1, a1 - 1 / a1], abs=1e-8)


def test_cagrad_single_task_golden():
    # T = 1: the simplex is {1}, g_w = g0 = g, d = g + c|g| g/|g| = (1 + c) g
    g = torch.tensor([[3.0, -4.0]], dtype=torch.float64)
    assert make("cagrad", 1, c=0.5).aggregate(g).tolist() == pytest.approx([4.5, -6.0], abs=1e-9)


def test_gradvac_goal_moves_by_beta():
    # phi^ <- (1 - beta) phi^ + beta phi, from 0 with phi = cos(g1, g2) = -1/sqrt2 for both pairs
    c = make("gradvac", 2, beta=0.01)
    c.aggregate(CONFLICT)
    assert c.goal[0, 1].item() == pytest.approx(-0.01 / math.sqrt(2), abs=1e-12)
    assert c.goal[1, 0].item() == pytest.approx(-0.01 / math.sqrt(2), abs=1e-12)
    assert c.goal[0, 0].item() == 0.0


def test_gradnorm_golden_first_update():
    # Chen et al. 2018, Alg. 1 with w = (1, 1), g1 = (3, 0), g2 = (0, 1), L(t) = L(0) so r = (1, 1):
    # the first update is the mean (1.5, 0.5).  G = (3, 1), mean(G) = 2, targets (2, 2); the step
    # on log w is -lr sign(G_i - 2) G_i / 2 = -lr (1.5, -0.5), with lr 0.1: w = (e^-.15, e^.05),
    # renormalised to sum 2.  The next update is (w1 g1 + w2 g2) / 2.
    c = make("gradnorm", 2, lr=0.1, alpha=1.5)
    j = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    losses = torch.tensor([1.0, 1.0], dtype=torch.float64)
    assert c.aggregate(j, losses).tolist() == pytest.approx([1.5, 0.5])
    raw = [math.exp(-0.15), math.exp(0.05)]
    w = [2 * r / sum(raw) for r in raw]
    assert c.weights.tolist() == pytest.approx(w, abs=1e-12)
    assert c.aggregate(j, losses).tolist() == pytest.approx([w[0] * 3 / 2, w[1] / 2], abs=1e-12)


def test_uncertainty_golden():
    # Kendall et al. 2018, eq. (7) with s = log sigma^2: mean_i (1/2 exp(-s_i) L_i + 1/2 s_i).
    # s = (log 4, 0), L = (8, 2): (1/2 * 8/4 + 1/2 log 4 + 1/2 * 2 + 0) / 2 = (1 + log 2 + 1) / 2
    c = make("uncertainty", 2)
    with torch.no_grad():
        c.log_var.copy_(torch.tensor([math.log(4.0), 0.0]))
    got = c.loss(torch.tensor([8.0, 2.0]))
    assert got.item() == pytest.approx((2 + math.log(2)) / 2, rel=1e-6)


def test_uncertainty_log_variance_settles_at_the_loss():
    # d/ds (1/2 e^-s L + 1/2 s) = 0 at s = log L: a task's learned variance is its loss
    c = make("uncertainty", 3)
    losses = torch.tensor([0.1, 1.0, 20.0])
    opt = torch.optim.Adam(c.parameters(), lr=0.1)
    for _ in range(400):
        opt.zero_grad()
        c.loss(losses).backward()
        opt.step()
    assert c.log_var.detach().tolist() == pytest.approx(torch.log(losses).tolist(), abs=0.05)


def test_uncertainty_uses_task_ids():
    c = make("uncertainty", 4)
    with torch.no_grad():
        c.log_var.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    ids = torch.tensor([3, 1])
    losses = torch.tensor([2.0, 5.0])
    s = torch.tensor([3.0, 1.0])
    expected = (0.5 * torch.exp(-s) * losses + 0.5 * s).mean()
    assert c.loss(losses, ids).item() == pytest.approx(expected.item())


def test_dwa_golden():
    # Liu et al. 2019, eq. (7), K = 2, temperature 2, one step per epoch.  Epochs 1 and 2 are
    # weighted 1.  Epoch averages L(1) = (2, 4), L(2) = (1, 4): rates w = (1/2, 1), so in epoch 3
    # lambda = 2 softmax((1/4, 1/2)) = 2 (e^.25, e^.5) / (e^.25 + e^.5); objective mean(lambda L).
    c = make("dwa", 2, epoch_steps=1, temperature=2.0)
    assert c.loss(torch.tensor([2.0, 4.0])).item() == pytest.approx(3.0)
    assert c.loss(torch.tensor([1.0, 4.0])).item() == pytest.approx(2.5)
    e1, e2 = math.exp(0.25), math.exp(0.5)
    lam = [2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)]
    got = c.loss(torch.tensor([3.0, 1.0])).item()
    assert got == pytest.approx((lam[0] * 3 + lam[1] * 1) / 2, rel=1e-6)
    assert c.weights.tolist() == pytest.approx(lam, rel=1e-6)


def test_dwa_averages_over_epoch_steps():
    # epoch 1 = calls 1-2 (avg (2, 2)), epoch 2 = calls 3-4 (avg (1, 2)); rates (1/2, 1)
    c = make("dwa", 2, epoch_steps=2, temperature=1.0)
    for losses in ([3.0, 1.0], [1.0, 3.0], [1.5, 2.0], [0.5, 2.0]):
        c.loss(torch.tensor(losses))
    c.loss(torch.tensor([1.0, 1.0]))
    e1, e2 = math.exp(0.5), math.exp(1.0)
    assert c.weights.tolist() == pytest.approx([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], rel=1e-6)


@pytest.mark.parametrize("name", ["dwa", "gradnorm", "gradvac", "uncertainty"])
def test_per_task_state_needs_task_ids_for_partial_batches(name):
    from metareg.errors import IncompatibleError

    c = make(name, 5)
    j, losses = torch.randn(3, 4), torch.rand(3) + 0.1
    call = (lambda ids=None: c.aggregate(j, losses, task_ids=ids)) if c.needs_jacobian else (lambda ids=None: c.loss(losses, ids))
    with pytest.raises(IncompatibleError, match="task_ids"):
        call()
    assert torch.isfinite(call(torch.tensor([4, 0, 2]))).all()
