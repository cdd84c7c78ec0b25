// What the CUDA side of metareg._C was compiled for, as reported by `metareg ops`.
#include "cuda/launchers.h"

#define METAREG_STR2(...) #__VA_ARGS__
#define METAREG_STR(...) METAREG_STR2(__VA_ARGS__)

int metareg_cuda_runtime_version() { return CUDART_VERSION; }

const char* metareg_cuda_arch_list() {
#ifdef __CUDA_ARCH_LIST__
  // nvcc defines it in every pass as the comma-separated list of -gencode targets, e.g. 900.
  return METAREG_STR(__CUDA_ARCH_LIST__);
#else
  return "unknown";
#endif
}
