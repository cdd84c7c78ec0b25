"""Plain-torch definitions of metareg's custom ops.

These are the specification (the C++/CUDA kernels must match them), the test oracle, and the
fallback used when the compiled extension ``metareg._C`` is not available.  They are written in
differentiable torch ops, so autograd (to any order) works through them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pairwise_cosine", "task_step"]


def pairwise_cosine(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of every row of ``a`` with every row of ``b``.

    a: [B, N, D], b: [B, M, D] -> [B, N, M].  Each row norm is clamped below at ``eps``
    (``a_i / max(|a_i|, eps)``), so a zero row gives similarity 0, never NaN.
    """
    na = a.norm(dim=-1, keepdim=True).clamp_min(eps)
    nb = b.norm(dim=-1, keepdim=True).clamp_min(eps)
    return torch.matmul(a / na, (b / nb).transpose(-1, -2))


def task_step(params: Tensor, grads: Tensor, lr: float | Tensor) -> Tensor:
    """One gradient step for every task of a meta-batch: ``params - lr * grads``.

    params: [P] (one starting point shared by all tasks) or [T, P]; grads: [T, P];
    lr: a float, a [P] tensor (per-parameter rates, Meta-SGD) or a [T, P] tensor.  Returns [T, P].
    """
    if isinstance(lr, Tensor):
        return params - lr * grads
    return torch.add(params, grads, alpha=-lr)
