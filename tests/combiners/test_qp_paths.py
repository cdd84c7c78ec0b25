"""The [T, T] solvers run in numpy for CPU tensors and in torch elsewhere (GPU, or inputs that
carry autograd history); both must give the same answer."""

from __future__ import annotations

import pytest
import torch

from metareg.learners._qp import nonneg_qp, solve_spd

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def _problem(t, b, seed, rank=None):
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(t, rank or 2 * t, generator=g, dtype=torch.float64)
    return j @ j.T / (rank or 2 * t), torch.randn(b, t, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("simplex", [False, True])
@pytest.mark.parametrize("t,rank", [(1, None), (3, None), (8, None), (8, 3), (13, None)])
def test_numpy_and_torch_paths_agree(simplex, t, rank):
    a, c = _problem(t, 4, seed=t + 10 * bool(rank), rank=rank)
    fast = nonneg_qp(a, c, simplex=simplex)  # CPU, no grad: the numpy path
    slow = nonneg_qp(a.clone().requires_grad_(), c, simplex=simplex).detach()  # torch path
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-10)
    assert (fast >= 0).all()
    if simplex:
        torch.testing.assert_close(fast.sum(1), torch.ones(4, dtype=torch.float64))
    # the single-problem form returns [T]
    assert nonneg_qp(a, c[0], simplex=simplex).shape == (t,)


def test_solve_spd_paths_agree():
    a, c = _problem(6, 3, seed=1)
    m = a + torch.eye(6, dtype=torch.float64)
    rhs = c.T.contiguous()
    want = torch.linalg.solve(m, rhs)
    torch.testing.assert_close(solve_spd(m, rhs), want)
    torch.testing.assert_close(solve_spd(m.clone().requires_grad_(), rhs).detach(), want)
