"""The [T, T] solvers: nonneg_qp's answer meets the KKT conditions of its QP, whatever the input
carries (autograd history, batch or single problem); solve_spd's numpy (CPU) and torch (other
devices, autograd) eliminations agree with LAPACK."""

from __future__ import annotations

import pytest
import torch

from metareg.learners._qp import nonneg_qp, solve_spd

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def _problem(t, b, seed, rank=None):
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(t, rank or 2 * t, generator=g, dtype=torch.float64)
    a = j @ j.T / (rank or 2 * t)
    c = torch.randn(b, t, generator=g, dtype=torch.float64)
    # a singular A needs c in its range for the QP without the simplex to be bounded (UPGrad's
    # c = G e_i is); a c off it has no minimiser, so no KKT point to check
    return a, (c @ a if rank else c)


@pytest.mark.parametrize("simplex", [False, True])
@pytest.mark.parametrize("t,rank", [(1, None), (3, None), (8, None), (8, 3), (13, None)])
def test_nonneg_qp_meets_kkt(simplex, t, rank):
    a, c = _problem(t, 4, seed=t + 10 * bool(rank), rank=rank)
    x = nonneg_qp(a.clone().requires_grad_(), c, simplex=simplex)
    assert x.shape == (4, t) and x.dtype == torch.float64 and not x.requires_grad
    g = x @ a + c  # gradient of 1/2 x'Ax + c'x
    tol = 1e-8 * (1 + float(g.abs().max()))
    assert (x >= 0).all()
    if simplex:
        torch.testing.assert_close(x.sum(1), torch.ones(4, dtype=torch.float64))
        mu = (g * (x > 0)).sum(1, keepdim=True) / (x > 0).sum(1, keepdim=True)
        g = g - mu  # reduced gradient: 0 on the support, >= 0 off it
    assert (g >= -tol).all()
    assert ((x * g).abs() <= tol).all()
    # the single-problem form returns [T] and equals its row of the batch
    torch.testing.assert_close(nonneg_qp(a, c[0], simplex=simplex), x[0])


def test_solve_spd_paths_agree():
    a, c = _problem(6, 3, seed=1)
    m = a + torch.eye(6, dtype=torch.float64)
    rhs = c.T.contiguous()
    want = torch.linalg.solve(m, rhs)
    torch.testing.assert_close(solve_spd(m, rhs), want)  # numpy
    torch.testing.assert_close(solve_spd(m.clone().requires_grad_(), rhs).detach(), want)  # torch
