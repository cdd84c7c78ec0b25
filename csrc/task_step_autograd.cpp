// Autograd of metareg::task_step and metareg::task_step_tensor, in C++ rather than through
// torch.library.register_autograd: the step is one memory-bound pass, and for the small models
// of meta-learning (MLP-40: 1,761 parameters) a Python autograd kernel costs more than the step
// itself (~7 us per call).  Being compiled into metareg._C, it exists exactly when the ops do.
//
// The backward formulas use differentiable ATen ops (and metareg::task_step_backward, whose
// autograd is registered from Python), so create_graph=True gives second-order MAML and Meta-SGD.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace metareg {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_step(const at::Tensor& params, const at::Tensor& grads, double lr) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("metareg::task_step", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>();
  return op.call(params, grads, lr);
}

at::Tensor call_step_tensor(const at::Tensor& params, const at::Tensor& grads, const at::Tensor& lr) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("metareg::task_step_tensor", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(params, grads, lr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_step_backward(const at::Tensor& grad, const at::Tensor& grads,
                                                                  const at::Tensor& lr, bool shared) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("metareg::task_step_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                const at::Tensor&, bool)>();
  return op.call(grad, grads, lr, shared);
}

class TaskStep : public torch::autograd::Function<TaskStep> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& params, const at::Tensor& grads, double lr) {
    ctx->saved_data["lr"] = lr;
    ctx->saved_data["shared"] = params.dim() == 1;
    at::AutoDispatchBelowADInplaceOrView below;
    return call_step(params, grads, lr);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& g = grad_outputs[0];
    const double lr = ctx->saved_data["lr"].toDouble();
    const bool shared = ctx->saved_data["shared"].toBool();
    at::Tensor d_params, d_grads;
    if (ctx->needs_input_grad(0)) d_params = shared ? g.sum(0) : g;
    if (ctx->needs_input_grad(1)) d_grads = g * (-lr);
    return {d_params, d_grads, at::Tensor()};
  }
};

class TaskStepTensor : public torch::autograd::Function<TaskStepTensor> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& params, const at::Tensor& grads,
                            const at::Tensor& lr) {
    ctx->saved_data["shared"] = params.dim() == 1;
    // grads is only needed for d lr: do not keep a [T, P] tensor alive for nothing.
    ctx->save_for_backward({lr.requires_grad() ? grads : at::Tensor(), lr});
    at::AutoDispatchBelowADInplaceOrView below;
    return call_step_tensor(params, grads, lr);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& g = grad_outputs[0];
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grads = saved[0];
    const at::Tensor& lr = saved[1];
    const bool shared = ctx->saved_data["shared"].toBool();
    if (ctx->needs_input_grad(2)) {
      // One pass for all three (Meta-SGD).
      auto [d_sum, d_grads, d_lr] = call_step_backward(g, grads, lr, shared);
      at::Tensor d_params = ctx->needs_input_grad(0) ? (shared ? d_sum : g) : at::Tensor();
      return {d_params, ctx->needs_input_grad(1) ? d_grads : at::Tensor(), d_lr};
    }
    at::Tensor d_params, d_grads;
    if (ctx->needs_input_grad(0)) d_params = shared ? g.sum(0) : g;
    if (ctx->needs_input_grad(1)) d_grads = g * (-lr);
    return {d_params, d_grads, at::Tensor()};
  }
};

// Without anything to differentiate, skip building a graph node: this is the evaluation path of
// every meta-learner and the one whose per-call cost matters.
at::Tensor task_step_autograd(const at::Tensor& params, const at::Tensor& grads, double lr) {
  if (at::GradMode::is_enabled() && (params.requires_grad() || grads.requires_grad())) {
    return TaskStep::apply(params, grads, lr);
  }
  at::AutoDispatchBelowADInplaceOrView below;
  return call_step(params, grads, lr);
}

at::Tensor task_step_tensor_autograd(const at::Tensor& params, const at::Tensor& grads, const at::Tensor& lr) {
  if (at::GradMode::is_enabled() && (params.requires_grad() || grads.requires_grad() || lr.requires_grad())) {
    return TaskStepTensor::apply(params, grads, lr);
  }
  at::AutoDispatchBelowADInplaceOrView below;
  return call_step_tensor(params, grads, lr);
}

}  // namespace
}  // namespace metareg

TORCH_LIBRARY_IMPL(metareg, Autograd, m) {
  m.impl("task_step", &metareg::task_step_autograd);
  m.impl("task_step_tensor", &metareg::task_step_tensor_autograd);
}
