"""metareg.ops.gram (a a^T, the combiners' Gram matrix) against its reference on every CPU path.

The op picks its path by shape (csrc/cpu/pairwise_cosine.cpp): the wide one-read pass for few
long rows, a blocked GEMM for long rows, a plain GEMM otherwise; the shapes below hit each, and the
path override (3 = wide, anything else = no wide) forces the wide pass on small shapes too.
"""

from __future__ import annotations

import pytest
import torch

from metareg import ops
from metareg.errors import ShapeError
from metareg.ops import _reference as ref
from metareg.ops._registration import extension

needs_ext = pytest.mark.skipif(extension is None, reason="metareg._C is not built")

# (B, N, D); B = None means 2-D.  8 x 5000: wide; 3 x 70000 and 20 x 70000: blocked (4+ blocks of
# 16384, with a remainder); 17 x 4100: just past the wide rows limit; 5 x 7, 1 x 1: GEMM.
SHAPES = [(None, 8, 5000), (2, 3, 4099), (None, 3, 70_000), (None, 20, 70_000), (2, 2, 65_536 + 5),
          (None, 17, 4100), (None, 5, 7), (3, 1, 1), (None, 16, 4096)]
TOL = {torch.float64: {"rtol": 1e-12, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-5}}


@pytest.fixture(params=[0, 1, 3], ids=["auto", "no-wide", "wide"])
def path(request):
    if extension is None:
        yield 0
        return
    old = extension._set_path_override(request.param)
    yield request.param
    extension._set_path_override(old)


def _a(shape, dtype, seed=0, scale=1.0):
    b, n, d = shape
    gen = torch.Generator().manual_seed(seed)
    lead = () if b is None else (b,)
    return (torch.randn(*lead, n, d, generator=gen, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype, path):
    a = _a(shape, dtype)
    a[..., 0, :] = 0  # a zero row: a zero row and column of G
    got = ops.gram(a)
    want = ref.gram(a.double())
    assert got.dtype == dtype and got.shape == want.shape
    tol = TOL[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol["rtol"], atol=tol["atol"] * float(want.abs().max()))


@needs_ext
def test_wide_path_is_at_least_as_accurate_as_gemm():
    # products summed in double: against float64, the float32 wide answer is no worse than float32 a @ a^T
    a = _a((None, 8, 200_000), torch.float32, seed=1)
    want = ref.gram(a.double())
    err_op = float((ops.gram(a).double() - want).abs().max())
    err_mm = float((ref.gram(a).double() - want).abs().max())
    assert err_op <= err_mm


@pytest.mark.parametrize("scale", [1e20, 1e-25], ids=lambda s: f"{s:g}")
def test_float32_out_of_range_is_what_a_gemm_gives(scale, path):
    # overflow gives inf and underflow 0 as a float32 GEMM would: normalized_gram rescales then
    a = _a((None, 6, 5000), torch.float32, seed=2, scale=scale)
    got = ops.gram(a)
    if scale > 1:
        assert torch.isinf(got.diagonal()).all()
    else:
        assert got.abs().max() < 1e-37


def test_empty_and_zero_width():
    assert ops.gram(torch.zeros(0, 5)).shape == (0, 0)
    assert torch.equal(ops.gram(torch.zeros(3, 0)), torch.zeros(3, 3))
    assert ops.gram(torch.zeros(2, 0, 4)).shape == (2, 0, 0)


def test_non_contiguous_input():
    a = _a((None, 8, 10_000), torch.float64, seed=3)
    t = a[:, ::2]
    torch.testing.assert_close(ops.gram(t), ref.gram(t), rtol=1e-12, atol=1e-9)


def test_shape_errors_name_the_op():
    with pytest.raises(ShapeError, match="metareg.ops.gram"):
        ops.gram(torch.randn(5))
    with pytest.raises(ShapeError, match="metareg.ops.gram"):
        ops.gram(torch.randn(2, 3, 4, 5))
    with pytest.raises(ShapeError, match="metareg.ops.gram"):
        ops.gram(torch.ones(3, 4, dtype=torch.long))


def test_gradient_takes_the_differentiable_reference():
    # the compiled op is forward-only; an input that needs a gradient gets a @ a^T
    a = _a((None, 4, 5000), torch.float64, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(ops.gram, (a[:, :7].detach().requires_grad_(),))
    (ops.gram(a) ** 2).sum().backward()
    torch.testing.assert_close(a.grad, 4 * (a @ a.T) @ a)
    with torch.no_grad():
        torch.testing.assert_close(ops.gram(a), ref.gram(a))


def test_other_dtypes_fall_back_without_a_kernel(recwarn):
    a = _a((None, 3, 9), torch.bfloat16)
    torch.testing.assert_close(ops.gram(a), ref.gram(a))


@needs_ext
def test_opcheck():
    a = _a((2, 3, 4500), torch.float32, seed=5)
    torch.library.opcheck(torch.ops.metareg.gram.default, (a,))
    torch.library.opcheck(torch.ops.metareg.gram.default, (a[0, :, :9],))
    torch.library.opcheck(torch.ops.metareg.gram.default, (_a((None, 3, 70_000), torch.float64),))


@needs_ext
def test_torch_compile_fullgraph():
    a = _a((None, 8, 5000), torch.float32, seed=6)
    torch._dynamo.reset()
    f = torch.compile(lambda x: ops.gram(x).trace(), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(a), ops.gram(a).trace())
