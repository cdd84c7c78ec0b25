// The boundary between metareg's CUDA kernels (csrc/cuda/*.cu) and their torch glue
// (csrc/cuda/*_glue.cpp).  Only CUDA runtime types cross it: the .cu files include no torch
// header, so `nvcc -c` proves they compile on a machine whose torch has no CUDA headers.
// Pointers are raw device pointers to contiguous row-major data of the given element type.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/dtype.h"

namespace metareg {
namespace cuda {

// One launch: row norms, products and scaling for a [B, N, D] x b [B, M, D] -> out [B, N, M].
// Meant for launch-bound shapes; needs M (inv norms of b) to fit in shared memory.
cudaError_t pairwise_cosine_fused(DType dt, const void* a, const void* b, void* out, int64_t B, int64_t N, int64_t M,
                                  int64_t D, double eps, cudaStream_t stream);
// Largest M that pairwise_cosine_fused accepts for this dtype (shared-memory bound).
int64_t pairwise_cosine_fused_max_side(DType dt);

// One launch: grad_a [B, N, D] and grad_b [B, M, D] from grad [B, N, M], a and b.
cudaError_t pairwise_cosine_backward_fused(DType dt, const void* grad, const void* a, const void* b, void* grad_a,
                                           void* grad_b, int64_t B, int64_t N, int64_t M, int64_t D, double eps,
                                           cudaStream_t stream);

// xhat = x / max(|x|, eps) per row; when inv is not null also inv = 1 / max(|x|, eps) (float,
// or double for F64) and unclamped = |x| >= eps.
cudaError_t normalize_rows(DType dt, const void* x, void* xhat, void* inv, uint8_t* unclamped, int64_t rows,
                           int64_t D, double eps, cudaStream_t stream);

// In place per row: g = inv * (g - unclamped * <g, xhat> * xhat).
cudaError_t correct_rows(DType dt, void* g, const void* xhat, const void* inv, const uint8_t* unclamped, int64_t rows,
                         int64_t D, cudaStream_t stream);

// out [T, P] = params - lr * grads.  params is [P] when shared else [T, P]; lr is lr_value when
// lr == nullptr, else a device tensor: lr_kind 0 = [] , 1 = [P], 2 = [T, P].
cudaError_t task_step_forward(DType dt, const void* params, const void* grads, const void* lr, double lr_value,
                              void* out, int64_t T, int64_t P, bool shared, int lr_kind, cudaStream_t stream);

// grad_grads = -lr * grad; grad_params (when not null) = sum over tasks of grad; grad_lr = -grad *
// grads, summed over tasks unless lr_kind == 2 ([P] for lr_kind 0: the caller sums it).
cudaError_t task_step_backward(DType dt, const void* grad, const void* grads, const void* lr, void* grad_grads,
                               void* grad_params, void* grad_lr, int64_t T, int64_t P, int lr_kind,
                               cudaStream_t stream);

}  // namespace cuda
}  // namespace metareg

// Build facts reported by `metareg ops`.
int metareg_cuda_runtime_version();
const char* metareg_cuda_arch_list();
