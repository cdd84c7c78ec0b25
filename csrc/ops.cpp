// The one place where metareg's op schemas live, and the Python module metareg._C whose import
// loads this library (running the registrations below) and exposes how it was built.
//
// Autograd and fake (meta) kernels are registered from Python (metareg/ops/_registration.py)
// only after this module imported, so a missing build never breaks `import metareg`.

#include <Python.h>

#include <ATen/Parallel.h>
#include <torch/headeronly/version.h>
#include <torch/library.h>

#include "checks.h"

#ifdef METAREG_WITH_CUDA
#include "cuda/launchers.h"
#endif

namespace metareg {

int& path_override() {
  static int value = 0;
  return value;
}

std::atomic<int64_t>& wide_fallbacks() {
  static std::atomic<int64_t> count{0};
  return count;
}

}  // namespace metareg

TORCH_LIBRARY(metareg, m) {
  // a [B, N, D], b [B, M, D] -> [B, N, M] (or 2-D without B); each row norm clamped below at eps.
  m.def("pairwise_cosine(Tensor a, Tensor b, float eps=1e-08) -> Tensor");
  // Gradients of pairwise_cosine with respect to a and b, given the gradient of its output.
  m.def("pairwise_cosine_backward(Tensor grad, Tensor a, Tensor b, float eps) -> (Tensor, Tensor)");
  // pairwise_cosine(a, a) and the row norms |a| [B, N] (unclamped) in one call; forward only, CPU
  // only (the combiners' [T, P] task-gradient matrices; other devices compose the two).
  m.def("pairwise_cosine_norms(Tensor a, float eps=1e-08) -> (Tensor, Tensor)");
  // a [B, N, D] -> a a^T [B, N, N] (or 2-D without B): the combiners' Gram matrix of task
  // gradients; the CPU kernel picks its path by shape.  CPU only (elsewhere a @ a^T is the path).
  m.def("gram(Tensor a) -> Tensor");
  // params [P] or [T, P], grads [T, P] -> params - lr * grads, [T, P].
  m.def("task_step(Tensor params, Tensor grads, float lr) -> Tensor");
  // Same with a tensor lr of shape [], [P] (Meta-SGD) or [T, P].
  m.def("task_step_tensor(Tensor params, Tensor grads, Tensor lr) -> Tensor");
  // Gradients of task_step_tensor in one pass: (d params, d grads, d lr).  d params is the sum of
  // grad over tasks ([P]) when params_shared, else an empty [0] tensor: the caller then uses grad
  // itself (a custom op may not return an alias of its input).  d lr has lr's shape.
  m.def("task_step_backward(Tensor grad, Tensor grads, Tensor lr, bool params_shared) -> (Tensor, Tensor, Tensor)");
  // MAML's meta-gradient of a ReLU MLP (widths [in, h..., out]; theta [P] in metareg.nets.mlp's
  // layout) in closed form: support x [T, S, in] / y, query x [T, Q, in] / y (regression [T, N, out],
  // or int64 labels [T, N] with cross_entropy), lr [] or [P], `steps` inner steps ->
  // (query losses [T], d mean loss / d theta [P], d mean loss / d lr (lr's shape; [0] unless lr_grad)).
  m.def("mlp_meta_grad(Tensor theta, int[] widths, Tensor support_x, Tensor support_y, Tensor query_x, "
        "Tensor query_y, Tensor lr, int steps, bool cross_entropy, bool first_order, bool lr_grad) -> "
        "(Tensor, Tensor, Tensor)");
  // Training-mode batch norm (biased variance over N, H, W; no running statistics) -> max-pool 2
  // -> ReLU of x [N, C, H, W] with weight, bias [C] -> (out [N, C, H/2, W/2], xmax [N, C, H/2, W/2]:
  // the x each window chose, mean [C], invstd [C]); out and xmax channels-last.  CPU only.
  m.def("bn_pool_relu(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  // Its gradients (d x [N, C, H, W], d weight [C], d bias [C]) from the gradient of out and what
  // the forward returned.  Not differentiable itself (bn_pool_relu is differentiable once).
  m.def("bn_pool_relu_backward(Tensor grad, Tensor x, Tensor weight, Tensor out, Tensor xmax, Tensor mean, "
        "Tensor invstd) -> (Tensor, Tensor, Tensor)");
  // A 3x3 convolution, stride 1, padding 1, no bias, of x [N, groups * C_in, H, W] with weight
  // [groups * C_out, C_in, 3, 3] by Winograd's F(4x4, 3x3) -> [N, groups * C_out, H, W]
  // (channels-last).  CPU only.
  m.def("conv3x3_winograd(Tensor x, Tensor weight, int groups) -> Tensor");
  // Its gradients (d x, d weight) from the gradient of the output; one not asked for is an empty
  // tensor.  Not differentiable itself (conv3x3_winograd is differentiable once).
  m.def("conv3x3_winograd_backward(Tensor grad, Tensor x, Tensor weight, int groups, bool need_x, bool need_weight) "
        "-> (Tensor, Tensor)");
}

namespace {

const char* cpu_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
  return "baseline x86-64";
#else
  return "generic";
#endif
}

PyObject* set_path_override(PyObject*, PyObject* arg) {
  const long v = PyLong_AsLong(arg);
  if (v == -1 && PyErr_Occurred()) return nullptr;
  if (v < 0 || v > 3) {
    PyErr_SetString(PyExc_ValueError, "path override must be 0 (auto), 1 (fused), 2 (gemm) or 3 (wide, CPU forward)");
    return nullptr;
  }
  const long old = metareg::path_override();
  metareg::path_override() = static_cast<int>(v);
  return PyLong_FromLong(old);
}

PyObject* get_wide_fallbacks(PyObject*, PyObject*) {
  return PyLong_FromLongLong(static_cast<long long>(metareg::wide_fallbacks().load()));
}

// at::parallel_for initialises the calling thread's OpenMP thread count on its first call, from
// the process-wide default, through a header-inline function whose once-per-thread flag this
// library has its own copy of (libtorch has another).  A worker thread that wants its own count
// (metareg.machine's task workers: one) runs this first, or its first parallel op of ours would
// later reset the count to the default.  Returns the thread's count.
PyObject* init_thread_count(PyObject*, PyObject*) {
  at::internal::lazy_init_num_threads();
  return PyLong_FromLong(at::get_num_threads());
}

PyMethodDef methods[] = {
    {"_init_thread_count", init_thread_count, METH_NOARGS,
     "Run this library's once-per-thread initialisation of the intra-op thread count now; returns the count."},
    {"_wide_fallbacks", get_wide_fallbacks, METH_NOARGS,
     "How many pairwise_cosine calls left the CPU wide path for the normalise-first one. For tests."},
    {"_set_path_override", set_path_override, METH_O,
     "Force the kernel path of pairwise_cosine (0 auto, 1 fused, 2 gemm, 3 wide: CPU forward only, else gemm); returns the previous value. For tests."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "metareg's compiled custom ops (schemas in csrc/ops.cpp).",
                          -1, methods};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  PyObject* mod = PyModule_Create(&module_def);
  if (mod == nullptr) return nullptr;
  PyModule_AddStringConstant(mod, "torch_version", TORCH_VERSION);
  PyModule_AddStringConstant(mod, "compiler",
#if defined(__clang__)
                             "clang " __clang_version__
#elif defined(__GNUC__)
                             "gcc " __VERSION__
#else
                             "unknown"
#endif
  );
#ifdef _OPENMP
  PyModule_AddIntConstant(mod, "openmp", 1);
#else
  PyModule_AddIntConstant(mod, "openmp", 0);
#endif
  PyModule_AddStringConstant(mod, "cpu_isa", cpu_isa());
#ifdef METAREG_WITH_CUDA
  PyModule_AddIntConstant(mod, "with_cuda", 1);
  PyModule_AddIntConstant(mod, "cuda_runtime_version", metareg_cuda_runtime_version());
  PyModule_AddStringConstant(mod, "cuda_arch_list", metareg_cuda_arch_list());
#else
  PyModule_AddIntConstant(mod, "with_cuda", 0);
  PyModule_AddIntConstant(mod, "cuda_runtime_version", 0);
  PyModule_AddStringConstant(mod, "cuda_arch_list", "");
#endif
  return mod;
}
