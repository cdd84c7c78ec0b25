"""metareg.ops.bn_pool_relu (training-mode batch norm -> max-pool 2 -> ReLU in one CPU kernel):
forward and gradients against F.batch_norm + max_pool2d + relu in float64, odd sizes, negative and
zero weights, float32 against float64, the second derivative refused, opcheck, and Conv4 taking it
only where it is differentiated once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metareg import ops
from metareg.errors import ShapeError
from metareg.ops import _reference as ref
from metareg.ops._registration import extension
from thread_counts import at_thread_counts

needs_ext = pytest.mark.skipif(extension is None, reason="metareg._C is not built")


def _case(n=3, c=5, h=6, w=6, dtype=torch.float64, seed=0, layout=torch.channels_last):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 2 + 0.7).to(dtype)
    weight = (torch.randn(c, generator=g, dtype=torch.float64)).to(dtype)
    bias = (torch.randn(c, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    return x.contiguous(memory_format=layout), weight, bias


def _torch_ops(x, weight, bias, eps=1e-5):
    return torch.relu(F.max_pool2d(F.batch_norm(x, None, None, weight, bias, training=True, eps=eps), 2))


SHAPES = [(3, 5, 6, 6), (2, 4, 7, 5), (1, 3, 2, 2), (4, 17, 9, 8), (5, 128, 14, 14)]


@needs_ext
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["cl", "cf"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradients_equal_the_three_torch_ops(shape, layout):
    x, weight, bias = _case(*shape, layout=layout)
    weight[0] = -weight[0].abs()  # a negative scale: the window's max is the smallest x
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    want_leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    got = ops.bn_pool_relu(*leaves)
    want = _torch_ops(*want_leaves)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous(memory_format=torch.channels_last)
    cot = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g_got = torch.autograd.grad(got, leaves, cot)
    g_want = torch.autograd.grad(want, want_leaves, cot)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@needs_ext
def test_compiled_op_returns_what_the_reference_defines():
    x, weight, bias = _case(4, 6, 9, 7)
    got = torch.ops.metareg.bn_pool_relu.default(x, weight, bias, 1e-5)
    want = ref.bn_pool_relu_stats(x, weight, bias, 1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    grad = torch.randn(got[0].shape, dtype=torch.float64)
    args = (grad, x, weight, got[0], got[1], got[2], got[3])
    for a, b in zip(torch.ops.metareg.bn_pool_relu_backward.default(*args), ref.bn_pool_relu_backward(*args)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@needs_ext
def test_zero_weight_ties_and_nan_follow_max_pool():
    x, weight, bias = _case(2, 3, 4, 4)
    weight[1] = 0.0  # every element of a window gives the same output: max_pool2d takes the first
    x[0, 2, 0, 0] = x[0, 2, 0, 1] = x[0, 2, 1, 0] = x[0, 2, 1, 1] = 1.5  # an exact tie
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    want_leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    got, want = ops.bn_pool_relu(*leaves), _torch_ops(*want_leaves)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    cot = torch.ones_like(want)
    for a, b in zip(torch.autograd.grad(got, leaves, cot), torch.autograd.grad(want, want_leaves, cot)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    x[1, 0, 2, 3] = float("nan")  # NaN propagates like the three ops (its channel's statistics too)
    torch.testing.assert_close(ops.bn_pool_relu(x, weight, bias), _torch_ops(x, weight, bias), equal_nan=True)


@needs_ext
def test_float32_is_float64_to_float32_precision():
    x, weight, bias = _case(6, 64, 14, 14)
    cot = torch.randn(6, 64, 7, 7, dtype=torch.float64)
    results = []
    for dtype in (torch.float64, torch.float32):
        leaves = [t.to(dtype).requires_grad_() for t in (x, weight, bias)]
        out = ops.bn_pool_relu(*leaves)
        results.append((out.detach(), *torch.autograd.grad(out, leaves, cot.to(dtype))))
    for a64, a32 in zip(*results):
        assert a32.dtype == torch.float32
        torch.testing.assert_close(a32.double(), a64, rtol=1e-4, atol=1e-5 * float(a64.abs().max()))


@needs_ext
def test_the_result_does_not_depend_on_the_thread_count():
    x, weight, bias = _case(8, 64, 14, 14, dtype=torch.float32)
    leaves = [t.requires_grad_() for t in (x, weight, bias)]

    def run():
        out = ops.bn_pool_relu(*leaves)
        return out, *torch.autograd.grad(out.square().sum(), leaves)

    for a, b in zip(*at_thread_counts(run)):
        assert torch.equal(a, b)


@needs_ext
def test_second_derivative_is_refused_with_a_message():
    x, weight, bias = (t.requires_grad_() for t in _case())
    out = ops.bn_pool_relu(x, weight, bias)
    (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        gx.sum().backward()


def test_shape_errors_name_the_op():
    x, weight, bias = _case()
    with pytest.raises(ShapeError, match="bn_pool_relu"):
        ops.bn_pool_relu(x[:, :, :1], weight, bias)  # too short to pool
    with pytest.raises(ShapeError, match="bn_pool_relu"):
        ops.bn_pool_relu(x, weight[:-1], bias)
    with pytest.raises(ShapeError, match="bn_pool_relu"):
        ops.bn_pool_relu(x[0], weight, bias)


@needs_ext
def test_opcheck():
    x, weight, bias = _case(2, 3, 5, 4, dtype=torch.float32)
    torch.library.opcheck(torch.ops.metareg.bn_pool_relu.default, (x, weight, bias, 1e-5))
    out, xmax, mean, invstd = torch.ops.metareg.bn_pool_relu.default(x, weight, bias, 1e-5)
    torch.library.opcheck(torch.ops.metareg.bn_pool_relu_backward.default,
                          (torch.randn(out.shape), x, weight, out, xmax, mean, invstd),
                          test_utils=("test_schema", "test_faketensor"))


@needs_ext
def test_conv4_takes_the_op_only_where_differentiated_once(monkeypatch):
    from metareg.nets import differentiated_once
    from metareg.nets.conv import conv4

    calls = []
    real = ops.bn_pool_relu
    monkeypatch.setattr(ops, "bn_pool_relu", lambda *a: calls.append(1) or real(*a))
    net = conv4((1, 12, 12), 3, width=4, depth=2)
    flat = net.init_flat(torch.Generator().manual_seed(0), torch.float64).expand(2, -1).clone().requires_grad_()
    x = torch.randn(2, 5, 1, 12, 12, dtype=torch.float64)
    plain = net(flat, x)
    assert calls == []  # second-order paths keep the composed ops
    with differentiated_once():
        fused = net(flat, x)
    assert len(calls) == 2  # one per block
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    cot = torch.randn(plain.shape, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(fused, flat, cot)[0], torch.autograd.grad(plain, flat, cot)[0],
                               rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        net(flat, x)
    assert len(calls) == 4  # no gradient at all: no promise needed


@needs_ext
@pytest.mark.parametrize("algo", ["protonet", "maml", "anil"])
def test_learner_gradients_are_the_same_with_and_without_the_op(algo, monkeypatch):
    # each learner that promises single differentiation gets the gradient of the composed ops
    import metareg.nets.conv as conv
    from metareg.learners import LearnerContext
    from metareg.nets.conv import conv4
    from metareg.plugins import get_registry
    from metareg.tasks import TaskBatch, TaskInfo

    d, shape, ways = torch.float64, (1, 16, 16), 3
    spec = get_registry().get("algorithm", algo)
    info = TaskInfo(input_shape=shape, output_dim=ways, loss="cross_entropy", metric="accuracy")
    ctx = LearnerContext(task=info, make_backbone=lambda name=None: conv4(shape, ways, width=4),
                         generator=torch.Generator().manual_seed(2), device=torch.device("cpu"), dtype=d)
    learner = spec.factory(spec.config(), ctx)
    g = torch.Generator().manual_seed(7)
    batch = TaskBatch(torch.randn(2, 3, *shape, generator=g, dtype=d), torch.arange(3).expand(2, 3),
                      torch.randn(2, 6, *shape, generator=g, dtype=d), torch.arange(3).repeat(2).expand(2, 6))
    calls, real = [], ops.bn_pool_relu
    monkeypatch.setattr(ops, "bn_pool_relu", lambda *a: calls.append(1) or real(*a))
    grads = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(conv, "is_differentiated_once", lambda: False)
        learner.zero_grad()
        learner.step(batch)
        grads.append(torch.cat([p.grad.flatten() for p in learner.parameters() if p.grad is not None]))
        assert bool(calls) == fused
        calls.clear()
    assert grads[1].abs().max() > 1e-6
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


@needs_ext
def test_torch_compile_fullgraph_forward_and_backward():
    # aot_eager traces the op and its backward through the fake kernels and the registered autograd
    x, weight, bias = _case(2, 3, 6, 5, dtype=torch.float32)

    def f(x, w, b):
        return ops.bn_pool_relu(x, w, b).square().sum()

    eager = [t.clone().requires_grad_() for t in (x, weight, bias)]
    compiled = [t.clone().requires_grad_() for t in (x, weight, bias)]
    torch._dynamo.reset()
    y_e, y_c = f(*eager), torch.compile(f, fullgraph=True, backend="aot_eager")(*compiled)
    torch.testing.assert_close(y_c, y_e)
    y_e.backward()
    y_c.backward()
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c.grad, e.grad)
