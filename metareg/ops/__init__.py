"""Public wrappers over metareg's custom ops.

Each wrapper dispatches to the compiled kernel of ``metareg._C`` where the extension has one for
the input's device and dtype, and falls back to the plain-torch reference
(``metareg.ops._reference``, with one warning) where it should have one but does not, so
``import metareg`` always works.  Which op has which kernel, and what runs elsewhere, is one table
(``metareg.ops._table``); ``metareg ops`` renders it (:func:`status`).

``pairwise_cosine`` and ``task_step`` are differentiable to second order (second-order MAML,
Meta-SGD with a learned rate) and traceable by ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError
from . import _reference
from ._registration import DISABLE_ENV, extension, has_kernel, load_reason
from ._table import OPS, SPECS

__all__ = ["pairwise_cosine", "pairwise_cosine_norms", "gram", "task_step", "mlp_meta_grad", "bn_pool_relu",
           "conv3x3_winograd",
           "status"]

# op -> device type -> the dtypes its compiled kernel takes (only where the extension has it); CPU
# apart, since ``t.is_cpu`` costs a fifth of ``t.device.type`` on the per-step path
_KERNEL_DTYPES = {spec.name: {dev: frozenset(k.dtypes) for dev, k in spec.kernels.items() if has_kernel[spec.name, dev]}
                  for spec in OPS}
_CPU_DTYPES = {op: devices.get("cpu", frozenset()) for op, devices in _KERNEL_DTYPES.items()}
_warned: set[str] = set()
# The op namespace; calling an overload (.default) directly skips overload resolution per call.
_ops = torch.ops.metareg


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def _compiled(op: str, t: Tensor) -> bool:
    """Whether op's compiled kernel takes ``t``'s device and dtype (hot path: every step)."""
    if t.is_cpu:
        return t.dtype in _CPU_DTYPES[op]
    dtypes = _KERNEL_DTYPES[op].get(t.device.type)
    return dtypes is not None and t.dtype in dtypes


def _why_not(op: str, dev: str, dtype: torch.dtype | None = None) -> str:
    spec = SPECS[op]
    if dev not in spec.kernels:
        return f"{op} has no {dev} kernel by design"
    if extension is None:
        return load_reason
    if not has_kernel[op, dev]:
        return f"metareg._C has no {dev} kernel for {op} (built {'with' if extension.with_cuda else 'without'} CUDA)"
    return f"the {dev} kernel of {op} does not take {dtype}"


def _fallback(op: str, t: Tensor) -> None:
    """Warn (once per reason) where ``op`` should have had a kernel for ``t``: not where its table
    entry has none for the device by design (there the fallback is the right path)."""
    if t.device.type in SPECS[op].kernels:
        _warn_once(_why_not(op, t.device.type, t.dtype))


def _warn_once(reason: str) -> None:
    if reason in _warned:
        return
    _warned.add(reason)
    warnings.warn(f"metareg.ops: {reason}; using the plain-torch reference implementation (slower). "
                  "`metareg ops` shows which implementation each op uses.", RuntimeWarning, stacklevel=4)


def _check_cosine(a: Tensor, b: Tensor) -> None:
    op = "metareg.ops.pairwise_cosine"
    if a.dim() not in (2, 3) or b.dim() != a.dim():
        raise ShapeError(f"{op}: expected a [B, N, D] and b [B, M, D] (or a [N, D] and b [M, D]), got a of shape "
                         f"{_shape(a)} and b of shape {_shape(b)}.")
    if a.shape[-1] != b.shape[-1] or (a.dim() == 3 and a.shape[0] != b.shape[0]):
        raise ShapeError(f"{op}: a and b must agree in B (first dim of 3-D inputs) and D (last dim), got a of shape "
                         f"{_shape(a)} and b of shape {_shape(b)}.")
    if a.device != b.device or a.dtype != b.dtype:
        raise ShapeError(f"{op}: a and b must have the same dtype and device, got a {a.dtype} on {a.device} and b "
                         f"{b.dtype} on {b.device} (shapes {_shape(a)} and {_shape(b)}).")
    if not a.is_floating_point():
        raise ShapeError(f"{op}: expected floating-point inputs, got {a.dtype} (shapes {_shape(a)} and "
                         f"{_shape(b)}).")


def _check_eps(op: str, eps: float, dtype: torch.dtype) -> None:
    """eps clamps row norms from below: a positive number the dtype can hold as a normal float."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise ConfigError(f"metareg.ops.{op}: eps must be a positive number, got {type(eps).__name__} {eps!r}.")
    tiny = torch.finfo(dtype).tiny if dtype.is_floating_point else 0.0
    if not math.isfinite(eps) or eps < tiny or eps <= 0:
        raise ConfigError(f"metareg.ops.{op}: eps must be finite and at least {tiny:.3g} (the smallest normal "
                          f"{dtype}), got {eps!r}.")


def _check_lr(lr: object) -> None:
    if isinstance(lr, Tensor):
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ConfigError(f"metareg.ops.task_step: lr must be a number or a tensor, got {type(lr).__name__} {lr!r}.")
    if not math.isfinite(lr):
        raise ConfigError(f"metareg.ops.task_step: lr must be finite, got {lr!r}.")


def pairwise_cosine(a: Tensor, b: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of every row of ``a`` with every row of ``b``.

    a: [B, N, D], b: [B, M, D] -> [B, N, M]; or a [N, D], b [M, D] -> [N, M].  ``b=None`` means
    ``b = a`` (all pairs within a).  Each row norm is clamped below at ``eps``, so a zero row gives
    similarity 0, never NaN.  Differentiable to second order in ``a`` and ``b``.

    Raises :class:`metareg.errors.ShapeError` for wrong ranks, mismatched B or D, or mixed dtypes
    or devices.
    """
    if b is None:
        b = a
    _check_cosine(a, b)
    _check_eps("pairwise_cosine", eps, a.dtype)
    if _compiled("pairwise_cosine", a):
        return _ops.pairwise_cosine.default(a, b, eps)
    _fallback("pairwise_cosine", a)
    return _reference.pairwise_cosine(a, b, eps)


def pairwise_cosine_norms(a: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """``pairwise_cosine(a)`` and the row norms of ``a`` from one call: ``(cos, norms)`` with cos
    [B, N, N] (or [N, N]) and norms [B, N] (or [N]), unclamped.

    For the multi-task combiners' cosine Gram matrix ``G = cos * max(n_i, eps) * max(n_j, eps)``
    (PCGrad, GradVac: the inner products with the same cosines as :func:`pairwise_cosine`).  The
    CPU kernel picks its path: for few long rows (the [T, P] task-gradient matrix) it reads ``a``
    once for both.  Elsewhere (CUDA, no extension, or inputs that need a gradient: the compiled
    op is forward-only) it is ``pairwise_cosine(a)`` plus one ``torch.linalg.vector_norm``.
    """
    _check_cosine(a, a)
    _check_eps("pairwise_cosine_norms", eps, a.dtype)
    if _compiled("pairwise_cosine_norms", a) and not (a.requires_grad and torch.is_grad_enabled()):
        return _ops.pairwise_cosine_norms.default(a, eps)
    # norms accumulated in float64 (float32 squares overflow above |x| ~ 1e19), as the kernel does
    return pairwise_cosine(a, a, eps), torch.linalg.vector_norm(a, dim=-1, dtype=torch.float64).to(a.dtype)


def gram(a: Tensor) -> Tensor:
    """The Gram matrix ``a a^T`` of the rows of ``a``: a [B, N, D] -> [B, N, N], or a [N, D] ->
    [N, N], in a's dtype.

    The multi-task combiners' one pass over the task Jacobian J [T, P].  The CPU kernel picks its
    path by shape: few long rows are read once with the products summed in double, long rows go
    through a blocked GEMM that stays in cache, the rest through one GEMM; the answer is
    ``a @ a^T`` up to rounding.  Elsewhere (CUDA, no extension, an input that needs a gradient:
    the compiled op is forward-only) it is ``a @ a^T``.

    Raises :class:`metareg.errors.ShapeError` for an input that is not 2-D or 3-D floating point.
    """
    if _compiled("gram", a) and not (a.requires_grad and torch.is_grad_enabled()):
        # per step of every combiner: the kernel checks its input; the Python checks, which say
        # the same as a ShapeError, run only once it has refused it
        try:
            return _ops.gram.default(a)
        except RuntimeError:
            _check_gram(a)
            raise
    _check_gram(a)
    if not _compiled("gram", a):
        _fallback("gram", a)
    return _reference.gram(a)


def _check_gram(a: Tensor) -> None:
    if a.dim() not in (2, 3) or not a.is_floating_point():
        raise ShapeError(f"metareg.ops.gram: expected a floating-point a of shape [B, N, D] or [N, D], got "
                         f"{a.dtype} of shape {_shape(a)}.") from None


def _check_step(params: Tensor, grads: Tensor, lr: float | Tensor) -> None:
    op = "metareg.ops.task_step"
    if grads.dim() != 2 or not (params.shape == grads.shape or (params.dim() == 1 and params.shape[0] ==
                                                                   grads.shape[1])):
        raise ShapeError(f"{op}: expected params [P] or [T, P] and grads [T, P], got params of shape "
                         f"{_shape(params)} and grads of shape {_shape(grads)}.")
    if params.device != grads.device or params.dtype != grads.dtype or not grads.is_floating_point():
        raise ShapeError(f"{op}: params and grads must be floating point of the same dtype and device, got params "
                         f"{params.dtype} on {params.device} and grads {grads.dtype} on {grads.device} (shapes "
                         f"{_shape(params)} and {_shape(grads)}).")
    if isinstance(lr, Tensor):
        if not (lr.dim() == 0 or lr.shape == grads.shape or (lr.dim() == 1 and lr.shape[0] == grads.shape[1])):
            raise ShapeError(f"{op}: expected lr of shape [], [P] or [T, P] for grads of shape {_shape(grads)}, got "
                             f"lr of shape {_shape(lr)}.")
        if lr.device != grads.device or lr.dtype != grads.dtype:
            raise ShapeError(f"{op}: lr must match grads in dtype and device, got lr {lr.dtype} on {lr.device} and "
                             f"grads {grads.dtype} on {grads.device} (shapes {_shape(lr)} and {_shape(grads)}).")


def mlp_meta_grad(theta: Tensor, widths, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                  lr: float | Tensor, steps: int = 1, *, loss: str = "mse", first_order: bool = False,
                  lr_grad: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """MAML's meta-gradient for a ReLU MLP in closed form, without an autograd graph.

    ``widths`` [in, h_1, ..., out] give the layers (Linear, ReLU after all but the last), ``theta``
    [P] their parameters in :func:`metareg.nets.mlp`'s flat layout.  Every task t of the support
    set (x [T, S, in]; y [T, S, out] for ``loss="mse"``, int64 labels [T, S] for
    ``"cross_entropy"``) takes ``steps`` gradient steps of rate ``lr`` (a float, or a tensor []
    or [P]: Meta-SGD) from theta; returns (query losses [T], d mean loss / d theta [P],
    d mean loss / d lr with lr's shape when ``lr_grad``, else an empty [0] tensor).
    ``first_order`` drops the Hessian terms.  Forward only: the results carry no graph.  Equals
    autograd through the unrolled loop (``metareg.ops._reference.mlp_meta_grad``, the fallback).

    Raises :class:`metareg.errors.ShapeError` for inputs that do not fit ``widths``.
    """
    if loss not in ("mse", "cross_entropy"):
        raise ConfigError(f"metareg.ops.mlp_meta_grad: loss must be 'mse' or 'cross_entropy', got {loss!r}.")
    _check_lr(lr)
    if not isinstance(lr, Tensor):
        lr = torch.tensor(float(lr), dtype=theta.dtype, device=theta.device)
    widths = [int(w) for w in widths]
    ce = loss == "cross_entropy"
    args = (theta, widths, support_x, support_y, query_x, query_y, lr, int(steps), ce, bool(first_order), bool(lr_grad))
    if _compiled("mlp_meta_grad", theta) and theta.device == support_x.device:
        try:
            return _ops.mlp_meta_grad.default(*args)
        except RuntimeError as e:
            if "metareg::mlp_meta_grad:" not in str(e):
                raise  # not the kernel refusing its inputs
            raise ShapeError(str(e).split("\n")[0]) from None
    _fallback("mlp_meta_grad", theta)
    return _reference.mlp_meta_grad(*args)


def task_step(params: Tensor, grads: Tensor, lr: float | Tensor) -> Tensor:
    """One gradient step for every task of a meta-batch in one launch: ``params - lr * grads``.

    params: [P] (one starting point shared by all tasks) or [T, P]; grads: [T, P]; lr: a float, or
    a tensor of shape [] , [P] (Meta-SGD's per-parameter rates) or [T, P].  Returns a new [T, P]
    tensor.  A single task may also be given as params [P] and grads [P] (returns [P]).

    Backward: d params = grad (summed over tasks when params is [P]), d grads = -lr * grad,
    d lr = -grad * grads summed to lr's shape; differentiable again (second-order MAML).
    """
    _check_lr(lr)
    if params.device != grads.device:  # the kernel would run on one of them (a meta tensor beside a real one)
        _check_step(params, grads, lr)
    single = grads.dim() == 1 and params.dim() == 1
    if single:
        grads = grads.unsqueeze(0)
    if _compiled("task_step", grads):
        # hot path (every inner step): the kernel checks its inputs itself; the Python checks,
        # which give the same verdict as a ShapeError, run only once it has refused them
        try:
            if isinstance(lr, Tensor):
                out = _ops.task_step_tensor.default(params, grads, lr)
            else:
                out = _ops.task_step.default(params, grads, float(lr))
        except RuntimeError:
            try:
                _check_step(params, grads, lr)
            except ShapeError as e:
                raise e from None  # the user's mistake, without the kernel's traceback
            raise
    else:
        _check_step(params, grads, lr)
        _fallback("task_step", grads)
        out = _reference.task_step(params, grads, lr)
    return out.squeeze(0) if single else out


def bn_pool_relu(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """``relu(max_pool2d(batch_norm(x), 2))``: the tail of a Conv4 block in one op.

    x [N, C, H, W] (H, W >= 2); batch norm in training mode, mean and biased variance per channel
    over (N, H, W), no running statistics, affine ``weight``, ``bias`` [C]; max-pooling by 2 with
    odd sizes floored; returns [N, C, H // 2, W // 2] (channels-last from the CPU kernel).

    The CPU kernel reads x twice in the forward and once in the backward, against about eight
    full passes for the three PyTorch ops.  It is **differentiable once**: differentiating its
    gradient again raises (second-order MAML's inner steps use the composed ops; see
    :func:`metareg.nets.differentiated_once`).  A window's element is found by comparing
    ``sign(weight) * x``: the one max-pooling takes unless two inputs round to the same output.
    Elsewhere (CUDA, no extension): the three PyTorch ops.

    Raises :class:`metareg.errors.ShapeError` for inputs of the wrong shape.
    """
    if _compiled("bn_pool_relu", x):
        try:
            return _ops.bn_pool_relu.default(x, weight, bias, float(eps))[0]
        except RuntimeError as e:
            if "metareg::bn_pool_relu:" not in str(e):
                raise
            raise ShapeError(str(e).split("\n")[0]) from None
    if x.dim() != 4 or min(x.shape[2:], default=0) < 2 or weight.shape != (x.shape[1],) or bias.shape != weight.shape:
        raise ShapeError(f"metareg.ops.bn_pool_relu: expected x [N, C, H, W] with H, W >= 2 and weight, bias [C], "
                         f"got x of shape {_shape(x)}, weight {_shape(weight)}, bias {_shape(bias)}.")
    _fallback("bn_pool_relu", x)
    return _reference.bn_pool_relu(x, weight, bias, eps)


def conv3x3_winograd(x: Tensor, weight: Tensor, groups: int = 1) -> Tensor:
    """``F.conv2d(x, weight, padding=1, groups=groups)`` for 3x3 weights, by Winograd's F(4x4, 3x3).

    x [N, C, H, W], weight [O, C / groups, 3, 3] (O divisible by ``groups``), stride 1, padding 1,
    no bias; returns [N, O, H, W] (channels-last from the CPU kernel).  Each 4x4 output tile comes
    from a 6x6 input tile with 36 multiplications per channel pair instead of 144; the products
    run as batched BLAS calls on blocks of tiles that stay in cache.  The result is the
    convolution's up to rounding: in float32 a few times a direct convolution's error (relative
    ~1e-5 of the output's scale), in float64 ~1e-14.  Faster than oneDNN's direct convolution
    here from about 7x7 images with 64 channels (``benchmarks/bench_ops.py``); Conv4's query pass
    uses it on 14x14 and 7x7 (see :mod:`metareg.nets.conv`).

    **Differentiable once**, like :func:`bn_pool_relu`.  Elsewhere (CUDA, no extension):
    ``F.conv2d``.  Raises :class:`metareg.errors.ShapeError` for inputs of the wrong shape.
    """
    if _compiled("conv3x3_winograd", x):
        try:
            return _ops.conv3x3_winograd.default(x, weight, int(groups))
        except RuntimeError as e:
            if "metareg::conv3x3_winograd:" not in str(e):
                raise
            raise ShapeError(str(e).split("\n")[0]) from None
    if (x.dim() != 4 or weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3) or groups < 1
            or weight.shape[0] % groups or weight.shape[1] * groups != x.shape[1]):
        raise ShapeError(f"metareg.ops.conv3x3_winograd: expected x [N, C, H, W] and weight [O, C / groups, 3, 3] "
                         f"with O divisible by groups, got x of shape {_shape(x)}, weight {_shape(weight)}, "
                         f"groups={groups}.")
    _fallback("conv3x3_winograd", x)
    return F.conv2d(x, weight, padding=1, groups=groups)


def _implementation(op: str, device: str) -> dict:
    """What runs for ``op`` on ``device`` tensors, and why, from the op table."""
    spec = SPECS[op]
    kernel = spec.kernels.get(device)
    if kernel is not None and has_kernel[op, device]:
        dtypes = ", ".join(str(d).removeprefix("torch.") for d in kernel.dtypes)
        grad = " and inputs that need a gradient" if spec.forward_only else ""
        return {"implementation": "compiled",
                "why": f"{kernel.what}; for {dtypes} (other dtypes{grad}: {spec.fallback[1]})"}
    label, what = spec.fallback
    return {"implementation": label, "why": f"{what}: {_why_not(op, device)}"}


def status() -> dict:
    """Whether ``metareg._C`` loaded, how it was built, and which implementation each op uses.

    Keys: ``extension_loaded`` (bool), ``reason`` (why or why not), ``disable_env`` (the variable
    that blocks loading), ``build`` (torch version, compiler, OpenMP, CPU ISA, CUDA runtime and
    architectures; empty when not loaded), ``runtime`` (this process's torch and CUDA
    availability) and ``ops``: op -> device -> {"implementation": "compiled" | "reference" |
    "composed", "why": str}, one entry per row of the op table (``metareg.ops._table.OPS``).
    """
    build: dict = {}
    if extension is not None:
        build = {
            "torch_version": extension.torch_version,
            "compiler": extension.compiler,
            "openmp": bool(extension.openmp),
            "cpu_isa": extension.cpu_isa,
            "cuda": bool(extension.with_cuda),
            "cuda_runtime_version": extension.cuda_runtime_version or None,
            # nvcc's __CUDA_ARCH_LIST__ spells sm_90 as 900.
            "cuda_arch_list": [f"sm_{int(a) // 10}" if a.isdigit() else a
                               for a in extension.cuda_arch_list.split(",") if a] if extension.with_cuda else [],
        }
    return {
        "extension_loaded": extension is not None,
        "reason": load_reason,
        "disable_env": DISABLE_ENV,
        "build": build,
        "runtime": {"torch_version": torch.__version__, "cuda_available": torch.cuda.is_available(),
                    "threads": torch.get_num_threads()},
        "ops": {spec.name: {dev: _implementation(spec.name, dev) for dev in ("cpu", "cuda")} for spec in OPS},
    }
