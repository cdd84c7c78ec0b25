"""Per-task batch norm for the task-batched backbones, and its fused kernel with a double
backward of our own.

Statistics are always those of the current task's examples (there are no running statistics: fast
weights change the activations of every task differently, so a running average across tasks means
nothing).  Three entry points, one definition:

* :func:`batch_norm`: plain differentiable torch on [T, N, C, H, W], statistics per task and
  channel over the N examples (or the first ``support_size``) and the spatial positions.  The
  specification, and the test oracle of the other two.
* :func:`grouped_batch_norm`: the same on the backbones' grouped layout [N, T*C, H, W] (task t's
  channels are the t-th block of C), where batch norm in training mode over the T*C channels is
  exactly per-task batch norm.
* :func:`fused_batch_norm`: training-mode batch norm of [N, C, H, W] through PyTorch's fused
  forward and backward kernels, with a double backward written out (:class:`_BatchNormBackward`)
  because PyTorch's own is slow on channels-last tensors.  Its derivatives to second order equal
  ``F.batch_norm``'s (tests/nets/test_batchnorm.py), so second-order MAML through it is exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batch_norm", "grouped_batch_norm", "grouped_affine", "fused_batch_norm"]


def batch_norm(x: Tensor, weight: Tensor, bias: Tensor, *, eps: float = 1e-5,
               support_size: int | None = None) -> Tensor:
    """Per-task batch norm of ``x`` [T, N, C, H, W] with affine ``weight``/``bias`` [C] or [T, C].

    Mean and (biased) variance are taken per task and channel over the N examples and the spatial
    positions, from all N examples or only the first ``support_size`` of them.
    """
    ref = x if support_size is None else x[:, :support_size]
    mean = ref.mean(dim=(1, 3, 4), keepdim=True)
    var = (ref - mean).pow(2).mean(dim=(1, 3, 4), keepdim=True)
    scale = torch.rsqrt(var + eps)
    c = x.shape[2]
    w = weight.view(-1 if weight.dim() == 2 else 1, 1, c, 1, 1)
    b = bias.view(-1 if bias.dim() == 2 else 1, 1, c, 1, 1)
    # fold the normalisation into one scale and shift: two ops on the big tensor instead of four
    a = scale * w
    return x * a + (b - mean * a)


def grouped_batch_norm(x: Tensor, weight: Tensor, bias: Tensor, t: int, *, eps: float = 1e-5,
                       support_size: int | None = None) -> Tensor:
    """Per-task batch norm of ``x`` [N, T*C, H, W] with affine ``weight``/``bias`` [C] (shared) or
    [T, C]: statistics per task and channel over the N examples (or the first ``support_size``)
    and the spatial positions.  Equals :func:`batch_norm` on the [T, N, C, H, W] layout."""
    tc = x.shape[1]
    w, b = grouped_affine(weight, bias, t)
    if support_size is None:
        return fused_batch_norm(x, w, b, eps)
    var, mean = torch.var_mean(x[:support_size], dim=(0, 2, 3), correction=0, keepdim=True)
    a = torch.rsqrt(var + eps) * w.view(1, tc, 1, 1)
    return torch.addcmul((b.view(1, tc, 1, 1) - mean * a), x, a)


def grouped_affine(weight: Tensor, bias: Tensor, t: int) -> tuple[Tensor, Tensor]:
    """Batch norm's ``weight``, ``bias`` [C] (shared by the tasks) or [T, C] (per task) as the
    [T*C] channels of the grouped layout."""
    if weight.dim() == 2:
        return weight.reshape(-1), bias.reshape(-1)
    return weight.repeat(t), bias.repeat(t)


def fused_batch_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Training-mode batch norm of ``x`` [N, C, H, W] with affine ``weight``/``bias`` [C]: mean and
    biased variance per channel over (N, H, W), no running statistics.  Equals
    ``F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)`` with its derivatives to
    second order, and is differentiable to third order."""
    return _BatchNorm.apply(x, weight, bias, eps)


_DIMS = (0, 2, 3)


def _like(g: Tensor, x: Tensor) -> Tensor:
    """``g`` in ``x``'s memory format.  Gradients reaching batch norm in the outer backward of
    second-order MAML come channels-first while the activations are channels-last, and the fused
    backward kernel on mixed formats took 258 ms on [5, 2048, 28, 28] against 18 ms (plus a 5 ms
    copy) on matching ones."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return g.contiguous(memory_format=torch.channels_last)
    return g


class _BatchNorm(torch.autograd.Function):
    """Training-mode batch norm of [N, C, H, W] (no running statistics): the fused forward and
    backward kernels, and a double backward of our own (:class:`_BatchNormBackward`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, mean, invstd = ctx.saved_tensors
        gx, gw, gb = _BatchNormBackward.apply(gy, x, weight, mean, invstd, ctx.eps)
        return gx, gw, gb, None


class _BatchNormBackward(torch.autograd.Function):
    """``native_batch_norm_backward`` (one fused kernel) with its derivative written out.

    PyTorch's own double backward of batch norm reduces with one ``sum`` per dimension, and the
    first of them (over N) is 30x slower on channels-last tensors than on channels-first ones
    (14 ms on [5, 512, 28, 28]); this one reduces over (N, H, W) at once.  With
    ``xh = (x - mean) * r``, ``r = 1 / sqrt(var + eps)``, means over the M = N*H*W entries of a
    channel, ``gm = mean(gy)``, ``m1 = mean(gy * xh)``, ``u = gy - gm - xh * m1``, the backward is
    ``gx = w r u``, ``gw = sum(gy xh)``, ``gb = sum(gy)``, and for cotangents ``ggx, ggw, ggb``
    (``S = sum(ggx)``, ``B = sum(ggx xh)``, ``A = sum(ggx u)``):

    * d/d gy = w r (ggx - S/M - xh B/M) + ggw xh + ggb
    * d/d w  = r A
    * d/d x  = (ggw r - w r^2 B/M) u - (w r^2 A/M) xh - w r^2 m1 (ggx - S/M - xh B/M)

    The statistics are recomputed from ``x`` in differentiable ops, so this is itself
    differentiable (third order) in ``x``; checked by gradcheck/gradgradcheck and against
    ``F.batch_norm``'s derivatives in tests/nets/test_batchnorm.py.
    """

    @staticmethod
    def forward(ctx, gy, x, weight, mean, invstd, eps):
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            _like(gy, x), x, weight, None, None, mean, invstd, True, eps, [True, True, True])
        ctx.save_for_backward(gy, x, weight)
        ctx.eps = eps
        return gx, gw, gb

    @staticmethod
    def backward(ctx, ggx, ggw, ggb):
        gy, x, weight = ctx.saved_tensors
        gy, ggx = _like(gy, x), _like(ggx, x)
        c = x.shape[1]
        m = x.numel() // c
        # not torch.var_mean: 20x slower than these three passes on channels-last [5, 2048, 28, 28]
        xc = x - x.mean(_DIMS, keepdim=True)
        r = torch.rsqrt((xc * xc).mean(_DIMS, keepdim=True) + ctx.eps)
        xh = xc * r
        w = weight.view(1, c, 1, 1)
        gm = gy.sum(_DIMS, keepdim=True) / m
        m1 = (gy * xh).sum(_DIMS, keepdim=True) / m
        s_ = ggx.sum(_DIMS, keepdim=True)
        b_ = (ggx * xh).sum(_DIMS, keepdim=True)
        a_ = (ggx * gy).sum(_DIMS, keepdim=True) - gm * s_ - m1 * b_
        wr = w * r
        wr2 = wr * r
        ggw4, ggb4 = ggw.view(1, c, 1, 1), ggb.view(1, c, 1, 1)
        # d/d gy = wr ggx + (ggw - wr B/M) xh + (ggb - wr S/M)
        g_gy = wr * ggx + (ggw4 - wr * b_ / m) * xh + (ggb4 - wr * s_ / m)
        # d/d x = k u - (wr2 A/M) xh - wr2 m1 (ggx - S/M - xh B/M), u = gy - gm - xh m1
        k = ggw4 * r - wr2 * b_ / m
        cx = -k * m1 - wr2 * a_ / m + wr2 * m1 * b_ / m
        c0 = -k * gm + wr2 * m1 * s_ / m
        g_x = k * gy + cx * xh - (wr2 * m1) * ggx + c0
        g_w = (r * a_).view(c)
        return g_gy, g_x, g_w, None, None, None
