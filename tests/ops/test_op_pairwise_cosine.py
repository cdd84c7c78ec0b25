"""metareg.ops.pairwise_cosine against its reference, on every device and dtype with a kernel.

Every kernel path is exercised on small shapes by forcing it (metareg._C._set_path_override):
1 = the fused/direct kernel, 2 = normalise + GEMM, 3 = the wide kernel (CPU forward; few long rows,
read once, products summed per chunk; other devices and the backward take the GEMM path);
0 lets the op choose.
"""

from __future__ import annotations

import pytest
import torch

from metareg import ops
from metareg.errors import ShapeError
from metareg.ops import _reference as ref
from metareg.ops._registration import extension, kernels

pytestmark = pytest.mark.skipif(extension is None, reason="metareg._C is not built")

DEVICES = [d for d in ("cpu", "cuda") if kernels.get(d) and (d == "cpu" or torch.cuda.is_available())]
FLOAT_DTYPES = [torch.float32, torch.float64]
HALF_DTYPES = [torch.float16, torch.bfloat16]
PATHS = [0, 1, 2, 3]

# (B, N, M, D); B = None means 2-D inputs.  N = 1, M = 1, D = 1, D not a multiple of any vector
# width, and a few rows more than the GEMM threshold so "auto" picks both paths.
SHAPES = [
    (3, 7, 5, 33),
    (2, 1, 4, 8),
    (2, 6, 1, 8),
    (2, 5, 3, 1),
    (1, 9, 9, 17),
    (4, 3, 2, 70),
    (2, 65, 66, 19),
    (None, 7, 5, 31),
    (None, 1, 1, 3),
]


@pytest.fixture(params=PATHS, ids=["auto", "fused", "gemm", "wide"])
def path(request):
    old = extension._set_path_override(request.param)
    yield request.param
    extension._set_path_override(old)


def _inputs(shape, dtype, device, gen, scale=1.0):
    B, N, M, D = shape
    lead = () if B is None else (B,)
    a = torch.randn(*lead, N, D, generator=gen, dtype=torch.float64) * scale
    b = torch.randn(*lead, M, D, generator=gen, dtype=torch.float64) * scale
    return a.to(device, dtype), b.to(device, dtype)


def _tol(dtype):
    return {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=2e-5),
            torch.float16: dict(rtol=2e-2, atol=5e-3), torch.bfloat16: dict(rtol=5e-2, atol=3e-2)}[dtype]


def _fwd_bwd(fn, a, b, grad):
    a = a.detach().requires_grad_()
    b = b.detach().requires_grad_()
    out = fn(a, b)
    ga, gb = torch.autograd.grad(out, (a, b), grad)
    return out, ga, gb


def _check_against_reference(a, b, dtype, gen):
    """Forward and both gradients vs the reference; half types are held to the float64 answer."""
    ref_dtype = torch.float64 if dtype in HALF_DTYPES else dtype
    out = ops.pairwise_cosine(a, b)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(a.device, dtype)
    got = _fwd_bwd(ops.pairwise_cosine, a, b, grad)
    want = _fwd_bwd(ref.pairwise_cosine, a.to(ref_dtype), b.to(ref_dtype), grad.to(ref_dtype))
    for g, w, name in zip(got, want, ("out", "grad_a", "grad_b")):
        assert g.dtype == dtype and g.shape == w.shape, name
        assert torch.isfinite(g).all(), name
        # Gradients of rows with small norms are large (~1/|x|): errors are judged against the
        # largest entry, as rounding in <g, xhat> * xhat is.
        tol = _tol(dtype)
        atol = tol["atol"] * max(1.0, float(w.detach().abs().max()))
        torch.testing.assert_close(g.to(ref_dtype), w, rtol=tol["rtol"], atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(device, dtype, shape, path):
    gen = torch.Generator().manual_seed(hash(shape) % 2**31)
    a, b = _inputs(shape, dtype, device, gen)
    _check_against_reference(a, b, dtype, gen)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES[:5], ids=str)
def test_half_on_cuda(dtype, shape, path):
    if "cuda" not in DEVICES:
        pytest.skip("needs a CUDA build and a GPU")
    gen = torch.Generator().manual_seed(1)
    a, b = _inputs(shape, dtype, "cuda", gen)
    _check_against_reference(a, b, dtype, gen)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_zero_rows_give_zero_not_nan(device, dtype, path):
    gen = torch.Generator().manual_seed(2)
    a, b = _inputs((2, 6, 5, 9), dtype, device, gen)
    a[0, 2] = 0
    b[1, 4] = 0
    b[0, :] = 0  # a whole side of zeros
    out = ops.pairwise_cosine(a, b)
    assert (out[0, 2] == 0).all() and (out[1, :, 4] == 0).all() and (out[0] == 0).all()
    _check_against_reference(a, b, dtype, gen)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1e15, 1e-6, 1e-12], ids=lambda s: f"{s:g}")
def test_huge_and_tiny_magnitudes(device, scale, path):
    # 1e-12 rows of D=9 have norms below eps: they are clamped (scaled by 1/eps), not normalised.
    gen = torch.Generator().manual_seed(3)
    for dtype in FLOAT_DTYPES:
        a, b = _inputs((2, 5, 4, 9), dtype, device, gen, scale)
        _check_against_reference(a, b, dtype, gen)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_beyond_squares_range(device, path):
    # |x| ~ 1e20: float32 squares overflow.  The float32 reference returns 0 there; the kernels
    # accumulate norms in double and agree with the float64 reference instead.
    gen = torch.Generator().manual_seed(4)
    a, b = _inputs((2, 5, 4, 16), torch.float64, device, gen, 1e20)
    want = ref.pairwise_cosine(a, b)
    assert want.abs().max() > 0.5
    got = ops.pairwise_cosine(a.float(), b.float())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    # Gradients scale as 1/|x| ~ 1e-20: compare relative to their size.
    grad = torch.randn(want.shape, generator=gen, dtype=torch.float64).to(device)
    got_g = _fwd_bwd(ops.pairwise_cosine, a.float(), b.float(), grad.float())[1:]
    want_g = _fwd_bwd(ref.pairwise_cosine, a, b, grad)[1:]
    for g, w in zip(got_g, want_g):
        torch.testing.assert_close(g.double() * 1e20, w * 1e20, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(None, 8, 8, 5000), (2, 3, 6, 4099), (None, 17, 5, 4500)], ids=str)
def test_wide_shapes_auto(device, dtype, shape):
    """Few long rows (the task-gradient matrices of the combiners) take the wide path on CPU when
    N, M <= 16 and D >= 4096 (the last shape is just past the row limit: the GEMM path)."""
    gen = torch.Generator().manual_seed(9)
    a, b = _inputs(shape, dtype, device, gen)
    _check_against_reference(a, b, dtype, gen)
    torch.testing.assert_close(ops.pairwise_cosine(a), ref.pairwise_cosine(a), **_tol(dtype))
    a[..., 1, :] = 0  # a zero row in the wide path: 0, not NaN
    out = ops.pairwise_cosine(a)
    assert torch.isfinite(out).all() and (out[..., 1, :] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_noncontiguous_and_expanded(device, path):
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(3, 19, 6, generator=gen, dtype=torch.float64).to(device).transpose(1, 2)  # [3, 6, 19]
    b = torch.randn(1, 4, 19, generator=gen, dtype=torch.float64).to(device).expand(3, 4, 19)
    assert not a.is_contiguous() and b.stride(0) == 0
    _check_against_reference(a, b, torch.float64, gen)
    a2 = torch.randn(8, 40, generator=gen, dtype=torch.float64).to(device)[::2, ::3]
    _check_against_reference(a2, a2[1:3], torch.float64, gen)


@pytest.mark.parametrize("device", DEVICES)
def test_b_omitted_means_a(device, path):
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    out = ops.pairwise_cosine(a)
    (ga,) = torch.autograd.grad(out, a, torch.ones_like(out))
    a_ref = a.detach().requires_grad_()
    want = ref.pairwise_cosine(a_ref)
    (ga_ref,) = torch.autograd.grad(want, a_ref, torch.ones_like(want))
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(ga, ga_ref)
    torch.testing.assert_close(out.diagonal(dim1=1, dim2=2), torch.ones(2, 5, dtype=torch.float64, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 4, 3, 5), (None, 3, 4, 6)], ids=str)
def test_gradcheck_and_gradgradcheck(device, shape, path):
    gen = torch.Generator().manual_seed(7)
    a, b = _inputs(shape, torch.float64, device, gen)
    a.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(ops.pairwise_cosine, (a, b))
    assert torch.autograd.gradgradcheck(ops.pairwise_cosine, (a, b))
    # The backward op alone: its own gradients (third order of the forward) are checked too.
    grad = torch.randn(ops.pairwise_cosine(a, b).shape, generator=gen, dtype=torch.float64).to(device)
    grad.requires_grad_()
    bwd = torch.ops.metareg.pairwise_cosine_backward
    assert torch.autograd.gradcheck(lambda g, x, y: bwd(g, x, y, 1e-8), (grad, a, b))


def test_reference_backward_is_the_gradient_of_the_reference():
    gen = torch.Generator().manual_seed(8)
    a, b = _inputs((2, 5, 4, 6), torch.float64, "cpu", gen)
    a[0, 1] = 0
    a = a.requires_grad_()
    b = b.requires_grad_()
    out = ref.pairwise_cosine(a, b)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    want = torch.autograd.grad(out, (a, b), grad)
    got = ref.pairwise_cosine_backward(grad, a.detach(), b.detach())
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    gen = torch.Generator().manual_seed(9)
    a, b = _inputs((2, 5, 3, 7), torch.float32, device, gen)
    a.requires_grad_()
    b.requires_grad_()
    torch.library.opcheck(torch.ops.metareg.pairwise_cosine.default, (a, b, 1e-8))
    torch.library.opcheck(torch.ops.metareg.pairwise_cosine.default, (a[0], b[0], 1e-6))
    grad = torch.randn(2, 5, 3, generator=gen).to(device).requires_grad_()
    torch.library.opcheck(torch.ops.metareg.pairwise_cosine_backward.default, (grad, a, b, 1e-8))


def _bad_inputs(device):
    f = dict(device=device)
    return [
        (torch.randn(5, **f), torch.randn(5, **f), "rank"),
        (torch.randn(2, 3, 4, **f), torch.randn(3, 4, **f), "rank"),
        (torch.randn(2, 3, 4, **f), torch.randn(3, 3, 4, **f), "batch"),
        (torch.randn(2, 3, 4, **f), torch.randn(2, 3, 5, **f), "feature"),
        (torch.randn(2, 3, 4, **f), torch.randn(2, 3, 4, dtype=torch.float64, **f), "dtype"),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_errors_name_the_op_and_shapes(device):
    for a, b, what in _bad_inputs(device):
        with pytest.raises(ShapeError, match=r"pairwise_cosine.*\[") as info:
            ops.pairwise_cosine(a, b)
        assert str(list(a.shape)) in str(info.value), what
        # The C++ checks say the same when the op is called directly.
        with pytest.raises(RuntimeError, match=r"metareg::pairwise_cosine") as info:
            torch.ops.metareg.pairwise_cosine(a, b)
        assert str(list(a.shape)) in str(info.value), what
    with pytest.raises(ShapeError, match="device"):
        ops.pairwise_cosine(torch.randn(2, 3, device=device), torch.randn(2, 3, device="meta"))
    with pytest.raises(ShapeError, match="floating"):
        ops.pairwise_cosine(torch.ones(2, 3, dtype=torch.int64, device=device))
    with pytest.raises(RuntimeError, match=r"metareg::pairwise_cosine_backward: grad must have the shape"):
        torch.ops.metareg.pairwise_cosine_backward(torch.randn(2, 3, 3), torch.randn(2, 3, 4), torch.randn(2, 2, 4),
                                                   1e-8)


def test_cpu_half_uses_reference_with_one_warning(recwarn):
    from metareg import ops as o

    o._warned.clear()
    a = torch.randn(2, 3, 4, dtype=torch.bfloat16)
    out = o.pairwise_cosine(a)
    o.pairwise_cosine(a)
    msgs = [w for w in recwarn.list if "reference" in str(w.message)]
    assert len(msgs) == 1 and "bfloat16" in str(msgs[0].message)
    torch.testing.assert_close(out, ref.pairwise_cosine(a))


# -- pairwise_cosine_norms: cosines within a and its row norms from one call ---------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(None, 8, 8, 5000), (2, 3, 3, 4099), (None, 5, 5, 7), (2, 17, 17, 4100)], ids=str)
def test_pairwise_cosine_norms_matches_reference(dtype, shape, path):
    gen = torch.Generator().manual_seed(11)
    a, _ = _inputs(shape, dtype, "cpu", gen)
    a[..., 1, :] = 0  # a zero row: cosine 0, norm 0
    cos, norms = ops.pairwise_cosine_norms(a)
    want_cos, want_norms = ref.pairwise_cosine_norms(a.double())
    assert cos.dtype == norms.dtype == dtype
    assert cos.shape == want_cos.shape and norms.shape == want_norms.shape
    torch.testing.assert_close(cos.double(), want_cos, **_tol(dtype))
    torch.testing.assert_close(norms.double(), want_norms, **_tol(dtype))
    # the Gram matrix comes back exactly as the combiners rebuild it
    nc = norms.double().clamp_min(1e-8)
    gram = a.double() @ a.double().transpose(-1, -2)
    torch.testing.assert_close(cos.double() * nc[..., :, None] * nc[..., None, :], gram,
                               rtol=_tol(dtype)["rtol"], atol=_tol(dtype)["atol"] * float(gram.abs().max()))


@pytest.mark.parametrize("scale", [1e20, 1e-25], ids=lambda s: f"{s:g}")
def test_pairwise_cosine_norms_outside_float32_squares(scale):
    # float32 squares overflow (1e20) or underflow (1e-25): the wide kernel hands over to the
    # normalise-first path and the norms come from vector_norm; both stay right
    gen = torch.Generator().manual_seed(12)
    a64 = torch.randn(6, 5000, generator=gen, dtype=torch.float64) * scale
    cos, norms = ops.pairwise_cosine_norms(a64.float())
    want_cos, want_norms = ref.pairwise_cosine_norms(a64)
    torch.testing.assert_close(cos.double(), want_cos, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norms.double(), want_norms, rtol=1e-4, atol=0.0)


def test_pairwise_cosine_norms_opcheck_and_grad_fallback():
    gen = torch.Generator().manual_seed(13)
    a = torch.randn(3, 4, 4500, generator=gen)
    torch.library.opcheck(torch.ops.metareg.pairwise_cosine_norms.default, (a, 1e-8))
    torch.library.opcheck(torch.ops.metareg.pairwise_cosine_norms.default, (a[0, :, :9], 1e-6))
    # the op is forward-only; an input that needs a gradient takes the differentiable composition
    x = a[0].double().requires_grad_()
    cos, norms = ops.pairwise_cosine_norms(x)
    (cos.sum() + norms.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ShapeError, match="pairwise_cosine"):
        ops.pairwise_cosine_norms(torch.randn(5))


def test_wide_path_is_taken_and_left_only_when_it_must():
    # a performance guard: a wrong check once sent every self-similarity call to the slow path
    # (results stayed right, the combiners got 30x slower)
    gen = torch.Generator().manual_seed(14)
    a = torch.randn(8, 5000, generator=gen)
    b = torch.randn(5, 5000, generator=gen)
    before = extension._wide_fallbacks()
    ops.pairwise_cosine(a)
    ops.pairwise_cosine(a, b)
    ops.pairwise_cosine_norms(a)
    ops.pairwise_cosine(a.double())
    assert extension._wide_fallbacks() == before
    ops.pairwise_cosine(a * 1e20)  # float32 squares overflow
    assert extension._wide_fallbacks() == before + 1
    z = a.clone()
    z[3] = 0
    ops.pairwise_cosine_norms(z)  # a zero row
    assert extension._wide_fallbacks() == before + 2  # once: the fallback does not retry the wide path
