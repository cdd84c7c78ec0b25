// Argument checks shared by the CPU and CUDA kernels, so both backends reject the same inputs
// with the same message: the op's name, what was expected, and the shapes that came.
#pragma once

#include <atomic>

#include <ATen/ATen.h>

#include <cstdint>

namespace metareg {

// Which kernel path an op takes; tests set it to exercise every path on small shapes.
// 0 = choose by shape, 1 = fused/direct kernel, 2 = normalize + GEMM.  Defined in ops.cpp.
int& path_override();
// How often the CPU wide path of pairwise_cosine handed an input over to the normalise-first path
// (overflow, tiny or zero rows); a test reads it to check the fast path is really taken.
std::atomic<int64_t>& wide_fallbacks();

struct CosineDims {
  int64_t B, N, M, D;
};

inline void check_float_dtype(const char* op, const at::Tensor& t, const char* name, bool allow_half) {
  const auto st = t.scalar_type();
  const bool ok = st == at::kFloat || st == at::kDouble || (allow_half && (st == at::kHalf || st == at::kBFloat16));
  TORCH_CHECK(ok, op, ": ", name, " must be ", allow_half ? "float16, bfloat16, float32 or float64" : "float32 or float64",
              " on ", t.device().type(), ", got ", st);
}

// a [B, N, D] and b [B, M, D], or a [N, D] and b [M, D] (then B = 1).
inline CosineDims check_pairwise_cosine(const char* op, const at::Tensor& a, const at::Tensor& b, bool allow_half) {
  TORCH_CHECK(a.dim() == 2 || a.dim() == 3, op, ": expected a of shape [B, N, D] or [N, D], got a of shape ",
              a.sizes());
  TORCH_CHECK(b.dim() == a.dim(), op, ": expected a and b of the same rank ([B, N, D] and [B, M, D], or [N, D] and ",
              "[M, D]), got a of shape ", a.sizes(), " and b of shape ", b.sizes());
  TORCH_CHECK(a.size(-1) == b.size(-1), op, ": a and b must have the same feature size D (last dim), got a of shape ",
              a.sizes(), " and b of shape ", b.sizes());
  if (a.dim() == 3) {
    TORCH_CHECK(a.size(0) == b.size(0), op, ": a and b must have the same batch size B (first dim), got a of shape ",
                a.sizes(), " and b of shape ", b.sizes());
  }
  TORCH_CHECK(a.device() == b.device(), op, ": a and b must be on the same device, got a on ", a.device(),
              " and b on ", b.device(), " (shapes ", a.sizes(), " and ", b.sizes(), ")");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": a and b must have the same dtype, got a ", a.scalar_type(),
              " and b ", b.scalar_type(), " (shapes ", a.sizes(), " and ", b.sizes(), ")");
  check_float_dtype(op, a, "a", allow_half);
  if (a.dim() == 3) return {a.size(0), a.size(1), b.size(1), a.size(2)};
  return {1, a.size(0), b.size(0), a.size(1)};
}

inline CosineDims check_pairwise_cosine_backward(const char* op, const at::Tensor& grad, const at::Tensor& a,
                                                 const at::Tensor& b, bool allow_half) {
  const CosineDims d = check_pairwise_cosine(op, a, b, allow_half);
  const bool ok = grad.dim() == a.dim() && grad.size(-2) == d.N && grad.size(-1) == d.M &&
                  (a.dim() == 2 || grad.size(0) == d.B);
  TORCH_CHECK(ok, op, ": grad must have the shape of the output, ", a.dim() == 3 ? "[B, N, M]" : "[N, M]",
              ", for a of shape ", a.sizes(), " and b of shape ", b.sizes(), ", got grad of shape ", grad.sizes());
  TORCH_CHECK(grad.device() == a.device() && grad.scalar_type() == a.scalar_type(), op,
              ": grad must match a in device and dtype, got grad ", grad.scalar_type(), " on ", grad.device(), " and a ",
              a.scalar_type(), " on ", a.device());
  return d;
}

struct StepDims {
  int64_t T, P;
  bool shared;   // params is [P], one starting point for all tasks
  int lr_kind;   // 0: scalar (float or 0-d tensor), 1: [P], 2: [T, P]
};

inline StepDims check_task_step(const char* op, const at::Tensor& params, const at::Tensor& grads,
                                const at::Tensor* lr, bool allow_half) {
  TORCH_CHECK(grads.dim() == 2, op, ": expected grads of shape [T, P], got grads of shape ", grads.sizes(),
              " (params of shape ", params.sizes(), ")");
  const int64_t T = grads.size(0), P = grads.size(1);
  const bool shared = params.dim() == 1;
  TORCH_CHECK((shared && params.size(0) == P) || (params.dim() == 2 && params.sizes() == grads.sizes()), op,
              ": expected params of shape [P] or [T, P] matching grads [T, P], got params of shape ", params.sizes(),
              " and grads of shape ", grads.sizes());
  TORCH_CHECK(params.device() == grads.device(), op, ": params and grads must be on the same device, got params on ",
              params.device(), " and grads on ", grads.device());
  TORCH_CHECK(params.scalar_type() == grads.scalar_type(), op, ": params and grads must have the same dtype, got ",
              params.scalar_type(), " and ", grads.scalar_type(), " (shapes ", params.sizes(), " and ", grads.sizes(),
              ")");
  check_float_dtype(op, grads, "grads", allow_half);
  int lr_kind = 0;
  if (lr != nullptr) {
    if (lr->dim() == 0) {
      lr_kind = 0;
    } else if (lr->dim() == 1 && lr->size(0) == P) {
      lr_kind = 1;
    } else if (lr->dim() == 2 && lr->sizes() == grads.sizes()) {
      lr_kind = 2;
    } else {
      TORCH_CHECK(false, op, ": expected lr of shape [], [P] or [T, P] with grads of shape [T, P] = ", grads.sizes(),
                  ", got lr of shape ", lr->sizes());
    }
    TORCH_CHECK(lr->device() == grads.device() && lr->scalar_type() == grads.scalar_type(), op,
                ": lr must match grads in device and dtype, got lr ", lr->scalar_type(), " on ", lr->device(),
                " and grads ", grads.scalar_type(), " on ", grads.device());
  }
  return {T, P, shared, lr_kind};
}

// t in the channels-last layout the CPU image kernels read (a no-op when it already is).
inline at::Tensor channels_last(const at::Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }

struct PoolDims {
  int64_t N, C, H, W;
};

// x [N, C, H, W] (H, W >= 2), weight and bias [C], all of one float dtype on one device.
inline PoolDims check_bn_pool_relu(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& bias) {
  TORCH_CHECK(x.dim() == 4, op, ": expected x of shape [N, C, H, W], got x of shape ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(H >= 2 && W >= 2, op, ": max-pooling by 2 needs H, W >= 2, got x of shape ", x.sizes());
  TORCH_CHECK(N > 0, op, ": batch norm needs at least one example, got x of shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == C && bias.dim() == 1 && bias.size(0) == C, op,
              ": expected weight and bias of shape [C] = [", C, "], got weight of shape ", weight.sizes(),
              " and bias of shape ", bias.sizes());
  check_float_dtype(op, x, "x", /*allow_half=*/false);
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && bias.scalar_type() == x.scalar_type() &&
                  weight.device() == x.device() && bias.device() == x.device(),
              op, ": weight and bias must match x in dtype and device, got x ", x.scalar_type(), " on ", x.device(),
              ", weight ", weight.scalar_type(), " on ", weight.device(), ", bias ", bias.scalar_type(), " on ",
              bias.device());
  return {N, C, H, W};
}

}  // namespace metareg
