"""metareg.nets.batchnorm against plain torch in float64: the fused batch norm (PyTorch's fused
kernels with our own double backward) gives F.batch_norm's forward and first and second
derivatives, and the explicit formula's; the grouped and per-task forms agree with each other;
gradcheck and gradgradcheck (and third order for the fused one) pass."""

import pytest
import torch
import torch.nn.functional as F

from metareg.nets import batchnorm as bn

D = torch.float64
EPS = 1e-5
FORMATS = ["channels_last", "contiguous_format"]


def _torch_bn(x, w, b):
    return F.batch_norm(x, None, None, w, b, training=True, eps=EPS)


def _formula_bn(x, w, b):
    # the definition, written out: biased variance per channel over (N, H, W)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)


def _fused(x, w, b):
    return bn.fused_batch_norm(x, w, b, EPS)


def _inputs(fmt, seed=0, shape=(3, 4, 3, 2)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=D).contiguous(memory_format=getattr(torch, fmt)).requires_grad_()
    c = shape[1]
    w = (1 + 0.5 * torch.randn(c, generator=g, dtype=D)).requires_grad_()
    b = torch.randn(c, generator=g, dtype=D, requires_grad=True)
    gy = torch.randn(*shape, generator=g, dtype=D, requires_grad=True)
    return x, w, b, gy


def _derivatives(f, x, w, b, gy):
    """Forward, first derivatives (a vector-Jacobian product with gy) and second derivatives (the
    gradient of a scalar function of the first ones with respect to x, w and gy; the first
    derivatives do not depend on b)."""
    y = f(x, w, b)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy, create_graph=True)
    second = torch.autograd.grad((gx**2).sum() + (gw**3).sum() + (gb * gw).sum() + (gx * x).sum(), (x, w, gy))
    return (y, gx, gw, gb, *second)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("reference", [_torch_bn, _formula_bn], ids=["F.batch_norm", "formula"])
def test_fused_equals_plain_torch_to_second_order(fmt, reference):
    x, w, b, gy = _inputs(fmt)
    got = _derivatives(_fused, x, w, b, gy)
    want = _derivatives(reference, x, w, b, gy)
    names = ("y", "gx", "gw", "gb", "d/dx", "d/dw", "d/dgy")
    for name, g, r in zip(names, got, want):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


def test_fused_on_a_larger_channels_last_map():
    # many positions per channel (the reductions over N, H, W at once), a constant channel (var 0)
    x, w, b, gy = _inputs("channels_last", seed=1, shape=(5, 3, 7, 6))
    with torch.no_grad():
        x[:, 1] = 0.25
    got = _derivatives(_fused, x, w, b, gy)
    want = _derivatives(_torch_bn, x, w, b, gy)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fused_gradcheck_to_third_order(fmt):
    x, w, b, gy = _inputs(fmt, seed=6)
    assert torch.autograd.gradcheck(_fused, (x, w, b))
    assert torch.autograd.gradgradcheck(_fused, (x, w, b))

    def first(x, w, b, gy):
        return torch.autograd.grad(_fused(x, w, b), (x, w, b), gy, create_graph=True)

    assert torch.autograd.gradgradcheck(first, (x, w, b, gy))  # third order


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("support_size", [None, 2])
def test_batch_norm_gradcheck_and_gradgradcheck(batched, support_size):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 2, 2, 2, generator=g, dtype=D, requires_grad=True)
    shape = (2, 2) if batched else (2,)
    w = (1 + 0.5 * torch.randn(shape, generator=g, dtype=D)).requires_grad_()
    b = torch.randn(shape, generator=g, dtype=D, requires_grad=True)

    def fn(x, w, b):
        return bn.batch_norm(x, w, b, support_size=support_size)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_batch_norm_matches_torch_training_mode_per_task():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 5, 6, 6, generator=g, dtype=D)
    w, b = torch.randn(5, generator=g, dtype=D), torch.randn(5, generator=g, dtype=D)
    ours = bn.batch_norm(x, w, b)
    for i in range(3):
        torch.testing.assert_close(ours[i], F.batch_norm(x[i], None, None, w, b, training=True, eps=EPS))


def test_batch_norm_support_statistics_are_the_support_examples():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 3, 2, 2, generator=g, dtype=D)
    w, b = torch.randn(2, 3, generator=g, dtype=D), torch.randn(2, 3, generator=g, dtype=D)
    s = 4
    ours = bn.batch_norm(x, w, b, support_size=s)
    for t in range(2):
        sup = x[t, :s]
        mean = sup.mean(dim=(0, 2, 3), keepdim=True)
        var = sup.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        want = (x[t] - mean) / torch.sqrt(var + EPS) * w[t].view(1, -1, 1, 1) + b[t].view(1, -1, 1, 1)
        torch.testing.assert_close(ours[t], want)


@pytest.mark.parametrize("per_task", [False, True], ids=["shared", "per-task"])
@pytest.mark.parametrize("support_size", [None, 3])
def test_grouped_equals_per_task_to_second_order(per_task, support_size):
    # grouped layout [N, T*C, H, W] (fused kernel when transductive) against batch_norm on
    # [T, N, C, H, W]: forward, gradients, and a second-order term
    g = torch.Generator().manual_seed(4)
    t, n, c = 3, 5, 2
    x = torch.randn(t, n, c, 3, 3, generator=g, dtype=D, requires_grad=True)
    shape = (t, c) if per_task else (c,)
    w = (1 + 0.3 * torch.randn(shape, generator=g, dtype=D)).requires_grad_()
    b = torch.randn(shape, generator=g, dtype=D, requires_grad=True)

    def grouped(x, w, b):
        xg = x.permute(1, 0, 2, 3, 4).reshape(n, t * c, 3, 3).contiguous(memory_format=torch.channels_last)
        y = bn.grouped_batch_norm(xg, w, b, t, eps=EPS, support_size=support_size)
        return y.reshape(n, t, c, 3, 3).permute(1, 0, 2, 3, 4)

    def per_task_bn(x, w, b):
        return bn.batch_norm(x, w, b, eps=EPS, support_size=support_size)

    outs = []
    for f in (grouped, per_task_bn):
        y = f(x, w, b)
        gx, gw, gb = torch.autograd.grad((y.sin() * y).sum(), (x, w, b), create_graph=True)
        outs.append((y, gx, gw, gb, *torch.autograd.grad((gx**2).sum() + (gw * gb).sum(), (x, w, b))))
    for g_, r in zip(*outs):
        torch.testing.assert_close(g_, r, rtol=1e-10, atol=1e-10)


def test_conv_keeps_the_old_names():
    # plugins imported batch_norm from metareg.nets.conv before this module existed
    from metareg.nets import conv

    assert conv.batch_norm is bn.batch_norm and conv.grouped_batch_norm is bn.grouped_batch_norm
