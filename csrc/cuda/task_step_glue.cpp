// Torch glue of the CUDA task_step kernels.  Compiled only against a CUDA build of torch.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "cuda/launchers.h"

namespace metareg {
namespace {

constexpr const char* kStep = "metareg::task_step";
constexpr const char* kStepT = "metareg::task_step_tensor";
constexpr const char* kStepBwd = "metareg::task_step_backward";

at::Tensor step_impl(const char* op, const at::Tensor& params_in, const at::Tensor& grads_in, const at::Tensor* lr_in,
                     double lr_value) {
  const StepDims d = check_task_step(op, params_in, grads_in, lr_in, /*allow_half=*/true);
  TORCH_CHECK(grads_in.is_cuda(), op, ": CUDA kernel called with a tensor on ", grads_in.device());
  const c10::cuda::CUDAGuard guard(grads_in.device());
  const at::Tensor params = params_in.contiguous();
  const at::Tensor grads = grads_in.contiguous();
  const at::Tensor lr = lr_in ? lr_in->contiguous() : at::Tensor();
  at::Tensor out = at::empty({d.T, d.P}, grads.options());
  const cudaError_t err =
      cuda::task_step_forward(cuda::dtype_of(op, grads.scalar_type()), params.data_ptr(), grads.data_ptr(),
                              lr.defined() ? lr.data_ptr() : nullptr, lr_value, out.data_ptr(), d.T, d.P, d.shared,
                              d.lr_kind, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

at::Tensor task_step_cuda(const at::Tensor& params, const at::Tensor& grads, double lr) {
  return step_impl(kStep, params, grads, nullptr, lr);
}

at::Tensor task_step_tensor_cuda(const at::Tensor& params, const at::Tensor& grads, const at::Tensor& lr) {
  return step_impl(kStepT, params, grads, &lr, 0.0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> task_step_backward_cuda(const at::Tensor& grad_in,
                                                                       const at::Tensor& grads_in,
                                                                       const at::Tensor& lr_in, bool params_shared) {
  const StepDims d = check_task_step(kStepBwd, grad_in, grads_in, &lr_in, /*allow_half=*/true);
  TORCH_CHECK(grad_in.dim() == 2, kStepBwd, ": expected grad of shape [T, P] = ", grads_in.sizes(),
              ", got grad of shape ", grad_in.sizes());
  TORCH_CHECK(grads_in.is_cuda(), kStepBwd, ": CUDA kernel called with a tensor on ", grads_in.device());
  const c10::cuda::CUDAGuard guard(grads_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor grads = grads_in.contiguous();
  const at::Tensor lr = lr_in.contiguous();
  at::Tensor dg = at::empty({d.T, d.P}, grads.options());
  at::Tensor dp = at::empty({params_shared ? d.P : 0}, grads.options());
  // A 0-d lr is summed per column by the kernel, then over columns here.
  at::Tensor dl = at::empty(d.lr_kind == 2 ? std::vector<int64_t>{d.T, d.P} : std::vector<int64_t>{d.P},
                            grads.options());
  const cudaError_t err = cuda::task_step_backward(cuda::dtype_of(kStepBwd, grads.scalar_type()), grad.data_ptr(),
                                                   grads.data_ptr(), lr.data_ptr(), dg.data_ptr(),
                                                   params_shared ? dp.data_ptr() : nullptr, dl.data_ptr(), d.T, d.P,
                                                   d.lr_kind, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, kStepBwd, ": kernel launch failed: ", cudaGetErrorString(err));
  if (d.lr_kind == 0) dl = dl.sum();
  return {dp, dg, dl};
}

}  // namespace
}  // namespace metareg

TORCH_LIBRARY_IMPL(metareg, CUDA, m) {
  m.impl("task_step", &metareg::task_step_cuda);
  m.impl("task_step_tensor", &metareg::task_step_tensor_cuda);
  m.impl("task_step_backward", &metareg::task_step_backward_cuda);
}
