"""Plain-torch definitions of metareg's custom ops.

These are the specification (the C++/CUDA kernels must match them), the test oracle, and the
fallback used when the compiled extension ``metareg._C`` is not available.  They are written in
differentiable torch ops, so autograd (to any order) works through them.

The ``*_backward`` functions spell out the gradients the kernels compute; they are what the
autograd of the compiled backward ops differentiates (second-order MAML through the ops), and the
tests check them against autograd of the forward definitions.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pairwise_cosine", "pairwise_cosine_norms", "pairwise_cosine_backward", "gram", "task_step",
           "task_step_backward", "mlp_meta_grad", "bn_pool_relu", "bn_pool_relu_stats", "bn_pool_relu_backward",
           "conv3x3_winograd", "conv3x3_winograd_backward"]


def pairwise_cosine(a: Tensor, b: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of every row of ``a`` with every row of ``b``.

    a: [B, N, D], b: [B, M, D] -> [B, N, M] (or a [N, D], b [M, D] -> [N, M]); ``b=None`` means
    ``b = a``.  Each row norm is clamped below at ``eps`` (``a_i / max(|a_i|, eps)``), so a zero
    row gives similarity 0, never NaN.
    """
    if b is None:
        b = a
    na = a.norm(dim=-1, keepdim=True).clamp_min(eps)
    nb = b.norm(dim=-1, keepdim=True).clamp_min(eps)
    return torch.matmul(a / na, (b / nb).transpose(-1, -2))


def pairwise_cosine_norms(a: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """``(pairwise_cosine(a, a, eps), |a_i|)``: the cosines within ``a`` [B, N, D] (or [N, D]) and
    the unclamped row norms [B, N] (or [N]), so that ``cos * max(n_i, eps) * max(n_j, eps)`` is the
    Gram matrix ``a a^T``."""
    return pairwise_cosine(a, a, eps), torch.linalg.vector_norm(a, dim=-1)


def gram(a: Tensor) -> Tensor:
    """The Gram matrix of the rows of ``a``: a [B, N, D] -> ``a a^T`` [B, N, N] (or 2-D without B)."""
    return torch.matmul(a, a.transpose(-1, -2))


def _normalized(x: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    norm = x.norm(dim=-1, keepdim=True)
    inv = 1.0 / norm.clamp_min(eps)
    # clamp_min passes gradient where norm >= eps: only those rows get the radial correction.
    return x * inv, inv, (norm >= eps).to(x.dtype)


def pairwise_cosine_backward(grad: Tensor, a: Tensor, b: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`pairwise_cosine` with respect to ``a`` and ``b`` given ``grad`` [B, N, M].

    With ``ah = a / max(|a|, eps)``: ``g = grad @ bh``, and
    ``grad_a = (g - [|a| >= eps] * <g, ah> * ah) / max(|a|, eps)`` row by row (symmetrically for b
    with ``grad^T @ ah``).  ``<g, ah>`` equals the row sum of ``grad * out``, so the output need not
    be kept.
    """
    ah, ia, ma = _normalized(a, eps)
    bh, ib, mb = _normalized(b, eps)
    ga = torch.matmul(grad, bh)
    gb = torch.matmul(grad.transpose(-1, -2), ah)
    ga = ia * (ga - ma * (ga * ah).sum(-1, keepdim=True) * ah)
    gb = ib * (gb - mb * (gb * bh).sum(-1, keepdim=True) * bh)
    return ga, gb


def task_step(params: Tensor, grads: Tensor, lr: float | Tensor) -> Tensor:
    """One gradient step for every task of a meta-batch: ``params - lr * grads``.

    params: [P] (one starting point shared by all tasks) or [T, P]; grads: [T, P];
    lr: a float, a 0-d tensor, a [P] tensor (per-parameter rates, Meta-SGD) or a [T, P] tensor.
    Returns [T, P].
    """
    if isinstance(lr, Tensor):
        return params - lr * grads
    return torch.add(params, grads, alpha=-lr)


def _sum_to(x: Tensor, shape: torch.Size) -> Tensor:
    """Sum the broadcast dimensions of ``x`` ([T, P]) back to ``shape`` ([], [P] or [T, P])."""
    if x.shape == shape:
        return x
    if len(shape) == 0:
        return x.sum()
    return x.sum(0)


def task_step_backward(grad: Tensor, grads: Tensor, lr: Tensor, params_shared: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`task_step` with a tensor ``lr``: (d params, d grads, d lr).

    d params is ``grad`` summed over tasks when ``params_shared`` (params [P]), else ``grad``;
    d grads is ``-lr * grad``; d lr is ``-grad * grads`` summed to lr's shape.
    """
    d_params = grad.sum(0) if params_shared else grad
    return d_params, -lr * grad, _sum_to(-grad * grads, lr.shape)


def _mlp(flat: Tensor, widths, x: Tensor) -> Tensor:
    """The ReLU MLP of ``widths`` at flat parameters [P] (shared) or [T, P] (per task) on x [T, N, in]."""
    t = x.shape[0]
    flat = flat.expand(t, -1) if flat.dim() == 1 else flat
    off = 0
    for i in range(len(widths) - 1):
        n_in, n_out = widths[i], widths[i + 1]
        w = flat[:, off: off + n_out * n_in].reshape(t, n_out, n_in)
        off += n_out * n_in
        b = flat[:, off: off + n_out]
        off += n_out
        x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        if i < len(widths) - 2:
            x = torch.relu(x)
    return x


def _task_losses(pred: Tensor, y: Tensor, cross_entropy: bool) -> Tensor:
    if cross_entropy:
        t, n = y.shape
        return torch.nn.functional.cross_entropy(pred.reshape(t * n, -1), y.reshape(t * n),
                                                 reduction="none").view(t, n).mean(1)
    return (pred - y.reshape(pred.shape)).pow(2).mean((1, 2))


def mlp_meta_grad(theta: Tensor, widths, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                  lr: Tensor, steps: int, cross_entropy: bool, first_order: bool,
                  lr_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """MAML's meta-gradient for a ReLU MLP by autograd through the unrolled inner loop.

    ``steps`` inner steps ``theta_t <- theta_t - lr * grad L_t^support(theta_t)`` from ``theta`` [P]
    for every task, then the query losses L_t [T]; returns (L [T], d mean(L) / d theta [P],
    d mean(L) / d lr (lr's shape; an empty [0] tensor unless ``lr_grad``)).  ``first_order``
    treats the inner gradients as constants.  Layout as :func:`metareg.nets.mlp`: each layer's
    weight [out, in] then bias [out]; ReLU after every layer but the last; mean squared error on
    [T, N, out] targets or cross-entropy on int64 labels [T, N], averaged per task.
    """
    with torch.enable_grad():
        th = theta.detach().requires_grad_()
        rate = lr.detach().requires_grad_(lr_grad)
        t = support_x.shape[0]
        p = th.expand(t, -1)
        for _ in range(steps):
            inner = _task_losses(_mlp(p, widths, support_x), support_y, cross_entropy).sum()
            (g,) = torch.autograd.grad(inner, p, create_graph=not first_order)
            p = p - rate * (g.detach() if first_order else g)
        losses = _task_losses(_mlp(p, widths, query_x), query_y, cross_entropy)
        wrt = [th, rate] if lr_grad else [th]
        grads = torch.autograd.grad(losses.mean(), wrt)
    d_lr = grads[1] if lr_grad else lr.new_empty((0,))
    return losses.detach(), grads[0], d_lr


def bn_pool_relu(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """``relu(max_pool2d(batch_norm(x), 2))`` for x [N, C, H, W]: batch norm in training mode
    (mean and biased variance per channel over N, H, W; no running statistics) with ``weight``,
    ``bias`` [C], then max-pooling by 2 (odd sizes floored), then ReLU: the tail of a Conv4 block."""
    y = torch.nn.functional.batch_norm(x, None, None, weight, bias, training=True, eps=eps)
    return torch.relu(torch.nn.functional.max_pool2d(y, 2))


def _window_choice(x: Tensor, weight: Tensor) -> Tensor:
    """The flat index into each [H, W] plane of the element each pooling window of the normalised x
    takes: the max of sign(weight) * x, first on ties (the kernel's rule; the same element as
    max-pooling batch norm's output except where two x round to the same output)."""
    s = torch.sign(weight).view(1, -1, 1, 1)
    return torch.nn.functional.max_pool2d(s * x, 2, return_indices=True)[1]


def bn_pool_relu_stats(x: Tensor, weight: Tensor, bias: Tensor,
                       eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What the compiled op returns: (out, xmax: the x each window chose, mean [C], invstd [C])."""
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    xmax = x.flatten(2).gather(2, _window_choice(x, weight).flatten(2)).view(*x.shape[:2], x.shape[2] // 2, -1)
    return bn_pool_relu(x, weight, bias, eps), xmax, mean, torch.rsqrt(var + eps)


def bn_pool_relu_backward(grad: Tensor, x: Tensor, weight: Tensor, out: Tensor, xmax: Tensor, mean: Tensor,
                          invstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (d x, d weight, d bias) of :func:`bn_pool_relu` given the gradient of its output,
    written out: G = the pooled gradient (zero where out = 0) at each window's chosen element,
    xhat = (x - mean) invstd, M = N H W; d bias = sum G, d weight = sum G xhat,
    d x = weight invstd (G - d bias / M - xhat d weight / M), sums per channel."""
    n, c, h, w = x.shape
    g = torch.where(out > 0, grad, torch.zeros_like(grad))
    big = torch.zeros(n, c, h * w, dtype=x.dtype, device=x.device)
    big = big.scatter(2, _window_choice(x, weight).flatten(2), g.flatten(2)).view(n, c, h, w)
    xhat = (x - mean.view(1, c, 1, 1)) * invstd.view(1, c, 1, 1)
    gb = big.sum((0, 2, 3))
    gw = (big * xhat).sum((0, 2, 3))
    m = n * h * w
    gx = (weight * invstd).view(1, c, 1, 1) * (big - gb.view(1, c, 1, 1) / m - xhat * gw.view(1, c, 1, 1) / m)
    return gx, gw, gb


# Winograd F(4x4, 3x3) (Lavin & Gray 2016): y = A^T [(G w G^T) * (B^T d B)] A per 4x4 output tile
_WINOGRAD_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0),
                (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_WINOGRAD_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
               (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_WINOGRAD_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


def conv3x3_winograd(x: Tensor, weight: Tensor, groups: int = 1) -> Tensor:
    """``F.conv2d(x, weight, padding=1, groups=groups)`` for 3x3 weights [groups * O, C, 3, 3],
    computed as the compiled op does: Winograd's F(4x4, 3x3) on 6x6 input tiles (the same result
    up to rounding).  Differentiable (plain torch ops)."""
    n, c, h, w = x.shape
    bt, gm, at = (torch.tensor(m, dtype=x.dtype, device=x.device) for m in (_WINOGRAD_BT, _WINOGRAD_G, _WINOGRAD_AT))
    th, tw = -(-h // 4), -(-w // 4)
    d = torch.nn.functional.pad(x, (1, 4 * tw + 1 - w, 1, 4 * th + 1 - h)).unfold(2, 6, 4).unfold(3, 6, 4)
    v = torch.einsum("ai,nctwij,bj->nctwab", bt, d, bt).reshape(n, groups, c // groups, th, tw, 6, 6)
    u = torch.einsum("ai,ocij,bj->ocab", gm, weight, gm)
    u = u.reshape(groups, -1, c // groups, 6, 6)
    m = torch.einsum("ngcthab,gocab->ngothab", v, u)
    y = torch.einsum("ia,ngothab,jb->ngothij", at, m, at)  # [N, G, O, th, tw, 4, 4]
    return y.permute(0, 1, 2, 3, 5, 4, 6).reshape(n, -1, 4 * th, 4 * tw)[:, :, :h, :w]


def conv3x3_winograd_backward(grad: Tensor, x: Tensor, weight: Tensor, groups: int, need_x: bool = True,
                              need_weight: bool = True) -> tuple[Tensor, Tensor]:
    """What the compiled backward returns: (d x, d weight) of :func:`conv3x3_winograd`, an empty
    tensor for one not asked for."""
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    gx, gw = torch.autograd.grad(conv3x3_winograd(x, weight, groups), (x, weight), grad)
    return (gx if need_x else x.new_empty((0,))), (gw if need_weight else weight.new_empty((0,)))
