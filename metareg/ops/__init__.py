"""Public wrappers over metareg's custom ops.

``pairwise_cosine`` and ``task_step`` dispatch to the compiled kernels of ``metareg._C`` when the
extension is built, and fall back to the plain-torch reference (``metareg.ops._reference``, with
one warning) when it is not, so ``import metareg`` always works.  ``metareg ops`` reports which
implementation each op uses (:func:`status`).

Both are differentiable to second order (second-order MAML, Meta-SGD with a learned rate) and
traceable by ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..errors import ShapeError
from . import _reference
from ._registration import DISABLE_ENV, extension, kernels, load_reason

__all__ = ["pairwise_cosine", "pairwise_cosine_norms", "task_step", "status"]

# Element types each backend's kernels take; other floating types use the reference.
_KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
_warned: set[str] = set()
# The op namespace; calling an overload (.default) directly skips overload resolution per call.
_ops = torch.ops.metareg


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def _fallback_reason(t: Tensor) -> str | None:
    """None when the compiled kernel handles ``t``'s device and dtype, else why not."""
    dev = t.device.type
    if extension is None:
        return load_reason
    if not kernels.get(dev, False):
        return f"metareg._C has no {dev} kernels (built {'with' if extension.with_cuda else 'without'} CUDA)"
    if t.dtype not in _KERNEL_DTYPES[dev]:
        return f"the {dev} kernels do not take {t.dtype}"
    return None


def _warn_once(reason: str) -> None:
    if reason in _warned:
        return
    _warned.add(reason)
    warnings.warn(f"metareg.ops: {reason}; using the plain-torch reference implementation (slower). "
                  "`metareg ops` shows which implementation each op uses.", RuntimeWarning, stacklevel=3)


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
    reason = _fallback_reason(a)
    if reason is None:
        return _ops.pairwise_cosine.default(a, b, eps)
    _warn_once(reason)
    return _reference.pairwise_cosine(a, b, eps)


def pairwise_cosine_norms(a: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """``pairwise_cosine(a)`` and the row norms of ``a`` from one call: ``(cos, norms)`` with cos
    [B, N, N] (or [N, N]) and norms [B, N] (or [N]), unclamped.

    For the multi-task combiners, which need the inner products of the task gradients
    ``G = cos * max(n_i, eps) * max(n_j, eps)`` as well as their cosines: on CPU, for few long rows
    (the [T, P] task-gradient matrix), the compiled kernel reads ``a`` once for both.  Elsewhere
    (other shapes, CUDA, no extension, or inputs that need a gradient: this is a forward-only
    op) it is ``pairwise_cosine(a)`` plus one ``torch.linalg.vector_norm``.
    """
    _check_cosine(a, a)
    if (_fallback_reason(a) is None and a.device.type == "cpu"
            and not (a.requires_grad and torch.is_grad_enabled())):
        return _ops.pairwise_cosine_norms.default(a, eps)
    # norms accumulated in float64 (float32 squares overflow above |x| ~ 1e19), as the kernel does
    return pairwise_cosine(a, a, eps), torch.linalg.vector_norm(a, dim=-1, dtype=torch.float64).to(a.dtype)


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


def task_step(params: Tensor, grads: Tensor, lr: float | Tensor) -> Tensor:
    """One gradient step for every task of a meta-batch in one launch: ``params - lr * grads``.

    params: [P] (one starting point shared by all tasks) or [T, P]; grads: [T, P]; lr: a float, or
    a tensor of shape [] , [P] (Meta-SGD's per-parameter rates) or [T, P].  Returns a new [T, P]
    tensor.  A single task may also be given as params [P] and grads [P] (returns [P]).

    Backward: d params = grad (summed over tasks when params is [P]), d grads = -lr * grad,
    d lr = -grad * grads summed to lr's shape; differentiable again (second-order MAML).
    """
    single = grads.dim() == 1 and params.dim() == 1
    if single:
        grads = grads.unsqueeze(0)
    reason = _fallback_reason(grads)
    if reason is None:
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
        _warn_once(reason)
        out = _reference.task_step(params, grads, lr)
    return out.squeeze(0) if single else out


def _implementation(device: str) -> tuple[str, str]:
    if extension is None:
        return "reference", load_reason
    if not kernels.get(device, False):
        why = ("extension built without CUDA" if device == "cuda" and not extension.with_cuda
               else f"no {device} kernel registered")
        return "reference", why
    dtypes = ", ".join(str(d).removeprefix("torch.") for d in _KERNEL_DTYPES[device])
    what = "C++ kernel (at::parallel_for, vectorised)" if device == "cpu" else "CUDA kernel"
    return "compiled", f"{what} for {dtypes}; other floating dtypes use the reference"


def status() -> dict:
    """Whether ``metareg._C`` loaded, how it was built, and which implementation each op uses.

    Keys: ``extension_loaded`` (bool), ``reason`` (why or why not), ``disable_env`` (the variable
    that blocks loading), ``build`` (torch version, compiler, OpenMP, CPU ISA, CUDA runtime and
    architectures; empty when not loaded), ``runtime`` (this process's torch and CUDA
    availability) and ``ops``: op -> device -> {"implementation": "compiled" | "reference",
    "why": str}.
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
    per_device = {dev: dict(zip(("implementation", "why"), _implementation(dev))) for dev in ("cpu", "cuda")}
    return {
        "extension_loaded": extension is not None,
        "reason": load_reason,
        "disable_env": DISABLE_ENV,
        "build": build,
        "runtime": {"torch_version": torch.__version__, "cuda_available": torch.cuda.is_available(),
                    "threads": torch.get_num_threads()},
        "ops": {**{op: {dev: dict(v) for dev, v in per_device.items()} for op in ("pairwise_cosine", "task_step")},
                "pairwise_cosine_norms": _norms_implementation(per_device)},
    }


def _norms_implementation(per_device: dict) -> dict:
    """pairwise_cosine_norms: the CPU kernel where it is compiled, else its two halves."""
    composed = {"implementation": "composed", "why": "pairwise_cosine (as above) + torch.linalg.vector_norm"}
    cpu = dict(per_device["cpu"])
    if cpu["implementation"] == "compiled":
        cpu["why"] = "C++ kernel: one read of a for cosines and norms (wide path), else composed"
    else:
        cpu = composed
    return {"cpu": cpu, "cuda": composed}
