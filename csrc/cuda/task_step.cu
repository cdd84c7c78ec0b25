// CUDA kernels of metareg::task_step and its fused backward (torch glue: task_step_glue.cpp).
//
// Both are pure bandwidth: the forward reads grads (and params/lr unless shared) once and writes
// the output once, in one launch for all tasks and all parameter tensors.  Rows of a flat model
// rarely have an aligned length (Conv4: P = 112,261), so instead of vector loads each thread
// handles kUnroll coalesced elements of a row, which keeps enough bytes in flight.

#include "cuda/common.cuh"

namespace metareg {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;
constexpr int kMaxGridY = 65535;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    step_forward_kernel(const T* __restrict__ params, const T* __restrict__ grads, const T* __restrict__ lr,
                        typename Acc<T>::type lr_value, T* __restrict__ out, int64_t n_tasks, int64_t P, bool shared,
                        int lr_kind) {
  using A = typename Acc<T>::type;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kThreads * kUnroll + threadIdx.x;
  const A l0 = (lr != nullptr && lr_kind == 0) ? to_acc(lr[0]) : lr_value;
  for (int64_t t = blockIdx.y; t < n_tasks; t += gridDim.y) {
    const int64_t row = t * P;
    A pv[kUnroll], gv[kUnroll], lv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + u * kThreads;
      if (c < P) {
        gv[u] = to_acc(grads[row + c]);
        pv[u] = to_acc(params[shared ? c : row + c]);
        lv[u] = (lr == nullptr || lr_kind == 0) ? l0 : to_acc(lr[lr_kind == 1 ? c : row + c]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + u * kThreads;
      if (c < P) out[row + c] = from_acc<T>(pv[u] - lv[u] * gv[u]);
    }
  }
}

// One thread per column: the task sums stay in registers while d grads is written.
template <typename T>
__global__ void __launch_bounds__(128)
    step_backward_kernel(const T* __restrict__ grad, const T* __restrict__ grads, const T* __restrict__ lr,
                         T* __restrict__ grad_grads, T* __restrict__ grad_params, T* __restrict__ grad_lr,
                         int64_t n_tasks, int64_t P, int lr_kind) {
  using A = typename Acc<T>::type;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= P) return;
  const A l0 = lr_kind == 0 ? to_acc(lr[0]) : A(0);
  const A l1 = lr_kind == 1 ? to_acc(lr[c]) : A(0);
  A sp = 0, sl = 0;
  for (int64_t t = 0; t < n_tasks; ++t) {
    const int64_t o = t * P + c;
    const A g = to_acc(grad[o]);
    const A x = to_acc(grads[o]);
    const A l = lr_kind == 0 ? l0 : (lr_kind == 1 ? l1 : to_acc(lr[o]));
    grad_grads[o] = from_acc<T>(-l * g);
    sp += g;
    if (lr_kind == 2) {
      grad_lr[o] = from_acc<T>(-g * x);
    } else {
      sl -= g * x;
    }
  }
  if (grad_params != nullptr) grad_params[c] = from_acc<T>(sp);
  if (lr_kind != 2) grad_lr[c] = from_acc<T>(sl);
}

}  // namespace

cudaError_t task_step_forward(DType dt, const void* params, const void* grads, const void* lr, double lr_value,
                              void* out, int64_t T, int64_t P, bool shared, int lr_kind, cudaStream_t stream) {
  if (T == 0 || P == 0) return cudaSuccess;
  return dispatch(dt, [&](auto* tag) -> cudaError_t {
    using Ty = std::remove_pointer_t<decltype(tag)>;
    using A = typename Acc<Ty>::type;
    const dim3 grid(ceil_div(P, int64_t{kThreads} * kUnroll), static_cast<unsigned>(T < kMaxGridY ? T : kMaxGridY));
    step_forward_kernel<Ty><<<grid, kThreads, 0, stream>>>(static_cast<const Ty*>(params),
                                                           static_cast<const Ty*>(grads), static_cast<const Ty*>(lr),
                                                           static_cast<A>(lr_value), static_cast<Ty*>(out), T, P,
                                                           shared, lr_kind);
    return cudaGetLastError();
  });
}

cudaError_t task_step_backward(DType dt, const void* grad, const void* grads, const void* lr, void* grad_grads,
                               void* grad_params, void* grad_lr, int64_t T, int64_t P, int lr_kind,
                               cudaStream_t stream) {
  if (P == 0) return cudaSuccess;
  return dispatch(dt, [&](auto* tag) -> cudaError_t {
    using Ty = std::remove_pointer_t<decltype(tag)>;
    step_backward_kernel<Ty><<<ceil_div(P, 128), 128, 0, stream>>>(
        static_cast<const Ty*>(grad), static_cast<const Ty*>(grads), static_cast<const Ty*>(lr),
        static_cast<Ty*>(grad_grads), static_cast<Ty*>(grad_params), static_cast<Ty*>(grad_lr), T, P, lr_kind);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace metareg
