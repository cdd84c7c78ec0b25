"""Hypothesis fuzzing of the custom ops against the plain-torch reference, and their refusal of
bad arguments (issue 12: meta tensors beside real ones, non-numeric lr, invalid eps)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metareg import ops
from metareg.errors import ConfigError, ShapeError
from metareg.ops import _reference

DTYPES = st.sampled_from([torch.float32, torch.float64])
SCALES = st.sampled_from([1e-6, 1e-2, 1.0, 1e3, 1e8])


def _tensor(seed, shape, dtype, scale, zero_rows=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
    if zero_rows:
        t.view(-1, shape[-1])[:zero_rows] = 0
    return t.to(dtype)


def _close(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(0, 3), n=st.integers(1, 9), m=st.integers(1, 9),
       d=st.sampled_from([1, 2, 7, 64, 300, 5000]), dtype=DTYPES, scale=SCALES, zero=st.integers(0, 2),
       batched=st.booleans())
def test_pairwise_cosine_matches_the_reference(seed, b, n, m, d, dtype, scale, zero, batched):
    shape_a, shape_b = ((b, n, d), (b, m, d)) if batched else ((n, d), (m, d))
    a = _tensor(seed, shape_a, dtype, scale, zero_rows=min(zero, n))
    c = _tensor(seed + 1, shape_b, dtype, scale)
    torch.testing.assert_close(ops.pairwise_cosine(a, c), _reference.pairwise_cosine(a, c, 1e-8), **_close(dtype))
    cos, norms = ops.pairwise_cosine_norms(a)
    rcos, rnorms = _reference.pairwise_cosine_norms(a, 1e-8)
    torch.testing.assert_close(cos, rcos, **_close(dtype))
    torch.testing.assert_close(norms, rnorms.to(norms.dtype), **_close(dtype))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), t=st.integers(1, 6), p=st.sampled_from([1, 3, 17, 1000, 40000]), dtype=DTYPES,
       shared=st.booleans(), lr_kind=st.sampled_from(["float", "scalar", "per_param", "per_task"]),
       lr=st.floats(-10, 10, allow_nan=False))
def test_task_step_matches_the_reference(seed, t, p, dtype, shared, lr_kind, lr):
    params = _tensor(seed, (p,) if shared else (t, p), dtype, 1.0)
    grads = _tensor(seed + 1, (t, p), dtype, 1.0)
    rate = {"float": lr, "scalar": torch.tensor(lr, dtype=dtype), "per_param": _tensor(seed + 2, (p,), dtype, 1.0),
            "per_task": _tensor(seed + 3, (t, p), dtype, 1.0)}[lr_kind]
    torch.testing.assert_close(ops.task_step(params, grads, rate), _reference.task_step(params, grads, rate),
                               **_close(dtype))


def test_meta_tensors_beside_real_ones_are_refused():
    real, meta = torch.randn(3, 4), torch.empty(3, 4, device="meta")
    for call in (lambda: ops.task_step(real, meta, 0.1), lambda: ops.task_step(meta, real, 0.1),
                 lambda: ops.pairwise_cosine(real, meta), lambda: ops.pairwise_cosine(meta, real)):
        with pytest.raises(ShapeError, match="device"):
            call()
    assert ops.task_step(meta, meta, 0.1).device.type == "meta"  # meta alone: shape propagation works


@pytest.mark.parametrize("lr", ["0.1", None, True, float("nan"), math.inf])
def test_task_step_refuses_a_lr_that_is_not_a_finite_number(lr):
    with pytest.raises(ConfigError, match="lr must be"):
        ops.task_step(torch.zeros(3), torch.zeros(2, 3), lr)


@pytest.mark.parametrize("eps", [float("nan"), -1.0, 0.0, 1e-300, "1e-8", math.inf])
def test_invalid_eps_is_refused(eps):
    a = torch.randn(2, 5)
    with pytest.raises(ConfigError, match="eps must be"):
        ops.pairwise_cosine(a, eps=eps)
    with pytest.raises(ConfigError, match="eps must be"):
        ops.pairwise_cosine_norms(a, eps=eps)
    ops.pairwise_cosine(a.double(), eps=1e-300)  # a normal float64: allowed there
