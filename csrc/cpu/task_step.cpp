// CPU kernels of metareg::task_step (params - lr * grads for every task at once) and of the
// fused backward used when lr is a learnable tensor (Meta-SGD).
//
// The forward writes a fresh [T, P] output in one parallel pass; the tasks share params (and a
// [P] lr), which stay in cache while successive rows stream through.  The backward walks columns
// in blocks so the sums over tasks (d params, d lr) are accumulated in registers/L1 while d grads
// is written, i.e. one read of grad and grads instead of three separate reductions.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "checks.h"
#include "cpu/simd.h"

namespace metareg {
namespace {

constexpr const char* kStep = "metareg::task_step";
constexpr const char* kStepT = "metareg::task_step_tensor";
constexpr const char* kStepBwd = "metareg::task_step_backward";

// Elements per parallel task: below this the fork costs more than it saves.
constexpr int64_t kGrain = 1 << 16;

// out[i] = p[i] - l[i] * g[i] over one contiguous segment; the strides make p and l either
// per-element (1) or broadcast scalars (0), so one clone covers every lr/params layout.
template <typename T>
METAREG_CLONES void step_segment(const T* p, const T* g, const T* l, T lr, T* out, int64_t n, int64_t lstride) {
  if (l == nullptr) {
    METAREG_SIMD
    for (int64_t i = 0; i < n; ++i) out[i] = p[i] - lr * g[i];
  } else if (lstride == 0) {
    const T lv = l[0];
    METAREG_SIMD
    for (int64_t i = 0; i < n; ++i) out[i] = p[i] - lv * g[i];
  } else {
    METAREG_SIMD
    for (int64_t i = 0; i < n; ++i) out[i] = p[i] - l[i] * g[i];
  }
}

// Shared by task_step and task_step_tensor: lr is either the float lr_value (lr == nullptr) or a
// tensor of kind d.lr_kind.
at::Tensor step_impl(const char* op, const at::Tensor& params_in, const at::Tensor& grads_in, const at::Tensor* lr_in,
                     double lr_value) {
  const StepDims d = check_task_step(op, params_in, grads_in, lr_in, /*allow_half=*/false);
  TORCH_CHECK(grads_in.device().is_cpu(), op, ": CPU kernel called with a tensor on ", grads_in.device());
  const at::Tensor params = params_in.contiguous();
  const at::Tensor grads = grads_in.contiguous();
  const at::Tensor lr = lr_in ? lr_in->contiguous() : at::Tensor();
  at::Tensor out = at::empty({d.T, d.P}, grads.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(grads.scalar_type(), "metareg::task_step", [&] {
    const scalar_t* pp = params.data_ptr<scalar_t>();
    const scalar_t* gp = grads.data_ptr<scalar_t>();
    const scalar_t* lp = lr.defined() ? lr.data_ptr<scalar_t>() : nullptr;
    scalar_t* op_ = out.data_ptr<scalar_t>();
    const int64_t P = d.P;
    const scalar_t lrv = static_cast<scalar_t>(lr_value);
    at::parallel_for(0, d.T * P, kGrain, [&](int64_t begin, int64_t end) {
      // Split [begin, end) at row boundaries so every segment has unit-stride operands.
      int64_t i = begin;
      while (i < end) {
        const int64_t c = i % P;
        const int64_t n = std::min(end - i, P - c);
        const scalar_t* prow = d.shared ? pp + c : pp + i;
        const scalar_t* lrow = nullptr;
        int64_t lstride = 1;
        if (lp != nullptr) {
          if (d.lr_kind == 0) {
            lrow = lp;
            lstride = 0;
          } else {
            lrow = d.lr_kind == 1 ? lp + c : lp + i;
          }
        }
        step_segment<scalar_t>(prow, gp + i, lrow, lrv, op_ + i, n, lstride);
        i += n;
      }
    });
  });
  return out;
}

at::Tensor task_step_cpu(const at::Tensor& params, const at::Tensor& grads, double lr) {
  return step_impl(kStep, params, grads, nullptr, lr);
}

at::Tensor task_step_tensor_cpu(const at::Tensor& params, const at::Tensor& grads, const at::Tensor& lr) {
  return step_impl(kStepT, params, grads, &lr, 0.0);
}

// Columns [c0, c1) of the backward: dg = -lr * grad; sum_p += grad over tasks (when params is
// shared); dl = -grad * grads, summed over tasks unless lr is [T, P].
template <typename T>
METAREG_CLONES void step_backward_cols(const T* grad, const T* grads, const T* lr, T* dg, T* dp, T* dl, int64_t T_,
                                       int64_t P, int64_t c0, int64_t c1, int lr_kind, bool shared) {
  const int64_t n = c1 - c0;
  if (dp) std::fill(dp + c0, dp + c1, T(0));
  if (lr_kind != 2) std::fill(dl + c0, dl + c1, T(0));
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t o = t * P + c0;
    const T* g = grad + o;
    const T* x = grads + o;
    T* y = dg + o;
    const T* l = lr_kind == 0 ? nullptr : (lr_kind == 1 ? lr + c0 : lr + o);
    T* acc_l = lr_kind == 2 ? dl + o : dl + c0;
    const T l0 = lr_kind == 0 ? lr[0] : T(0);
    if (lr_kind == 2) {
      METAREG_SIMD
      for (int64_t i = 0; i < n; ++i) {
        y[i] = -l[i] * g[i];
        acc_l[i] = -g[i] * x[i];
      }
    } else if (lr_kind == 1) {
      METAREG_SIMD
      for (int64_t i = 0; i < n; ++i) {
        y[i] = -l[i] * g[i];
        acc_l[i] -= g[i] * x[i];
      }
    } else {
      METAREG_SIMD
      for (int64_t i = 0; i < n; ++i) {
        y[i] = -l0 * g[i];
        acc_l[i] -= g[i] * x[i];
      }
    }
    if (shared) {
      T* s = dp + c0;
      METAREG_SIMD
      for (int64_t i = 0; i < n; ++i) s[i] += g[i];
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> task_step_backward_cpu(const at::Tensor& grad_in,
                                                                      const at::Tensor& grads_in,
                                                                      const at::Tensor& lr_in, bool params_shared) {
  // grad plays the role of params in the shape checks: both are [T, P] here.
  const StepDims d = check_task_step(kStepBwd, grad_in, grads_in, &lr_in, /*allow_half=*/false);
  TORCH_CHECK(grad_in.dim() == 2, kStepBwd, ": expected grad of shape [T, P] = ", grads_in.sizes(),
              ", got grad of shape ", grad_in.sizes());
  TORCH_CHECK(grads_in.device().is_cpu(), kStepBwd, ": CPU kernel called with a tensor on ", grads_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor grads = grads_in.contiguous();
  const at::Tensor lr = lr_in.contiguous();
  at::Tensor dg = at::empty({d.T, d.P}, grads.options());
  at::Tensor dp = at::empty({params_shared ? d.P : 0}, grads.options());
  // A 0-d lr is summed per column first, then over columns.
  at::Tensor dl = at::empty(d.lr_kind == 2 ? std::vector<int64_t>{d.T, d.P} : std::vector<int64_t>{d.P}, grads.options());
  if (d.P > 0) {
    AT_DISPATCH_FLOATING_TYPES(grads.scalar_type(), kStepBwd, [&] {
      const scalar_t* gp = grad.data_ptr<scalar_t>();
      const scalar_t* xp = grads.data_ptr<scalar_t>();
      const scalar_t* lp = lr.data_ptr<scalar_t>();
      scalar_t* dgp = dg.data_ptr<scalar_t>();
      scalar_t* dpp = params_shared ? dp.data_ptr<scalar_t>() : nullptr;
      scalar_t* dlp = dl.data_ptr<scalar_t>();
      // Column blocks of 1k keep the running sums in L1 while the tasks stream past.
      const int64_t block = 1024;
      const int64_t nblocks = (d.P + block - 1) / block;
      at::parallel_for(0, nblocks, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, block * d.T)),
                       [&](int64_t b0, int64_t b1) {
                         for (int64_t bl = b0; bl < b1; ++bl) {
                           const int64_t c0 = bl * block, c1 = std::min(d.P, c0 + block);
                           step_backward_cols<scalar_t>(gp, xp, lp, dgp, dpp, dlp, d.T, d.P, c0, c1, d.lr_kind,
                                                        params_shared);
                         }
                       });
    });
  } else if (d.lr_kind == 0) {
    dl.zero_();
  }
  if (d.lr_kind == 0) dl = dl.sum();
  return {dp, dg, dl};
}

}  // namespace
}  // namespace metareg

TORCH_LIBRARY_IMPL(metareg, CPU, m) {
  m.impl("task_step", &metareg::task_step_cpu);
  m.impl("task_step_tensor", &metareg::task_step_tensor_cpu);
  m.impl("task_step_backward", &metareg::task_step_backward_cpu);
}
