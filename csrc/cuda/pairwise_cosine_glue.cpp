// Torch glue of the CUDA pairwise_cosine kernels: checks, dtype, device guard, current stream,
// path choice.  Compiled only against a CUDA build of torch (setup.py).

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "cuda/launchers.h"

namespace metareg {
namespace {

constexpr const char* kFwd = "metareg::pairwise_cosine";
constexpr const char* kBwd = "metareg::pairwise_cosine_backward";

void check_launch(cudaError_t err, const char* op, const char* what) {
  TORCH_CHECK(err == cudaSuccess, op, ": ", what, " failed: ", cudaGetErrorString(err));
}

// The fused kernels give each output row (or gradient row) to one warp, so they win while a
// warp's share, max(N, M) * D, is small (launch-bound episodes); beyond that cuBLAS wins.
bool use_fused(const CosineDims& d, cuda::DType dt) {
  if (std::max(d.N, d.M) > cuda::pairwise_cosine_fused_max_side(dt)) return false;
  const int o = path_override();
  if (o != 0) return o == 1;
  return std::max(d.N, d.M) * d.D <= (int64_t{1} << 16);
}

at::Tensor inv_like(const at::Tensor& x, int64_t rows) {
  return at::empty({rows}, x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
}

at::Tensor pairwise_cosine_cuda(const at::Tensor& a_in, const at::Tensor& b_in, double eps) {
  const CosineDims d = check_pairwise_cosine(kFwd, a_in, b_in, /*allow_half=*/true);
  TORCH_CHECK(a_in.is_cuda(), kFwd, ": CUDA kernel called with a tensor on ", a_in.device());
  const c10::cuda::CUDAGuard guard(a_in.device());
  const bool same = a_in.is_same(b_in);
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = same ? a : b_in.contiguous();
  std::vector<int64_t> shape = a.dim() == 3 ? std::vector<int64_t>{d.B, d.N, d.M} : std::vector<int64_t>{d.N, d.M};
  at::Tensor out = at::empty(shape, a.options());
  if (out.numel() == 0) return out;
  if (d.D == 0) return out.zero_();
  const cuda::DType dt = cuda::dtype_of(kFwd, a.scalar_type());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (use_fused(d, dt)) {
    check_launch(cuda::pairwise_cosine_fused(dt, a.data_ptr(), b.data_ptr(), out.data_ptr(), d.B, d.N, d.M, d.D, eps,
                                             stream),
                 kFwd, "fused kernel");
    return out;
  }
  at::Tensor ah = at::empty_like(a);
  check_launch(cuda::normalize_rows(dt, a.data_ptr(), ah.data_ptr(), nullptr, nullptr, d.B * d.N, d.D, eps, stream),
               kFwd, "normalize_rows");
  at::Tensor bh = ah;
  if (!same) {
    bh = at::empty_like(b);
    check_launch(cuda::normalize_rows(dt, b.data_ptr(), bh.data_ptr(), nullptr, nullptr, d.B * d.M, d.D, eps, stream),
                 kFwd, "normalize_rows");
  }
  if (a.dim() == 3) {
    at::bmm_out(out, ah, bh.transpose(1, 2));
  } else {
    at::mm_out(out, ah, bh.t());
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> pairwise_cosine_backward_cuda(const at::Tensor& grad_in, const at::Tensor& a_in,
                                                                 const at::Tensor& b_in, double eps) {
  const CosineDims d = check_pairwise_cosine_backward(kBwd, grad_in, a_in, b_in, /*allow_half=*/true);
  TORCH_CHECK(a_in.is_cuda(), kBwd, ": CUDA kernel called with a tensor on ", a_in.device());
  const c10::cuda::CUDAGuard guard(a_in.device());
  const bool same = a_in.is_same(b_in);
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = same ? a : b_in.contiguous();
  at::Tensor ga = at::empty_like(a, at::MemoryFormat::Contiguous);
  at::Tensor gb = at::empty_like(b, at::MemoryFormat::Contiguous);
  if (ga.numel() == 0 && gb.numel() == 0) return {ga, gb};
  if (d.N == 0 || d.M == 0) return {ga.zero_(), gb.zero_()};
  const at::Tensor G = grad_in.contiguous();
  const cuda::DType dt = cuda::dtype_of(kBwd, a.scalar_type());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (use_fused(d, dt)) {
    check_launch(cuda::pairwise_cosine_backward_fused(dt, G.data_ptr(), a.data_ptr(), b.data_ptr(), ga.data_ptr(),
                                                      gb.data_ptr(), d.B, d.N, d.M, d.D, eps, stream),
                 kBwd, "fused backward kernel");
    return {ga, gb};
  }
  at::Tensor ah = at::empty_like(a), inv_a = inv_like(a, d.B * d.N);
  at::Tensor un_a = at::empty({d.B * d.N}, a.options().dtype(at::kByte));
  check_launch(cuda::normalize_rows(dt, a.data_ptr(), ah.data_ptr(), inv_a.data_ptr(), un_a.data_ptr<uint8_t>(),
                                    d.B * d.N, d.D, eps, stream),
               kBwd, "normalize_rows");
  at::Tensor bh = ah, inv_b = inv_a, un_b = un_a;
  if (!same) {
    bh = at::empty_like(b);
    inv_b = inv_like(b, d.B * d.M);
    un_b = at::empty({d.B * d.M}, b.options().dtype(at::kByte));
    check_launch(cuda::normalize_rows(dt, b.data_ptr(), bh.data_ptr(), inv_b.data_ptr(), un_b.data_ptr<uint8_t>(),
                                      d.B * d.M, d.D, eps, stream),
                 kBwd, "normalize_rows");
  }
  if (a.dim() == 3) {
    at::bmm_out(ga, G, bh);
    at::bmm_out(gb, G.transpose(1, 2), ah);
  } else {
    at::mm_out(ga, G, bh);
    at::mm_out(gb, G.t(), ah);
  }
  check_launch(cuda::correct_rows(dt, ga.data_ptr(), ah.data_ptr(), inv_a.data_ptr(), un_a.data_ptr<uint8_t>(),
                                  d.B * d.N, d.D, stream),
               kBwd, "correct_rows");
  check_launch(cuda::correct_rows(dt, gb.data_ptr(), bh.data_ptr(), inv_b.data_ptr(), un_b.data_ptr<uint8_t>(),
                                  d.B * d.M, d.D, stream),
               kBwd, "correct_rows");
  return {ga, gb};
}

}  // namespace
}  // namespace metareg

TORCH_LIBRARY_IMPL(metareg, CUDA, m) {
  m.impl("pairwise_cosine", &metareg::pairwise_cosine_cuda);
  m.impl("pairwise_cosine_backward", &metareg::pairwise_cosine_backward_cuda);
}
