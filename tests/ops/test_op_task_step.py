"""metareg.ops.task_step against its reference: every lr kind, shared and per-task params,
gradients to second order (MAML) and with a learned rate (Meta-SGD)."""

from __future__ import annotations

import pytest
import torch

from metareg import ops
from metareg.errors import ShapeError
from metareg.ops import _reference as ref
from metareg.ops._registration import extension, kernels

pytestmark = pytest.mark.skipif(extension is None, reason="metareg._C is not built")

DEVICES = [d for d in ("cpu", "cuda") if kernels.get(d) and (d == "cpu" or torch.cuda.is_available())]
LR_KINDS = ["float", "scalar", "per_param", "per_task"]
# P = 40,003 with T = 3 puts row boundaries inside the kernel's parallel chunks.
SIZES = [(1, 1), (3, 7), (5, 1000), (3, 40_003)]


def _lr(kind, T, P, dtype, device, gen):
    if kind == "float":
        return 0.37
    shape = {"scalar": (), "per_param": (P,), "per_task": (T, P)}[kind]
    return (torch.rand(shape, generator=gen, dtype=torch.float64) + 0.1).to(device, dtype)


def _make(T, P, shared, kind, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = torch.randn((P,) if shared else (T, P), generator=gen, dtype=torch.float64).to(device, dtype)
    grads = torch.randn(T, P, generator=gen, dtype=torch.float64).to(device, dtype)
    return params, grads, _lr(kind, T, P, dtype, device, gen)


def _grads_of(fn, params, grads, lr, cot):
    leaves = [params.detach().requires_grad_(), grads.detach().requires_grad_()]
    lr_leaf = lr.detach().requires_grad_() if isinstance(lr, torch.Tensor) else lr
    if isinstance(lr, torch.Tensor):
        leaves.append(lr_leaf)
    out = fn(leaves[0], leaves[1], lr_leaf)
    return (out, *torch.autograd.grad(out, leaves, cot))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind", LR_KINDS)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_task_params"])
@pytest.mark.parametrize("size", SIZES, ids=str)
def test_matches_reference(device, dtype, kind, shared, size):
    T, P = size
    params, grads, lr = _make(T, P, shared, kind, dtype, device)
    gen = torch.Generator().manual_seed(T * P)
    cot = torch.randn(T, P, generator=gen, dtype=torch.float64).to(device, dtype)
    got = _grads_of(ops.task_step, params, grads, lr, cot)
    want = _grads_of(ref.task_step, params, grads, lr, cot)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        # Gradients reduced over tasks (and, for a 0-d lr, over all T * P entries) are summed in
        # another order than the reference's: float32 rounding grows with the size of the sum.
        atol = (1e-5 if dtype == torch.float32 else 1e-12) * max(1.0, float(w.detach().abs().max()))
        torch.testing.assert_close(g, w, rtol=1e-5 if dtype == torch.float32 else 1e-10, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
def test_noncontiguous_and_expanded(device):
    gen = torch.Generator().manual_seed(1)
    grads = torch.randn(9, 4, generator=gen, dtype=torch.float64).to(device).t()  # [4, 9]
    params = torch.randn(9, dtype=torch.float64, device=device).expand(4, 9)
    lr = torch.rand(18, generator=gen, dtype=torch.float64).to(device)[::2]
    cot = torch.randn(4, 9, dtype=torch.float64, device=device)
    for fn_lr in (lr, 0.1):
        got = _grads_of(ops.task_step, params, grads, fn_lr, cot)
        want = _grads_of(ref.task_step, params, grads, fn_lr, cot)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


@pytest.mark.parametrize("device", DEVICES)
def test_single_task_vectors(device):
    p, g = torch.randn(5, device=device), torch.randn(5, device=device)
    out = ops.task_step(p, g, 0.5)
    assert out.shape == (5,)
    torch.testing.assert_close(out, p - 0.5 * g)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", LR_KINDS)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_task_params"])
def test_gradcheck_and_gradgradcheck(device, kind, shared):
    params, grads, lr = _make(3, 4, shared, kind, torch.float64, device, seed=2)
    inputs = [params.requires_grad_(), grads.requires_grad_()]
    if isinstance(lr, torch.Tensor):
        inputs.append(lr.requires_grad_())
        fn = ops.task_step
    else:
        def fn(p, g):
            return ops.task_step(p, g, lr)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["scalar", "per_param", "per_task"])
def test_fused_backward_op_gradcheck(device, kind):
    T, P = 3, 5
    gen = torch.Generator().manual_seed(3)
    grad, grads = (torch.randn(T, P, generator=gen, dtype=torch.float64).to(device).requires_grad_() for _ in "ab")
    lr = _lr(kind, T, P, torch.float64, device, gen).requires_grad_()
    for shared in (True, False):
        got = torch.ops.metareg.task_step_backward(grad, grads, lr, shared)
        want = ref.task_step_backward(grad, grads, lr, shared)
        if shared:
            torch.testing.assert_close(got[0], want[0])
        else:
            assert got[0].shape == (0,)
        torch.testing.assert_close(got[1], want[1])
        torch.testing.assert_close(got[2], want[2])
        assert torch.autograd.gradcheck(lambda g, x, l: torch.ops.metareg.task_step_backward(g, x, l, shared),
                                        (grad, grads, lr))


def _maml_meta_grad(step, theta, lr, x, y, steps=2):
    """Second-order MAML on T linear-regression tasks: x [T, K, P], y [T, K]."""
    fast = theta
    for _ in range(steps):
        loss = ((torch.einsum("tkp,...p->tk", x, fast) if fast.dim() == 1 else
                 torch.einsum("tkp,tp->tk", x, fast)) - y).pow(2).mean(1).sum()
        (g,) = torch.autograd.grad(loss, fast, create_graph=True)
        g = g.expand(x.shape[0], -1) if g.dim() == 1 else g
        fast = step(fast, g, lr)
    meta = (torch.einsum("tkp,tp->tk", x, fast) - y).pow(3).mean()
    leaves = [theta] + ([lr] if isinstance(lr, torch.Tensor) else [])
    return torch.autograd.grad(meta, leaves)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("learned_lr", [False, True], ids=["maml", "meta_sgd"])
def test_second_order_meta_gradient_matches_reference(device, learned_lr):
    gen = torch.Generator().manual_seed(4)
    T, K, P = 4, 6, 5
    x = torch.randn(T, K, P, generator=gen, dtype=torch.float64).to(device)
    y = torch.randn(T, K, generator=gen, dtype=torch.float64).to(device)
    theta = torch.randn(P, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    lr = (torch.rand(P, generator=gen, dtype=torch.float64).to(device) * 0.1).requires_grad_() if learned_lr else 0.05
    got = _maml_meta_grad(ops.task_step, theta, lr, x, y)
    want = _maml_meta_grad(ref.task_step, theta, lr, x, y)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    # The second-order term is really there: first-order (detached inner grads) differs.
    fo = _maml_meta_grad(lambda p, g, a: ops.task_step(p, g.detach(), a), theta, lr, x, y)
    assert not torch.allclose(fo[0], got[0])


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    gen = torch.Generator().manual_seed(5)
    p = torch.randn(7, generator=gen).to(device).requires_grad_()
    pt = torch.randn(3, 7, generator=gen).to(device).requires_grad_()
    g = torch.randn(3, 7, generator=gen).to(device).requires_grad_()
    lr_p = torch.rand(7, generator=gen).to(device).requires_grad_()
    lr_0 = torch.rand((), generator=gen).to(device).requires_grad_()
    torch.library.opcheck(torch.ops.metareg.task_step.default, (p, g, 0.25))
    torch.library.opcheck(torch.ops.metareg.task_step.default, (pt, g, 0.25))
    torch.library.opcheck(torch.ops.metareg.task_step_tensor.default, (p, g, lr_p))
    torch.library.opcheck(torch.ops.metareg.task_step_tensor.default, (pt, g, lr_0))
    cot = torch.randn(3, 7, generator=gen).to(device).requires_grad_()
    torch.library.opcheck(torch.ops.metareg.task_step_backward.default, (cot, g, lr_p, True))
    torch.library.opcheck(torch.ops.metareg.task_step_backward.default, (cot, g, lr_0, False))


@pytest.mark.parametrize("device", DEVICES)
def test_errors_name_the_op_and_shapes(device):
    f = dict(device=device)
    bad = [
        (torch.randn(7, **f), torch.randn(7, 3, **f), 0.1),
        (torch.randn(2, 7, **f), torch.randn(3, 7, **f), 0.1),
        (torch.randn(7, **f), torch.randn(3, 7, 2, **f), 0.1),
        (torch.randn(7, **f), torch.randn(3, 7, **f), torch.randn(6, **f)),
        (torch.randn(7, **f), torch.randn(3, 7, dtype=torch.float64, **f), 0.1),
    ]
    for params, grads, lr in bad:
        with pytest.raises(ShapeError, match=r"task_step.*\[") as info:
            ops.task_step(params, grads, lr)
        assert str(list(grads.shape)) in str(info.value)
        op = torch.ops.metareg.task_step_tensor if isinstance(lr, torch.Tensor) else torch.ops.metareg.task_step
        with pytest.raises(RuntimeError, match=r"metareg::task_step") as info:
            op(params, grads, lr)
        assert str(list(grads.shape)) in str(info.value)
    with pytest.raises(ShapeError, match="lr must match"):
        ops.task_step(torch.randn(7, **f), torch.randn(3, 7, **f), torch.rand(7, dtype=torch.float64, **f))
    with pytest.raises(ShapeError, match="device"):
        ops.task_step(torch.randn(7, **f), torch.randn(3, 7, device="meta"), 0.1)
