// Runtime ISA dispatch for the CPU kernels.  The extension is built with the compiler's baseline
// flags so the same wheel loads on any x86-64 machine; GCC's target_clones compiles each hot
// function again for AVX2+FMA (x86-64-v3) and AVX-512 (x86-64-v4) and picks one at load time.
// Inner loops are written for the auto-vectoriser (`omp simd`, several accumulators).
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(METAREG_NO_CLONES)
#define METAREG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define METAREG_CLONES
#endif

#if defined(_OPENMP) || defined(__clang__)
#define METAREG_PRAGMA(x) _Pragma(#x)
#define METAREG_SIMD_REDUCE(...) METAREG_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#define METAREG_SIMD METAREG_PRAGMA(omp simd)
#else
#define METAREG_SIMD_REDUCE(...)
#define METAREG_SIMD
#endif
