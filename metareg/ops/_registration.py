"""Loading of ``metareg._C`` and the Python half of its op registrations.

Importing ``metareg._C`` runs the C++ registrations (schemas and CPU/CUDA kernels).  The fake
kernels (for torch.compile) and the autograd formulas are registered here with ``torch.library``
and only when that import succeeded: registering them for ops that do not exist would make
``import metareg`` fail wherever the extension is not built.

``METAREG_DISABLE_EXTENSION=1`` skips loading (the reference implementation is used), for tests
and for ruling the kernels out when debugging.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from . import _reference as ref
from ._table import OPS

__all__ = ["DISABLE_ENV", "extension", "load_reason", "kernels", "has_kernel"]

DISABLE_ENV = "METAREG_DISABLE_EXTENSION"
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def _load() -> tuple[ModuleType | None, str]:
    flag = os.environ.get(DISABLE_ENV, "")
    if flag not in ("", "0"):
        return None, f"disabled by {DISABLE_ENV}={flag}"
    try:
        from .. import _C
    except ModuleNotFoundError:
        return None, ("metareg._C is not built (install with `pip install --no-build-isolation -e .` or "
                      "`python setup.py build_ext --inplace`)")
    except Exception as exc:  # an ABI mismatch or a failed registration must not break import
        return None, f"metareg._C failed to load: {type(exc).__name__}: {exc}"
    return _C, f"loaded from {_C.__file__}"


def _has_kernel(op: str, key: str) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"metareg::{op}", key))
    except Exception:  # pragma: no cover - private API moved
        return False


def _register() -> None:
    lib = "metareg::"

    # -- fake kernels: shapes only, for torch.compile and meta tensors -------------------------
    @torch.library.register_fake(lib + "pairwise_cosine")
    def _(a, b, eps=1e-8):
        if a.dim() == 3:
            return a.new_empty((a.shape[0], a.shape[1], b.shape[1]))
        return a.new_empty((a.shape[0], b.shape[0]))

    @torch.library.register_fake(lib + "pairwise_cosine_backward")
    def _(grad, a, b, eps):
        return (torch.empty_like(a, memory_format=torch.contiguous_format),
                torch.empty_like(b, memory_format=torch.contiguous_format))

    @torch.library.register_fake(lib + "pairwise_cosine_norms")
    def _(a, eps=1e-8):
        return a.new_empty((*a.shape[:-1], a.shape[-2])), a.new_empty(a.shape[:-1])

    @torch.library.register_fake(lib + "gram")
    def _(a):
        return a.new_empty((*a.shape[:-1], a.shape[-2]))

    @torch.library.register_fake(lib + "task_step")
    def _(params, grads, lr):
        return grads.new_empty(grads.shape)

    @torch.library.register_fake(lib + "task_step_tensor")
    def _(params, grads, lr):
        return grads.new_empty(grads.shape)

    @torch.library.register_fake(lib + "task_step_backward")
    def _(grad, grads, lr, params_shared):
        p = grads.shape[1] if params_shared else 0
        return grads.new_empty((p,)), grads.new_empty(grads.shape), lr.new_empty(lr.shape)

    @torch.library.register_fake(lib + "mlp_meta_grad")
    def _(theta, widths, support_x, support_y, query_x, query_y, lr, steps, cross_entropy, first_order, lr_grad):
        return (theta.new_empty((support_x.shape[0],)), theta.new_empty(theta.shape),
                lr.new_empty(lr.shape if lr_grad else (0,)))

    @torch.library.register_fake(lib + "bn_pool_relu")
    def _(x, weight, bias, eps):
        n, c, h, w = x.shape
        pooled = [torch.empty((n, c, h // 2, w // 2), dtype=x.dtype, device=x.device,
                              memory_format=torch.channels_last) for _ in range(2)]
        return pooled[0], pooled[1], x.new_empty((c,)), x.new_empty((c,))

    @torch.library.register_fake(lib + "bn_pool_relu_backward")
    def _(grad, x, weight, out, xmax, mean, invstd):
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        return gx, weight.new_empty(weight.shape), weight.new_empty(weight.shape)

    @torch.library.register_fake(lib + "conv3x3_winograd")
    def _(x, weight, groups):
        n, _, h, w = x.shape
        return torch.empty((n, weight.shape[0], h, w), dtype=x.dtype, device=x.device,
                           memory_format=torch.channels_last)

    @torch.library.register_fake(lib + "conv3x3_winograd_backward")
    def _(grad, x, weight, groups, need_x, need_weight):
        gx = (torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last) if need_x
              else x.new_empty((0,)))
        return gx, (weight.new_empty(weight.shape) if need_weight else weight.new_empty((0,)))

    ops = torch.ops.metareg

    # -- pairwise_cosine: the C++ backward op; its own autograd (below) makes it twice
    # differentiable ------------------------------------------------------------------------
    def pc_setup(ctx, inputs, output):
        a, b, eps = inputs
        ctx.eps = eps
        ctx.save_for_backward(a, b)

    def pc_backward(ctx, grad):
        a, b = ctx.saved_tensors
        ga, gb = ops.pairwise_cosine_backward(grad, a, b, ctx.eps)
        return ga, gb, None

    torch.library.register_autograd(lib + "pairwise_cosine", pc_backward, setup_context=pc_setup)

    def pcb_setup(ctx, inputs, output):
        grad, a, b, eps = inputs
        ctx.eps = eps
        ctx.save_for_backward(grad, a, b)

    def pcb_backward(ctx, gga, ggb):
        # Second order is rare (Matching Networks inside MAML) and needs no kernel of its own:
        # differentiate the reference backward, which is the same function in plain torch ops.
        grad, a, b = ctx.saved_tensors
        eps = ctx.eps
        _, vjp = torch.func.vjp(lambda g, x, y: ref.pairwise_cosine_backward(g, x, y, eps), grad, a, b)
        d_grad, d_a, d_b = vjp((gga, ggb))
        return d_grad, d_a, d_b, None

    torch.library.register_autograd(lib + "pairwise_cosine_backward", pcb_backward, setup_context=pcb_setup)

    # -- task_step and task_step_tensor: autograd is compiled into metareg._C
    # (csrc/task_step_autograd.cpp) since a Python autograd kernel costs more than the step itself
    # for small models.  Their fused backward op gets its (differentiable) autograd here. -------
    def tsb_setup(ctx, inputs, output):
        grad, grads, lr, shared = inputs
        ctx.shared = shared
        ctx.save_for_backward(grad, grads, lr)

    def tsb_backward(ctx, c_params, c_grads, c_lr):
        # Vector-Jacobian product of (grad, grads, lr) -> (sum_t grad, -lr grad, sum_to(-grad grads)).
        grad, grads, lr = ctx.saved_tensors
        d_grad = -(lr * c_grads) - grads * c_lr
        if ctx.shared:
            d_grad = d_grad + c_params
        d_grads = -(grad * c_lr)
        d_lr = ref._sum_to(-(c_grads * grad), lr.shape)
        return d_grad, d_grads, d_lr, None

    torch.library.register_autograd(lib + "task_step_backward", tsb_backward, setup_context=tsb_setup)

    # -- bn_pool_relu: differentiable once.  The backward op's own autograd refuses, with a
    # message, rather than letting autograd's fallback treat it as constant -----------------
    def bpr_setup(ctx, inputs, output):
        x, weight, _bias, _eps = inputs
        out, xmax, mean, invstd = output
        ctx.mark_non_differentiable(xmax, mean, invstd)
        ctx.save_for_backward(x, weight, out, xmax, mean, invstd)

    def bpr_backward(ctx, g_out, _g_xmax, _g_mean, _g_invstd):
        x, weight, out, xmax, mean, invstd = ctx.saved_tensors
        gx, gw, gb = ops.bn_pool_relu_backward(g_out, x, weight, out, xmax, mean, invstd)
        return gx, gw, gb, None

    torch.library.register_autograd(lib + "bn_pool_relu", bpr_backward, setup_context=bpr_setup)

    def differentiable_once(op: str, instead: str) -> None:
        """Register an autograd for ``op``'s backward op that refuses, naming what second-order
        paths use ``instead``."""

        def refuse(ctx, *grads):
            raise RuntimeError(
                f"metareg.ops.{op} is differentiable once, and this graph differentiates it twice. Second-order "
                f"paths (MAML's inner steps) must use {instead}; metareg.nets.conv does so outside "
                "metareg.nets.differentiated_once().")

        torch.library.register_autograd(lib + op + "_backward", refuse)

    differentiable_once("bn_pool_relu", "metareg.nets.batchnorm.fused_batch_norm, max_pool2d and relu")

    # -- conv3x3_winograd: differentiable once, like bn_pool_relu ----------------------------
    def cw_setup(ctx, inputs, output):
        x, weight, groups = inputs
        ctx.groups = groups
        ctx.save_for_backward(x, weight)

    def cw_backward(ctx, g_out):
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx, gw = ops.conv3x3_winograd_backward(g_out, x, weight, ctx.groups, need_x, need_w)
        return (gx if need_x else None), (gw if need_w else None), None

    torch.library.register_autograd(lib + "conv3x3_winograd", cw_backward, setup_context=cw_setup)
    differentiable_once("conv3x3_winograd", "F.conv2d")


extension, load_reason = _load()
if extension is not None:
    try:
        _register()
    except Exception as exc:  # e.g. a torch too old for torch.library.register_autograd
        extension, load_reason = None, f"metareg._C loaded but its Python registrations failed: {exc}"

#: (op, device type) -> whether metareg._C has that op's kernel (every compiled op it uses, as the
#: table in _table.py lists them) for that device, for each device the table gives it a kernel on.
has_kernel = {
    (spec.name, dev): extension is not None and all(_has_kernel(op, _DISPATCH_KEYS[dev]) for op in spec.uses)
    for spec in OPS for dev in spec.kernels
}
#: Which devices have every kernel the table lists for them, e.g. {"cpu": True, "cuda": False}.
kernels = {dev: all(ok for (_, d), ok in has_kernel.items() if d == dev) for dev in _DISPATCH_KEYS}
