"""metareg.ops.conv3x3_winograd (Winograd F(4x4, 3x3) on CPU): forward and gradients against
F.conv2d in float64 on grouped, ragged and tiny shapes in both memory formats, the compiled op
against the plain-torch Winograd of ``_reference``, float32 against float64, the same bits with 1
and 2 threads, the second derivative refused, opcheck, and Conv4 taking it only where it is
differentiated once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metareg import ops
from metareg.errors import ShapeError
from metareg.nets import differentiated_once
from metareg.nets.conv import conv4
from metareg.ops import _reference as ref
from metareg.ops._registration import extension
from thread_counts import at_thread_counts

needs_ext = pytest.mark.skipif(extension is None, reason="metareg._C is not built")
D = torch.float64

# (N, groups, C_in, C_out, H, W): Conv4's grouped query shape (scaled down), ragged tiles (H, W
# not multiples of 4), images smaller than one tile, one channel, one group
SHAPES = [(3, 2, 8, 6, 14, 14), (2, 3, 4, 5, 7, 9), (2, 1, 3, 2, 3, 5), (1, 2, 2, 3, 1, 1), (2, 1, 1, 1, 6, 4)]


def _case(n, groups, cin, cout, h, w, dtype=D, seed=0, layout=torch.channels_last):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, groups * cin, h, w, generator=g, dtype=D).to(dtype).contiguous(memory_format=layout)
    weight = torch.randn(groups * cout, cin, 3, 3, generator=g, dtype=D).to(dtype)
    return x, weight


@needs_ext
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["cl", "cf"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradients_equal_conv2d(shape, layout):
    x, weight = _case(*shape, layout=layout)
    groups = shape[1]
    leaves = [t.clone().requires_grad_() for t in (x, weight)]
    want_leaves = [t.clone().requires_grad_() for t in (x, weight)]
    got = ops.conv3x3_winograd(*leaves, groups)
    want = F.conv2d(*want_leaves, padding=1, groups=groups)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous(memory_format=torch.channels_last)
    cot = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=D)
    for a, b in zip(torch.autograd.grad(got, leaves, cot), torch.autograd.grad(want, want_leaves, cot)):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


@needs_ext
def test_compiled_op_is_the_reference_winograd():
    x, weight = _case(3, 2, 5, 4, 9, 7)
    cot = torch.randn(3, 8, 9, 7, generator=torch.Generator().manual_seed(3), dtype=D)
    torch.testing.assert_close(torch.ops.metareg.conv3x3_winograd.default(x, weight, 2),
                               ref.conv3x3_winograd(x, weight, 2), rtol=1e-12, atol=1e-12)
    got = torch.ops.metareg.conv3x3_winograd_backward.default(cot, x, weight, 2, True, True)
    want = ref.conv3x3_winograd_backward(cot, x, weight, 2)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
    # a gradient not asked for is an empty tensor
    only_x = torch.ops.metareg.conv3x3_winograd_backward.default(cot, x, weight, 2, True, False)
    assert only_x[1].numel() == 0
    torch.testing.assert_close(only_x[0], got[0], rtol=0, atol=0)


@needs_ext
def test_float32_is_float64_to_winograd_precision():
    # F(4x4, 3x3)'s transforms multiply by up to 8: errors a few times a direct convolution's
    x, weight = _case(4, 2, 64, 64, 14, 14)
    want = F.conv2d(x, weight, padding=1, groups=2)
    got = ops.conv3x3_winograd(x.float(), weight.float(), 2).double()
    err = (got - want).abs().max() / want.abs().max()
    assert err < 2e-5
    direct = (F.conv2d(x.float(), weight.float(), padding=1, groups=2).double() - want).abs().max() / want.abs().max()
    assert err < 50 * max(direct, 1e-7)


@needs_ext
def test_the_result_does_not_depend_on_the_thread_count():
    x, weight = _case(5, 2, 16, 16, 13, 11, dtype=torch.float32)
    cot = torch.randn(5, 32, 13, 11, generator=torch.Generator().manual_seed(4))

    def run():
        y = torch.ops.metareg.conv3x3_winograd.default(x, weight, 2)
        return y, *torch.ops.metareg.conv3x3_winograd_backward.default(cot, x, weight, 2, True, True)

    for a, b in zip(*at_thread_counts(run)):
        assert torch.equal(a, b)


@needs_ext
def test_a_groups_result_does_not_depend_on_the_other_groups():
    # a task's convolution and weight gradient are the same bits whether it shares its chunk with
    # one other task or three (a distributed run splits the meta-batch differently)
    x, weight = _case(6, 4, 16, 16, 14, 14, dtype=torch.float32)
    cot = torch.randn(6, 64, 14, 14, generator=torch.Generator().manual_seed(5))
    four = (torch.ops.metareg.conv3x3_winograd.default(x, weight, 4),
            *torch.ops.metareg.conv3x3_winograd_backward.default(cot, x, weight, 4, True, True))
    two = (torch.ops.metareg.conv3x3_winograd.default(x[:, :32], weight[:32], 2),
           *torch.ops.metareg.conv3x3_winograd_backward.default(cot[:, :32], x[:, :32], weight[:32], 2, True, True))
    y2, gx2, gw2 = two
    y4, gx4, gw4 = four
    assert torch.equal(y2, y4[:, :32]) and torch.equal(gx2, gx4[:, :32]) and torch.equal(gw2, gw4[:32])


@needs_ext
def test_second_derivative_is_refused_with_a_message():
    x, weight = (t.requires_grad_() for t in _case(2, 1, 3, 3, 6, 6))
    (gx,) = torch.autograd.grad(ops.conv3x3_winograd(x, weight).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        gx.sum().backward()


def test_shape_errors_name_the_op():
    x, weight = _case(2, 2, 3, 4, 6, 6)
    with pytest.raises(ShapeError, match="conv3x3_winograd"):
        ops.conv3x3_winograd(x, weight, 3)  # 6 channels are not 3 groups of 3
    with pytest.raises(ShapeError, match="conv3x3_winograd"):
        ops.conv3x3_winograd(x, weight[..., :2], 2)  # not 3x3


@needs_ext
def test_opcheck():
    x, weight = (t.requires_grad_() for t in _case(2, 2, 3, 4, 7, 5))
    torch.library.opcheck(torch.ops.metareg.conv3x3_winograd.default, (x, weight, 2))


@needs_ext
def test_conv4_takes_it_only_where_differentiated_once(monkeypatch):
    calls, real = [], ops.conv3x3_winograd
    monkeypatch.setattr(ops, "conv3x3_winograd", lambda *a: calls.append(a[0].shape) or real(*a))
    net = conv4((1, 28, 28), 5, width=16)
    flat = net.init_flat(torch.Generator().manual_seed(0)).expand(2, -1).clone().requires_grad_()
    x = torch.randn(2, 5, 1, 28, 28)
    out = net(flat, x)
    assert calls == []  # twice differentiable: F.conv2d
    with differentiated_once():
        once = net(flat, x)
    # the second and third blocks (14x14, 7x7, 16 channels); not the first (one channel) or 3x3
    assert [s[-2:] for s in calls] == [(14, 14), (7, 7)]
    torch.testing.assert_close(once, out, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        net(flat, x)
    assert len(calls) == 4
    narrow = conv4((1, 28, 28), 5, width=8)  # below WINOGRAD_MIN_CHANNELS
    with differentiated_once():
        narrow(narrow.init_flat(torch.Generator().manual_seed(0)).expand(2, -1), x)
    assert len(calls) == 4
