"""metareg.ops.mlp_meta_grad (MAML's meta-gradient of a ReLU MLP in closed form, one C++ op)
against its reference, autograd through the unrolled inner loop, in float64; float32 against
float64; the learner's default path goes through it."""

from __future__ import annotations

import pytest
import torch

from metareg import ops
from metareg.errors import ShapeError
from metareg.ops import _reference as ref
from metareg.ops._registration import extension

needs_ext = pytest.mark.skipif(extension is None, reason="metareg._C is not built")


def _case(widths, t=4, s=5, q=7, loss="mse", dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = sum(o * (i + 1) for i, o in zip(widths, widths[1:]))
    theta = (torch.randn(p, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    sx = torch.randn(t, s, widths[0], generator=g, dtype=torch.float64).to(dtype)
    qx = torch.randn(t, q, widths[0], generator=g, dtype=torch.float64).to(dtype)
    if loss == "mse":
        sy = torch.randn(t, s, widths[-1], generator=g, dtype=torch.float64).to(dtype)
        qy = torch.randn(t, q, widths[-1], generator=g, dtype=torch.float64).to(dtype)
    else:
        sy = torch.randint(widths[-1], (t, s), generator=g)
        qy = torch.randint(widths[-1], (t, q), generator=g)
    return theta, sx, sy, qx, qy


CASES = [([1, 40, 40, 1], "mse"), ([6, 5, 3], "mse"), ([4, 3], "mse"), ([8, 7, 6, 5], "cross_entropy"),
         ([3, 4], "cross_entropy")]


@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("widths,loss", CASES, ids=lambda c: str(c))
def test_matches_autograd_through_the_unrolled_loop(widths, loss, steps, first_order):
    theta, sx, sy, qx, qy = _case(widths, loss=loss)
    lr = torch.tensor(0.3, dtype=torch.float64)
    got = ops.mlp_meta_grad(theta, widths, sx, sy, qx, qy, lr, steps, loss=loss, first_order=first_order, lr_grad=True)
    want = ref.mlp_meta_grad(theta, widths, sx, sy, qx, qy, lr, steps, loss == "cross_entropy", first_order, True)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_per_parameter_rates_and_a_float_rate():
    widths = [2, 6, 6, 2]
    theta, sx, sy, qx, qy = _case(widths, seed=1)
    rates = torch.rand(theta.numel(), generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.2
    got = ops.mlp_meta_grad(theta, widths, sx, sy, qx, qy, rates, 2, lr_grad=True)
    want = ref.mlp_meta_grad(theta, widths, sx, sy, qx, qy, rates, 2, False, False, True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    losses, d_theta, d_lr = ops.mlp_meta_grad(theta, widths, sx, sy, qx, qy, 0.05, 1)
    assert d_lr.numel() == 0
    want = ref.mlp_meta_grad(theta, widths, sx, sy, qx, qy, torch.tensor(0.05, dtype=torch.float64), 1, False, False,
                             False)
    torch.testing.assert_close(d_theta, want[1], rtol=1e-10, atol=1e-12)


def test_float32_is_float64_to_float32_precision():
    widths = [1, 40, 40, 1]
    case64 = _case(widths, t=25, s=10, q=10)
    case32 = [x.float() if x.is_floating_point() else x for x in case64]
    got = ops.mlp_meta_grad(case32[0], widths, *case32[1:], 0.01, 2)
    want = ops.mlp_meta_grad(case64[0], widths, *case64[1:], 0.01, 2)
    assert got[1].dtype == torch.float32
    torch.testing.assert_close(got[1].double(), want[1], rtol=1e-4, atol=1e-5 * float(want[1].abs().max()))


def test_shape_errors_name_the_op():
    theta, sx, sy, qx, qy = _case([3, 4, 2])
    with pytest.raises(ShapeError, match="mlp_meta_grad"):
        ops.mlp_meta_grad(theta[:-1], [3, 4, 2], sx, sy, qx, qy, 0.1)  # one parameter short
    with pytest.raises(ShapeError, match="mlp_meta_grad"):
        ops.mlp_meta_grad(theta, [3, 4, 2], sx[..., :2], sy, qx, qy, 0.1)  # inputs of the wrong width
    with pytest.raises(ShapeError, match="mlp_meta_grad"):
        ops.mlp_meta_grad(theta, [3, 4, 2], sx, sy[:, :, :1], qx, qy, 0.1)  # targets of the wrong width


@needs_ext
def test_opcheck():
    theta, sx, sy, qx, qy = _case([3, 4, 2], dtype=torch.float32)
    lr = torch.tensor(0.1)
    torch.library.opcheck(torch.ops.metareg.mlp_meta_grad.default,
                          (theta, [3, 4, 2], sx, sy, qx, qy, lr, 2, False, False, True))
    theta, sx, sy, qx, qy = _case([3, 5, 4], loss="cross_entropy")
    torch.library.opcheck(torch.ops.metareg.mlp_meta_grad.default,
                          (theta, [3, 5, 4], sx, sy, qx, qy, torch.tensor(0.1, dtype=torch.float64), 1, True, True,
                           False))


@needs_ext
def test_maml_takes_the_op_on_an_mlp(monkeypatch):
    from metareg.runner import Run

    calls = []
    real = ops.mlp_meta_grad

    def spy(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "mlp_meta_grad", spy)
    run = Run("maml", "sinusoid", {"dtype": "float64"})
    run.build()
    run.learner.step(run.bench.train_batch(torch.Generator().manual_seed(0)).to("cpu", torch.float64))
    assert calls == [[1, 40, 40, 1]]
