"""The one description of metareg's custom ops: what each public op computes, which compiled ops
(schemas in ``csrc/ops.cpp``) it calls, which device and dtypes have a kernel, and what runs
where none does.

The wrappers in ``metareg.ops`` route by this table, ``metareg.ops._registration`` checks the
kernels it names, and :func:`metareg.ops.status` / ``metareg ops`` render it: a new op is one more
entry here (see ``csrc/ADDING_AN_OP.md``), not new code in each of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Kernel", "OpSpec", "OPS", "SPECS"]

F32_F64 = (torch.float32, torch.float64)
ALL_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Kernel:
    """A compiled implementation of an op on one device type."""

    what: str  #: how it works, one line for ``metareg ops``
    dtypes: tuple[torch.dtype, ...]  #: element types it takes; others use the op's fallback


@dataclass(frozen=True)
class OpSpec:
    name: str  #: the wrapper ``metareg.ops.<name>`` and its schema ``metareg::<name>``
    summary: str  #: what it computes, with shapes in the house letters
    #: the compiled ops the wrapper needs (itself and its backward ops): a device has the kernel
    #: only when every one of them is registered for it
    uses: tuple[str, ...]
    #: device type -> its kernel.  A device type not listed has none by design (the fallback is
    #: the right path there): no warning.  A listed one whose kernel is missing (no extension, a
    #: build without CUDA, a dtype it does not take) falls back with one warning.
    kernels: dict[str, Kernel] = field(default_factory=dict)
    #: (implementation, what runs) where no kernel applies: "reference" is metareg.ops._reference,
    #: "composed" another op's wrapper plus plain torch
    fallback: tuple[str, str] = ("reference", "metareg.ops._reference (plain differentiable torch)")
    #: inputs that need a gradient take the fallback (the compiled op has no autograd)
    forward_only: bool = False


OPS: tuple[OpSpec, ...] = (
    OpSpec(
        "pairwise_cosine",
        "cosine of every row of a [B, N, D] with every row of b [B, M, D] -> [B, N, M] (or 2-D without B); "
        "differentiable to second order",
        uses=("pairwise_cosine", "pairwise_cosine_backward"),
        kernels={
            "cpu": Kernel("C++: normalise + GEMM; few long rows (N, M <= 16, D >= 4096) read once (wide path)",
                          F32_F64),
            "cuda": Kernel("CUDA: one fused launch for small episodes, else normalise + cuBLAS", ALL_FLOATS),
        },
    ),
    OpSpec(
        "pairwise_cosine_norms",
        "pairwise_cosine(a, a) and the row norms |a_i| [B, N] from one call (forward only)",
        uses=("pairwise_cosine_norms",),
        kernels={"cpu": Kernel("C++: cosines and norms from one read of a (wide path), else pairwise_cosine + norms",
                               F32_F64)},
        fallback=("composed", "pairwise_cosine (as listed) + torch.linalg.vector_norm"),
        forward_only=True,
    ),
    OpSpec(
        "gram",
        "a a^T [B, N, N] for a [B, N, D] (or 2-D without B): the combiners' Gram matrix (forward only)",
        uses=("gram",),
        kernels={"cpu": Kernel("C++: few long rows (N <= 16, D >= 4096) read once, products summed in double; "
                               "long rows blocked GEMM; else GEMM", F32_F64)},
        fallback=("reference", "a @ a^T in plain torch (cuBLAS on CUDA)"),
        forward_only=True,
    ),
    OpSpec(
        "task_step",
        "params [P] or [T, P] - lr * grads [T, P] for every task in one launch; lr a float or a tensor [], [P], "
        "[T, P]; differentiable to second order",
        uses=("task_step", "task_step_tensor", "task_step_backward"),
        kernels={"cpu": Kernel("C++: one parallel pass (at::parallel_for, vectorised)", F32_F64),
                 "cuda": Kernel("CUDA: one elementwise launch", ALL_FLOATS)},
    ),
    OpSpec(
        "mlp_meta_grad",
        "MAML's meta-gradient of a ReLU MLP in closed form: (query losses [T], d loss / d theta [P], d loss / d lr) "
        "from theta [P], support and query sets [T, N, ...], lr [] or [P], K inner steps (forward only)",
        uses=("mlp_meta_grad",),
        kernels={"cpu": Kernel("C++: the R-operator passes as ATen calls in one op, no interpreter between them",
                               F32_F64),
                 "cuda": Kernel("C++: the same ATen calls on the GPU (cuBLAS batched GEMMs)", F32_F64)},
        fallback=("reference", "metareg.ops._reference: autograd through the unrolled inner loop"),
        forward_only=True,
    ),
    OpSpec(
        "bn_pool_relu",
        "relu(max_pool2d(batch_norm(x), 2)) for x [N, C, H, W], training-mode batch norm with weight, bias [C]: "
        "the tail of a Conv4 block (differentiable once)",
        uses=("bn_pool_relu", "bn_pool_relu_backward"),
        kernels={"cpu": Kernel("C++: statistics, then normalise + pool + ReLU in one pass; backward in one full "
                               "pass plus sums over the pooled tensors (channels-last, vectorised over C)", F32_F64)},
        fallback=("reference", "F.batch_norm + max_pool2d + relu (cuDNN on CUDA)"),
    ),
    OpSpec(
        "conv3x3_winograd",
        "F.conv2d(x, weight, padding=1, groups=groups) for x [N, C, H, W] and 3x3 weight [O, C / groups, 3, 3] "
        "by Winograd's F(4x4, 3x3): 4x fewer multiplications (differentiable once)",
        uses=("conv3x3_winograd", "conv3x3_winograd_backward"),
        kernels={"cpu": Kernel("C++: tile transforms + batched BLAS products, 32 tiles at a time per thread in "
                               "cache (channels-last, vectorised over C)", F32_F64)},
        fallback=("reference", "F.conv2d (oneDNN on CPU, cuDNN on CUDA)"),
    ),
)

#: name -> spec
SPECS: dict[str, OpSpec] = {spec.name: spec for spec in OPS}
