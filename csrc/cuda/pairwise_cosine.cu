// CUDA kernels of metareg::pairwise_cosine (torch glue: pairwise_cosine_glue.cpp).
//
// Launch-bound shapes (few-shot episodes, T x T gradient conflicts) use one fused kernel per
// direction: each block first computes the inverse norms of the rows its warps will pair with
// (into shared memory), then each warp owns one output row and fuses products and scaling.
// Large shapes are the glue's job: normalize_rows here, then cuBLAS through at::bmm (which also
// brings tensor cores for half/bfloat16 and for float32 when TF32 is allowed), then for the
// backward correct_rows.

#include "cuda/common.cuh"

namespace metareg {
namespace cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxBatchGrid = 65535;  // gridDim.y limit; larger B is launched in slices
constexpr int kSharedBytes = 48 * 1024;

// Inverse norm 1 / max(|x|, eps) of a row of length D, by one warp; every lane gets it.
template <typename T>
__device__ __forceinline__ typename NormAcc<T>::type warp_row_norm(const T* x, int64_t D, int lane) {
  using NA = typename NormAcc<T>::type;
  NA ss = 0;
  for (int64_t d = lane; d < D; d += 32) {
    const NA v = static_cast<NA>(to_acc(x[d]));
    ss += v * v;
  }
  return sqrt(warp_sum(ss));
}

template <typename T>
__device__ __forceinline__ typename Acc<T>::type inv_of(typename NormAcc<T>::type norm, double eps) {
  using NA = typename NormAcc<T>::type;
  return static_cast<typename Acc<T>::type>(NA(1) / max(norm, static_cast<NA>(eps)));
}

// Fills inv[q] for the rows of x [rows, D], the block's warps striding over rows.
template <typename T>
__device__ void block_inv_norms(const T* x, int64_t rows, int64_t D, double eps, typename Acc<T>::type* inv) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t q = warp; q < rows; q += kWarps) {
    const auto iv = inv_of<T>(warp_row_norm(x + q * D, D, lane), eps);
    if (lane == 0) inv[q] = iv;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    fused_forward_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, int64_t N, int64_t M,
                         int64_t D, double eps) {
  using A = typename Acc<T>::type;
  extern __shared__ __align__(16) unsigned char smem[];
  A* inv_b = reinterpret_cast<A*>(smem);
  const int64_t k = blockIdx.y;
  const T* bk = b + k * M * D;
  block_inv_norms(bk, M, D, eps, inv_b);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (i >= N) return;  // no barrier below
  const T* x = a + (k * N + i) * D;
  const A ia = inv_of<T>(warp_row_norm(x, D, lane), eps);
  T* orow = out + (k * N + i) * M;
  // Lane l keeps the result for column j = l (mod 32) so each 32 columns go out in one store.
  A mine = 0;
  for (int64_t j = 0; j < M; ++j) {
    const T* y = bk + j * D;
    A s = 0;
    // Normalise x before the product so |x| near the float limit cannot overflow the sum.
    for (int64_t d = lane; d < D; d += 32) s += (to_acc(x[d]) * ia) * to_acc(y[d]);
    s = warp_sum(s) * inv_b[j];
    if ((j & 31) == lane) mine = s;
    if ((j & 31) == 31 || j == M - 1) {
      const int64_t col = (j & ~int64_t{31}) + lane;
      if (col <= j) orow[col] = from_acc<T>(mine);
    }
  }
}

// acc[v] += sum_q coef(q) * inv_o[q] * other[q, d0 + lane + 32 v]: the gradient with respect to
// one normalised own row, restricted to a chunk of 32 * V features.
template <typename T, int V>
__device__ __forceinline__ void accumulate_chunk(typename Acc<T>::type (&acc)[V], const T* other, const T* coef,
                                                 int64_t coef_stride, const typename Acc<T>::type* inv_o,
                                                 int64_t other_rows, int64_t D, int64_t d0, int lane) {
#pragma unroll
  for (int v = 0; v < V; ++v) acc[v] = 0;
  for (int64_t q = 0; q < other_rows; ++q) {
    const auto c = to_acc(coef[q * coef_stride]) * inv_o[q];
    const T* y = other + q * D;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int64_t d = d0 + lane + 32 * v;
      if (d < D) acc[v] += c * to_acc(y[d]);
    }
  }
}

// Blocks [0, ceil(N / kWarps)) produce rows of grad_a, the rest rows of grad_b; each block first
// loads the inverse norms of the other side into shared memory.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    fused_backward_kernel(const T* __restrict__ G, const T* __restrict__ a, const T* __restrict__ b,
                          T* __restrict__ ga, T* __restrict__ gb, int64_t N, int64_t M, int64_t D, double eps) {
  using A = typename Acc<T>::type;
  extern __shared__ __align__(16) unsigned char smem[];
  A* inv_o = reinterpret_cast<A*>(smem);
  const int64_t k = blockIdx.y;
  const int64_t blocks_a = (N + kWarps - 1) / kWarps;
  const bool role_a = blockIdx.x < blocks_a;
  const int64_t own_rows = role_a ? N : M, other_rows = role_a ? M : N;
  const T* own = role_a ? a + k * N * D : b + k * M * D;
  const T* other = role_a ? b + k * M * D : a + k * N * D;
  T* gout = role_a ? ga + k * N * D : gb + k * M * D;
  const T* Gk = G + k * N * M;
  block_inv_norms(other, other_rows, D, eps, inv_o);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t r = (static_cast<int64_t>(blockIdx.x) - (role_a ? 0 : blocks_a)) * kWarps + warp;
  if (r >= own_rows) return;  // no barrier below
  // grad_a row i pairs with G[i, :] (stride 1); grad_b row j with G[:, j] (stride M).
  const T* coef = role_a ? Gk + r * M : Gk + r;
  const int64_t coef_stride = role_a ? 1 : M;
  const T* x = own + r * D;
  T* g = gout + r * D;
  using NA = typename NormAcc<T>::type;
  const NA norm = warp_row_norm(x, D, lane);
  const A ix = inv_of<T>(norm, eps);
  const bool unclamped = norm >= static_cast<NA>(eps);
  A acc[V];
  if (D <= 32 * V) {
    // Whole row in registers: one sweep over the other side.
    accumulate_chunk<T, V>(acc, other, coef, coef_stride, inv_o, other_rows, D, 0, lane);
    A part = 0;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int64_t d = lane + 32 * v;
      if (d < D) part += acc[v] * to_acc(x[d]) * ix;
    }
    const A rdot = unclamped ? warp_sum(part) : A(0);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int64_t d = lane + 32 * v;
      if (d < D) g[d] = from_acc<T>(ix * (acc[v] - rdot * to_acc(x[d]) * ix));
    }
    return;
  }
  // Long rows: a first sweep for <grad, xhat>, a second that recomputes each chunk and writes it
  // (recomputing keeps half/bfloat16 exact where storing the chunk would round it).
  A part = 0;
  for (int64_t d0 = 0; d0 < D; d0 += 32 * V) {
    accumulate_chunk<T, V>(acc, other, coef, coef_stride, inv_o, other_rows, D, d0, lane);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int64_t d = d0 + lane + 32 * v;
      if (d < D) part += acc[v] * to_acc(x[d]) * ix;
    }
  }
  const A rdot = unclamped ? warp_sum(part) : A(0);
  for (int64_t d0 = 0; d0 < D; d0 += 32 * V) {
    accumulate_chunk<T, V>(acc, other, coef, coef_stride, inv_o, other_rows, D, d0, lane);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int64_t d = d0 + lane + 32 * v;
      if (d < D) g[d] = from_acc<T>(ix * (acc[v] - rdot * to_acc(x[d]) * ix));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    normalize_rows_kernel(const T* __restrict__ x, T* __restrict__ xhat, typename Acc<T>::type* __restrict__ inv,
                          uint8_t* __restrict__ unclamped, int64_t rows, int64_t D, double eps) {
  using NA = typename NormAcc<T>::type;
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= rows) return;
  const T* xr = x + r * D;
  const NA norm = warp_row_norm(xr, D, lane);
  const auto iv = inv_of<T>(norm, eps);
  if (inv != nullptr && lane == 0) {
    inv[r] = iv;
    unclamped[r] = norm >= static_cast<NA>(eps);
  }
  T* yr = xhat + r * D;
  for (int64_t d = lane; d < D; d += 32) yr[d] = from_acc<T>(to_acc(xr[d]) * iv);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    correct_rows_kernel(T* __restrict__ g, const T* __restrict__ xhat, const typename Acc<T>::type* __restrict__ inv,
                        const uint8_t* __restrict__ unclamped, int64_t rows, int64_t D) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= rows) return;
  T* gr = g + r * D;
  const T* xr = xhat + r * D;
  A part = 0;
  for (int64_t d = lane; d < D; d += 32) part += to_acc(gr[d]) * to_acc(xr[d]);
  const A rdot = unclamped[r] ? warp_sum(part) : A(0);
  const A iv = inv[r];
  for (int64_t d = lane; d < D; d += 32) gr[d] = from_acc<T>(iv * (to_acc(gr[d]) - rdot * to_acc(xr[d])));
}

size_t acc_size(DType dt) { return dt == DType::F64 ? sizeof(double) : sizeof(float); }

}  // namespace

int64_t pairwise_cosine_fused_max_side(DType dt) { return kSharedBytes / static_cast<int64_t>(acc_size(dt)); }

cudaError_t pairwise_cosine_fused(DType dt, const void* a, const void* b, void* out, int64_t B, int64_t N, int64_t M,
                                  int64_t D, double eps, cudaStream_t stream) {
  if (M > pairwise_cosine_fused_max_side(dt)) return cudaErrorInvalidValue;
  return dispatch(dt, [&](auto* tag) -> cudaError_t {
    using T = std::remove_pointer_t<decltype(tag)>;
    const size_t smem = static_cast<size_t>(M > 0 ? M : 1) * acc_size(dt);
    for (int64_t k0 = 0; k0 < B; k0 += kMaxBatchGrid) {
      const int64_t nb = B - k0 < kMaxBatchGrid ? B - k0 : kMaxBatchGrid;
      const dim3 grid(ceil_div(N, kWarps), static_cast<unsigned>(nb));
      fused_forward_kernel<T><<<grid, kThreads, smem, stream>>>(static_cast<const T*>(a) + k0 * N * D,
                                                                static_cast<const T*>(b) + k0 * M * D,
                                                                static_cast<T*>(out) + k0 * N * M, N, M, D, eps);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
  });
}

cudaError_t pairwise_cosine_backward_fused(DType dt, const void* grad, const void* a, const void* b, void* grad_a,
                                           void* grad_b, int64_t B, int64_t N, int64_t M, int64_t D, double eps,
                                           cudaStream_t stream) {
  const int64_t side = N > M ? N : M;
  if (side > pairwise_cosine_fused_max_side(dt)) return cudaErrorInvalidValue;
  return dispatch(dt, [&](auto* tag) -> cudaError_t {
    using T = std::remove_pointer_t<decltype(tag)>;
    const size_t smem = static_cast<size_t>(side > 0 ? side : 1) * acc_size(dt);
    for (int64_t k0 = 0; k0 < B; k0 += kMaxBatchGrid) {
      const int64_t nb = B - k0 < kMaxBatchGrid ? B - k0 : kMaxBatchGrid;
      const dim3 grid(ceil_div(N, kWarps) + ceil_div(M, kWarps), static_cast<unsigned>(nb));
      fused_backward_kernel<T, 4><<<grid, kThreads, smem, stream>>>(
          static_cast<const T*>(grad) + k0 * N * M, static_cast<const T*>(a) + k0 * N * D,
          static_cast<const T*>(b) + k0 * M * D, static_cast<T*>(grad_a) + k0 * N * D,
          static_cast<T*>(grad_b) + k0 * M * D, N, M, D, eps);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
  });
}

cudaError_t normalize_rows(DType dt, const void* x, void* xhat, void* inv, uint8_t* unclamped, int64_t rows,
                           int64_t D, double eps, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return dispatch(dt, [&](auto* tag) -> cudaError_t {
    using T = std::remove_pointer_t<decltype(tag)>;
    using A = typename Acc<T>::type;
    normalize_rows_kernel<T><<<ceil_div(rows, kWarps), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(xhat), static_cast<A*>(inv), unclamped, rows, D, eps);
    return cudaGetLastError();
  });
}

cudaError_t correct_rows(DType dt, void* g, const void* xhat, const void* inv, const uint8_t* unclamped, int64_t rows,
                         int64_t D, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return dispatch(dt, [&](auto* tag) -> cudaError_t {
    using T = std::remove_pointer_t<decltype(tag)>;
    using A = typename Acc<T>::type;
    correct_rows_kernel<T><<<ceil_div(rows, kWarps), kThreads, 0, stream>>>(
        static_cast<T*>(g), static_cast<const T*>(xhat), static_cast<const A*>(inv), unclamped, rows, D);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace metareg
