// The element types of metareg's CUDA kernels, listed once (METAREG_CUDA_DTYPES), and the two
// switches over them, both expanded from that list:
//  * dispatch(dt, f), for the kernels (csrc/cuda/*.cu, compiled by nvcc): calls f with a null
//    pointer of dt's element type;
//  * dtype_of(op, scalar_type), for the torch glue (csrc/cuda/*_glue.cpp, compiled by the host
//    compiler): the DType of a tensor's element type, or op's error for one the kernels do not take.
// Each half is seen only by the compiler that can build it (nvcc defines __CUDACC__): the .cu files
// include no torch header, so `nvcc -c` checks them on a machine whose torch has no CUDA headers.
// A new element type is one more list entry (plus to_acc/from_acc in common.cuh and the
// allow_half checks in checks.h).
#pragma once

// X(DType enumerator, CUDA element type, c10::ScalarType enumerator)
#define METAREG_CUDA_DTYPES(X) \
  X(F32, float, Float)         \
  X(F64, double, Double)       \
  X(F16, __half, Half)         \
  X(BF16, __nv_bfloat16, BFloat16)

namespace metareg {
namespace cuda {

#define METAREG_DTYPE_ENUM(e, T, S) e,
enum class DType : int { METAREG_CUDA_DTYPES(METAREG_DTYPE_ENUM) };
#undef METAREG_DTYPE_ENUM

}  // namespace cuda
}  // namespace metareg

#ifdef __CUDACC__

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace metareg {
namespace cuda {

// Calls f with a null pointer of the element type named by dt (the kernels' dtype switch).
template <typename F>
cudaError_t dispatch(DType dt, F&& f) {
  switch (dt) {
#define METAREG_DTYPE_CASE(e, T, S) \
  case DType::e:                    \
    return f(static_cast<T*>(nullptr));
    METAREG_CUDA_DTYPES(METAREG_DTYPE_CASE)
#undef METAREG_DTYPE_CASE
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace metareg

#else  // the torch glue

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

namespace metareg {
namespace cuda {

// The DType of a tensor's element type (the glue's dtype switch); op names the caller in the error.
inline DType dtype_of(const char* op, c10::ScalarType st) {
  switch (st) {
#define METAREG_DTYPE_CASE(e, T, S) \
  case c10::ScalarType::S:          \
    return DType::e;
    METAREG_CUDA_DTYPES(METAREG_DTYPE_CASE)
#undef METAREG_DTYPE_CASE
    default:
      TORCH_CHECK(false, op, ": the CUDA kernels do not take ", st);
  }
}

}  // namespace cuda
}  // namespace metareg

#endif
