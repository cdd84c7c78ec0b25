// CPU kernels of metareg::pairwise_cosine and its backward, and of the two forward ops that share
// its row products: pairwise_cosine_norms and gram (see the wide path and gram below).
//
// Two paths for pairwise_cosine, same numbers (both work on normalised rows, as metareg/ops/_reference.py does):
//  * gemm (used): rows are normalised in one parallel pass and at::bmm does the products; the
//    backward is two bmm and one fused correction pass.  No autograd graph of eight nodes, no
//    temporaries beyond the normalised rows.
//  * direct: one parallel pass over rows computes each row's norm and its dot products; kept as
//    a BLAS-free cross-check (see use_gemm).
//
// Norms accumulate in double: float32 squares overflow above |x| ~ 1.8e19 (the float32 reference
// then returns 0; the float64 reference, and these kernels, return the true cosine).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/simd.h"

namespace metareg {
namespace {

constexpr const char* kFwd = "metareg::pairwise_cosine";
constexpr const char* kBwd = "metareg::pairwise_cosine_backward";
constexpr const char* kNorms = "metareg::pairwise_cosine_norms";
constexpr const char* kGram = "metareg::gram";

// Rows [r0, r1) of x (row length D): xhat = x / max(|x|, eps), inv = 1 / max(|x|, eps),
// unclamped = |x| >= eps (the rows whose norm carries gradient, as with clamp_min's backward).
template <typename T>
METAREG_CLONES void normalize_rows(const T* x, T* xhat, T* inv, uint8_t* unclamped, int64_t r0, int64_t r1,
                                   int64_t D, double eps) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * D;
    double ss = 0;
    METAREG_SIMD_REDUCE(ss)
    for (int64_t d = 0; d < D; ++d) ss += static_cast<double>(xr[d]) * static_cast<double>(xr[d]);
    const double norm = std::sqrt(ss);
    const T iv = static_cast<T>(1.0 / std::max(norm, eps));
    if (inv) inv[r] = iv;
    if (unclamped) unclamped[r] = norm >= eps;
    T* yr = xhat + r * D;
    METAREG_SIMD
    for (int64_t d = 0; d < D; ++d) yr[d] = xr[d] * iv;
  }
}

// out[j] = <x, Y[j]> for j < M over len elements, rows of Y `stride` apart, four rows per sweep
// (x is loaded once per four products).
template <typename T>
__attribute__((always_inline)) inline void dot_many_strided(const T* x, const T* Y, int64_t stride, T* out, int64_t M, int64_t len) {
  int64_t j = 0;
  for (; j + 4 <= M; j += 4) {
    const T* y0 = Y + j * stride;
    const T* y1 = y0 + stride;
    const T* y2 = y1 + stride;
    const T* y3 = y2 + stride;
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    METAREG_SIMD_REDUCE(s0, s1, s2, s3)
    for (int64_t d = 0; d < len; ++d) {
      const T xv = x[d];
      s0 += xv * y0[d];
      s1 += xv * y1[d];
      s2 += xv * y2[d];
      s3 += xv * y3[d];
    }
    out[j] = s0;
    out[j + 1] = s1;
    out[j + 2] = s2;
    out[j + 3] = s3;
  }
  for (; j < M; ++j) {
    const T* y = Y + j * stride;
    T s = 0;
    METAREG_SIMD_REDUCE(s)
    for (int64_t d = 0; d < len; ++d) s += x[d] * y[d];
    out[j] = s;
  }
}

// Forward rows [r0, r1) of the flattened [B*N] rows of a: normalise the row into buf (or take it
// from ah when a's rows are already normalised) and take its products with batch's rows of bh.
template <typename T>
METAREG_CLONES void forward_rows(const T* a, const T* ah, const T* bh, T* out, T* buf, int64_t r0, int64_t r1,
                                 int64_t N, int64_t M, int64_t D, double eps) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* row;
    if (ah) {
      row = ah + r * D;
    } else {
      const T* x = a + r * D;
      double ss = 0;
      METAREG_SIMD_REDUCE(ss)
      for (int64_t d = 0; d < D; ++d) ss += static_cast<double>(x[d]) * static_cast<double>(x[d]);
      const T iv = static_cast<T>(1.0 / std::max(std::sqrt(ss), eps));
      METAREG_SIMD
      for (int64_t d = 0; d < D; ++d) buf[d] = x[d] * iv;
      row = buf;
    }
    dot_many_strided(row, bh + (r / N) * M * D, D, out + r * M, M, D);
  }
}

// In place: g = inv * (g - unclamped * <g, xhat> * xhat), turning the gradient with respect to
// the normalised row into the gradient with respect to the raw row.
template <typename T>
inline void correct_row(T* g, const T* xhat, T inv, bool unclamped, int64_t D) {
  T r = 0;
  if (unclamped) {
    METAREG_SIMD_REDUCE(r)
    for (int64_t d = 0; d < D; ++d) r += g[d] * xhat[d];
  }
  METAREG_SIMD
  for (int64_t d = 0; d < D; ++d) g[d] = inv * (g[d] - r * xhat[d]);
}

template <typename T>
METAREG_CLONES void correct_rows(T* g, const T* xhat, const T* inv, const uint8_t* unclamped, int64_t r0,
                                 int64_t r1, int64_t D) {
  for (int64_t r = r0; r < r1; ++r) correct_row(g + r * D, xhat + r * D, inv[r], unclamped[r] != 0, D);
}

// Backward rows [r0, r1) of the B*(N+M) rows of (grad_a; grad_b).  Row i of a in batch k:
// grad_a_i = correct(sum_j G[k,i,j] bh_j); row j of b: grad_b_j = correct(sum_i G[k,i,j] ah_i).
template <typename T>
METAREG_CLONES void backward_rows(const T* G, const T* ah, const T* bh, const T* inv_a, const T* inv_b,
                                  const uint8_t* un_a, const uint8_t* un_b, T* ga, T* gb, int64_t r0, int64_t r1,
                                  int64_t B, int64_t N, int64_t M, int64_t D) {
  for (int64_t r = r0; r < r1; ++r) {
    if (r < B * N) {
      const int64_t k = r / N;
      const T* grow = G + r * M;  // G[k, i, :]
      const T* bk = bh + k * M * D;
      T* acc = ga + r * D;
      std::fill(acc, acc + D, T(0));
      for (int64_t j = 0; j < M; ++j) {
        const T g = grow[j];
        const T* y = bk + j * D;
        METAREG_SIMD
        for (int64_t d = 0; d < D; ++d) acc[d] += g * y[d];
      }
      correct_row(acc, ah + r * D, inv_a[r], un_a[r] != 0, D);
    } else {
      const int64_t rb = r - B * N;
      const int64_t k = rb / M, j = rb % M;
      const T* gcol = G + k * N * M + j;  // G[k, :, j], stride M
      const T* ak = ah + k * N * D;
      T* acc = gb + rb * D;
      std::fill(acc, acc + D, T(0));
      for (int64_t i = 0; i < N; ++i) {
        const T g = gcol[i * M];
        const T* x = ak + i * D;
        METAREG_SIMD
        for (int64_t d = 0; d < D; ++d) acc[d] += g * x[d];
      }
      correct_row(acc, bh + rb * D, inv_b[rb], un_b[rb] != 0, D);
    }
  }
}

int64_t grain_for(int64_t work_per_item) {
  // About 128k multiply-adds (10-40 us) per task: the fork/join costs a few us, and a region
  // split finer than that mostly waits for its slowest thread when the cores are shared.
  return std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(1, work_per_item));
}

// -- the wide path: few rows, long rows --------------------------------------------------------
// The [T, P] task-gradient matrices of the multi-task combiners (T <= 16 rows, P up to millions)
// are the opposite of an episode: a GEMM with N = M = T and K = P runs far below the machine's
// bandwidth (8 x 1M: 4.5 ms for J @ J^T against 1.6 ms to read J once), and normalising first
// writes a copy of J.  Here every row is read once, in chunks that stay in L1: each chunk yields
// all pair products and row square sums in T, and the chunks are summed in double.  Nothing the
// size of the input is written.

constexpr int64_t kWideChunk = 1024;

bool use_wide(const CosineDims& d) {
  const int o = path_override();
  if (o != 0) return o == 3;
  return d.N <= 16 && d.M <= 16 && d.D >= 4096;
}

// Products of rows a_i, i in [i0, i0 + 4), with rows b_j, j in [j0, j0 + 4), over len elements:
// sixteen accumulators, eight loads per sixteen multiply-adds.
template <typename T>
__attribute__((always_inline)) inline void dot_block4x4(const T* a, const T* b, int64_t stride, T* out,
                                                        int64_t ldo, int64_t len) {
  const T *x0 = a, *x1 = a + stride, *x2 = a + 2 * stride, *x3 = a + 3 * stride;
  const T *y0 = b, *y1 = b + stride, *y2 = b + 2 * stride, *y3 = b + 3 * stride;
  T s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
  T s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
  METAREG_SIMD_REDUCE(s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)
  for (int64_t d = 0; d < len; ++d) {
    const T a0 = x0[d], a1 = x1[d], a2 = x2[d], a3 = x3[d];
    const T b0 = y0[d], b1 = y1[d], b2 = y2[d], b3 = y3[d];
    s00 += a0 * b0; s01 += a0 * b1; s02 += a0 * b2; s03 += a0 * b3;
    s10 += a1 * b0; s11 += a1 * b1; s12 += a1 * b2; s13 += a1 * b3;
    s20 += a2 * b0; s21 += a2 * b1; s22 += a2 * b2; s23 += a2 * b3;
    s30 += a3 * b0; s31 += a3 * b1; s32 += a3 * b2; s33 += a3 * b3;
  }
  T* o = out;
  o[0] = s00; o[1] = s01; o[2] = s02; o[3] = s03; o += ldo;
  o[0] = s10; o[1] = s11; o[2] = s12; o[3] = s13; o += ldo;
  o[0] = s20; o[1] = s21; o[2] = s22; o[3] = s23; o += ldo;
  o[0] = s30; o[1] = s31; o[2] = s32; o[3] = s33;
}

template <typename T>
__attribute__((always_inline)) inline T square_sum(const T* x, int64_t len) {
  T s = 0;
  METAREG_SIMD_REDUCE(s)
  for (int64_t d = 0; d < len; ++d) s += x[d] * x[d];
  return s;
}

// One chunk [d0, d0 + len) of batch k: part[0 : N*M] the pair products a_i.b_j (row-major; with
// same, only the 4x4 blocks on or above the diagonal are filled), part[N*M : N*M+N] the square
// sums of a's rows, then M of b's (unused with same: the diagonal holds them).
template <typename T>
METAREG_CLONES void wide_chunk(const T* a, const T* b, T* part, bool same, int64_t N, int64_t M, int64_t D,
                               int64_t d0, int64_t len) {
  a += d0;
  b += d0;
  const int64_t n4 = N / 4 * 4, m4 = M / 4 * 4;
  for (int64_t i = 0; i < n4; i += 4) {
    for (int64_t j = same ? i : 0; j < m4; j += 4) dot_block4x4(a + i * D, b + j * D, D, part + i * M + j, M, len);
  }
  // the rows and columns left over by the 4x4 blocks
  for (int64_t i = 0; i < N; ++i) {
    const int64_t j0 = i < n4 ? m4 : (same ? std::min(i, m4) : 0);
    if (j0 < M) dot_many_strided(a + i * D, b + j0 * D, D, part + i * M + j0, M - j0, len);
  }
  T* sq_a = part + N * M;
  T* sq_b = sq_a + N;
  for (int64_t i = 0; i < N; ++i) sq_a[i] = same ? part[i * M + i] : square_sum(a + i * D, len);
  if (!same) {
    for (int64_t j = 0; j < M; ++j) sq_b[j] = square_sum(b + j * D, len);
  }
}

// The wide pass proper: for each batch k, W = N*M + N + M sums in double (layout of wide_chunk's
// parts: the pair products, then the square sums of a's rows and of b's).  Every row is read once.
template <typename T>
std::vector<double> wide_sums(const at::Tensor& a, const at::Tensor& b, bool same, const CosineDims& d) {
  const int64_t chunks = (d.D + kWideChunk - 1) / kWideChunk;
  const int64_t W = d.N * d.M + d.N + d.M;
  std::vector<T> parts(static_cast<size_t>(d.B * chunks * W), T(0));
  const T* ap = a.data_ptr<T>();
  const T* bp = b.data_ptr<T>();
  T* pp = parts.data();
  at::parallel_for(0, d.B * chunks, grain_for(W * kWideChunk), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t k = c / chunks, d0 = (c % chunks) * kWideChunk;
      wide_chunk<T>(ap + k * d.N * d.D, bp + k * d.M * d.D, pp + c * W, same, d.N, d.M, d.D, d0,
                    std::min(kWideChunk, d.D - d0));
    }
  });
  std::vector<double> sums(static_cast<size_t>(d.B * W), 0.0);
  for (int64_t k = 0; k < d.B; ++k) {
    double* s = sums.data() + k * W;
    for (int64_t c = 0; c < chunks; ++c) {
      const T* p = pp + (k * chunks + c) * W;
      for (int64_t w = 0; w < W; ++w) s[w] += static_cast<double>(p[w]);
    }
  }
  return sums;
}

// Cosines from the wide pass.  Returns false (out untouched) when a product or square sum
// overflowed T, or a square sum is too small for T's products to keep their precision (|row| <
// ~1e-10 in float32, including rows whose squares all underflowed to 0, and zero rows): the
// caller then takes the normalise-first path, which handles any magnitude.
template <typename T>
bool wide_forward(const at::Tensor& a, const at::Tensor& b, at::Tensor& out, bool same, const CosineDims& d,
                  double eps, at::Tensor* norms = nullptr) {
  const int64_t W = d.N * d.M + d.N + d.M;
  const std::vector<double> sums = wide_sums<T>(a, b, same, d);
  const double tiny = std::is_same<T, float>::value ? 1e-20 : 1e-280;
  for (int64_t k = 0; k < d.B; ++k) {
    const double* s = sums.data() + k * W;
    // with same, the M slots of b's square sums are unused (the diagonal holds them)
    const int64_t used = same ? d.N * d.M + d.N : W;
    for (int64_t w = 0; w < used; ++w) {
      // also 0: a zero row, or a row whose squares all underflowed
      if (!std::isfinite(s[w]) || (w >= d.N * d.M && s[w] < tiny)) {
        wide_fallbacks().fetch_add(1, std::memory_order_relaxed);
        return false;
      }
    }
  }
  T* op = out.data_ptr<T>();
  T* np = norms ? norms->data_ptr<T>() : nullptr;
  for (int64_t k = 0; k < d.B; ++k) {
    const double* s = sums.data() + k * W;
    const double* sq_a = s + d.N * d.M;
    if (np) {
      for (int64_t i = 0; i < d.N; ++i) np[k * d.N + i] = static_cast<T>(std::sqrt(sq_a[i]));
    }
    const double* sq_b = same ? sq_a : sq_a + d.N;
    for (int64_t i = 0; i < d.N; ++i) {
      const double ia = 1.0 / std::max(std::sqrt(sq_a[i]), eps);
      for (int64_t j = 0; j < d.M; ++j) {
        const double dot = same && j < i ? s[j * d.M + i] : s[i * d.M + j];
        op[(k * d.N + i) * d.M + j] = static_cast<T>(dot * ia / std::max(std::sqrt(sq_b[j]), eps));
      }
    }
  }
  return true;
}

// Measured on 2 cores (torch 2.13, MKL): normalise + GEMM is faster than the direct kernel at
// every shape tried, from 32x75x5x64 (148 vs 614 us forward) to 32x75x25x1600 (6.6 vs 11.2 ms),
// and no slower backward.  The direct kernels stay as the BLAS-free cross-check that the tests
// run (path override 1).
bool use_gemm(const CosineDims&) { return path_override() != 1; }  // path 3 (wide) is forward-only

// The one pass that both paths and both directions start with.
template <typename T>
void normalize_all(const at::Tensor& x, at::Tensor& xhat, at::Tensor* inv, at::Tensor* unclamped, int64_t D,
                   double eps) {
  const int64_t rows = x.numel() / std::max<int64_t>(D, 1);
  const T* xp = x.data_ptr<T>();
  T* yp = xhat.data_ptr<T>();
  T* ip = inv ? inv->data_ptr<T>() : nullptr;
  uint8_t* up = unclamped ? unclamped->data_ptr<uint8_t>() : nullptr;
  at::parallel_for(0, rows, grain_for(2 * D), [&](int64_t r0, int64_t r1) {
    normalize_rows<T>(xp, yp, ip, up, r0, r1, D, eps);
  });
}

at::Tensor transpose_last(const at::Tensor& t) { return t.transpose(-1, -2); }

// try_wide = false: the caller already tried the wide path on these inputs and it handed them over.
at::Tensor cosine_forward(const at::Tensor& a_in, const at::Tensor& b_in, double eps, bool try_wide) {
  const CosineDims d = check_pairwise_cosine(kFwd, a_in, b_in, /*allow_half=*/false);
  TORCH_CHECK(a_in.device().is_cpu(), kFwd, ": CPU kernel called with a tensor on ", a_in.device());
  const bool same = a_in.is_same(b_in);
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = same ? a : b_in.contiguous();
  std::vector<int64_t> out_shape = a.dim() == 3 ? std::vector<int64_t>{d.B, d.N, d.M} : std::vector<int64_t>{d.N, d.M};
  at::Tensor out = at::empty(out_shape, a.options());
  if (out.numel() == 0) return out;
  if (d.D == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), kFwd, [&] {
    if (try_wide && use_wide(d) && wide_forward<scalar_t>(a, b, out, same, d, eps)) return;
    at::Tensor bh = at::empty_like(b);
    normalize_all<scalar_t>(b, bh, nullptr, nullptr, d.D, eps);
    if (use_gemm(d)) {
      at::Tensor ah = same ? bh : at::empty_like(a);
      if (!same) normalize_all<scalar_t>(a, ah, nullptr, nullptr, d.D, eps);
      if (a.dim() == 3) {
        at::bmm_out(out, ah, transpose_last(bh));
      } else {
        at::mm_out(out, ah, transpose_last(bh));
      }
      return;
    }
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* ahp = same ? bh.data_ptr<scalar_t>() : nullptr;
    const scalar_t* bhp = bh.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, d.B * d.N, grain_for((d.M + 1) * d.D), [&](int64_t r0, int64_t r1) {
      std::vector<scalar_t> buf(ahp ? 0 : d.D);
      forward_rows<scalar_t>(ap, ahp, bhp, op, buf.data(), r0, r1, d.N, d.M, d.D, eps);
    });
  });
  return out;
}

at::Tensor pairwise_cosine_cpu(const at::Tensor& a, const at::Tensor& b, double eps) {
  return cosine_forward(a, b, eps, /*try_wide=*/true);
}

// pairwise_cosine(a, a) and the row norms |a_i| (unclamped) together: the wide path has both after
// its one read of a (the combiners need the norms to turn cosines back into inner products);
// other shapes pay one more read for the norms.
std::tuple<at::Tensor, at::Tensor> pairwise_cosine_norms_cpu(const at::Tensor& a_in, double eps) {
  const CosineDims d = check_pairwise_cosine(kNorms, a_in, a_in, /*allow_half=*/false);
  TORCH_CHECK(a_in.device().is_cpu(), kNorms, ": CPU kernel called with a tensor on ", a_in.device());
  const at::Tensor a = a_in.contiguous();
  std::vector<int64_t> norm_shape = a.dim() == 3 ? std::vector<int64_t>{d.B, d.N} : std::vector<int64_t>{d.N};
  at::Tensor norms = at::empty(norm_shape, a.options());
  const bool wide = d.D > 0 && d.N > 0 && use_wide(d);
  if (wide) {
    std::vector<int64_t> out_shape = a.dim() == 3 ? std::vector<int64_t>{d.B, d.N, d.N} : std::vector<int64_t>{d.N, d.N};
    at::Tensor out = at::empty(out_shape, a.options());
    bool done = false;
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), kNorms, [&] {
      done = wide_forward<scalar_t>(a, a, out, /*same=*/true, d, eps, &norms);
    });
    if (done) return {out, norms};
  }
  at::Tensor out = cosine_forward(a, a, eps, /*try_wide=*/!wide);
  // accumulated in double, like the kernels' norms: float32 squares overflow above |x| ~ 1e19
  norms.copy_(at::linalg_vector_norm(a, 2, {-1}, false, at::kDouble));
  return {out, norms};
}

// -- gram: a a^T, the combiners' Gram matrix of task gradients -----------------------------------
// Three paths, one answer up to rounding (the reference is a @ a^T):
//  * wide (N <= 16, D >= 4096, as for pairwise_cosine): the chunked products of the wide pass,
//    summed in double; one read of a and nothing the size of a written.  Unlike the cosines it
//    never hands over: an overflowing product is inf, as a GEMM in T would give.
//  * blocked, for longer rows otherwise (D >= 4 blocks): a [N, D] @ a^T is a poor shape for MKL
//    (one long dot product per entry: [8, 1e6] ~1.9 ms); as a batch of [N, kGramBlock] blocks
//    whose products are summed it runs at ~0.9 ms, about one pass over a, since each block stays
//    in L2.
//  * a plain mm (bmm) for everything else.
constexpr int64_t kGramBlock = 16384;

// out [N, N] = a a^T for a contiguous a [N, D], through [N, kGramBlock] blocks.
void blocked_gram(const at::Tensor& a, at::Tensor out) {
  const int64_t n = a.size(0), D = a.size(1), k = D / kGramBlock;
  const at::Tensor blocks = a.narrow(1, 0, k * kGramBlock).reshape({n, k, kGramBlock}).transpose(0, 1);
  at::Tensor acc = at::bmm(blocks, blocks.transpose(1, 2)).sum(0);
  if (D > k * kGramBlock) {
    const at::Tensor rest = a.narrow(1, k * kGramBlock, D - k * kGramBlock);
    acc.addmm_(rest, rest.t());
  }
  out.copy_(acc);
}

at::Tensor gram_cpu(const at::Tensor& a_in) {
  const CosineDims d = check_pairwise_cosine(kGram, a_in, a_in, /*allow_half=*/false);
  TORCH_CHECK(a_in.device().is_cpu(), kGram, ": CPU kernel called with a tensor on ", a_in.device());
  const at::Tensor a = a_in.contiguous();
  std::vector<int64_t> out_shape = a.dim() == 3 ? std::vector<int64_t>{d.B, d.N, d.N} : std::vector<int64_t>{d.N, d.N};
  at::Tensor out = at::empty(out_shape, a.options());
  if (out.numel() == 0) return out;
  if (d.D == 0) return out.zero_();
  if (use_wide(d)) {
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), kGram, [&] {
      const std::vector<double> sums = wide_sums<scalar_t>(a, a, /*same=*/true, d);
      const int64_t W = d.N * d.N + 2 * d.N;
      scalar_t* op = out.data_ptr<scalar_t>();
      for (int64_t k = 0; k < d.B; ++k) {
        const double* s = sums.data() + k * W;
        for (int64_t i = 0; i < d.N; ++i) {
          for (int64_t j = 0; j < d.N; ++j) {
            op[(k * d.N + i) * d.N + j] = static_cast<scalar_t>(j < i ? s[j * d.N + i] : s[i * d.N + j]);
          }
        }
      }
    });
    return out;
  }
  if (d.D >= 4 * kGramBlock) {
    const at::Tensor a3 = a.view({d.B, d.N, d.D});
    const at::Tensor o3 = out.view({d.B, d.N, d.N});
    for (int64_t k = 0; k < d.B; ++k) blocked_gram(a3[k], o3[k]);
    return out;
  }
  if (a.dim() == 3) return at::bmm_out(out, a, transpose_last(a));
  return at::mm_out(out, a, transpose_last(a));
}

std::tuple<at::Tensor, at::Tensor> pairwise_cosine_backward_cpu(const at::Tensor& grad_in, const at::Tensor& a_in,
                                                                const at::Tensor& b_in, double eps) {
  const CosineDims d = check_pairwise_cosine_backward(kBwd, grad_in, a_in, b_in, /*allow_half=*/false);
  TORCH_CHECK(a_in.device().is_cpu(), kBwd, ": CPU kernel called with a tensor on ", a_in.device());
  const bool same = a_in.is_same(b_in);
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = same ? a : b_in.contiguous();
  at::Tensor ga = at::empty_like(a, at::MemoryFormat::Contiguous);
  at::Tensor gb = at::empty_like(b, at::MemoryFormat::Contiguous);
  if (ga.numel() == 0 && gb.numel() == 0) return {ga, gb};
  if (d.N == 0 || d.M == 0) return {ga.zero_(), gb.zero_()};
  const at::Tensor G = grad_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), kBwd, [&] {
    auto real = a.options();
    auto bytes = a.options().dtype(at::kByte);
    at::Tensor ah = at::empty_like(a), inv_a = at::empty({d.B * d.N}, real), un_a = at::empty({d.B * d.N}, bytes);
    normalize_all<scalar_t>(a, ah, &inv_a, &un_a, d.D, eps);
    at::Tensor bh = ah, inv_b = inv_a, un_b = un_a;
    if (!same) {
      bh = at::empty_like(b);
      inv_b = at::empty({d.B * d.M}, real);
      un_b = at::empty({d.B * d.M}, bytes);
      normalize_all<scalar_t>(b, bh, &inv_b, &un_b, d.D, eps);
    }
    if (use_gemm(d)) {
      if (a.dim() == 3) {
        at::bmm_out(ga, G, bh);
        at::bmm_out(gb, transpose_last(G), ah);
      } else {
        at::mm_out(ga, G, bh);
        at::mm_out(gb, transpose_last(G), ah);
      }
      scalar_t* gap = ga.data_ptr<scalar_t>();
      scalar_t* gbp = gb.data_ptr<scalar_t>();
      const scalar_t* ahp = ah.data_ptr<scalar_t>();
      const scalar_t* bhp = bh.data_ptr<scalar_t>();
      const scalar_t* iap = inv_a.data_ptr<scalar_t>();
      const scalar_t* ibp = inv_b.data_ptr<scalar_t>();
      const uint8_t* uap = un_a.data_ptr<uint8_t>();
      const uint8_t* ubp = un_b.data_ptr<uint8_t>();
      const int64_t na = d.B * d.N;
      at::parallel_for(0, d.B * (d.N + d.M), grain_for(3 * d.D), [&](int64_t r0, int64_t r1) {
        if (r0 < na) correct_rows<scalar_t>(gap, ahp, iap, uap, r0, std::min(r1, na), d.D);
        if (r1 > na) correct_rows<scalar_t>(gbp, bhp, ibp, ubp, std::max(r0, na) - na, r1 - na, d.D);
      });
      return;
    }
    const int64_t work = std::max<int64_t>(d.M, d.N) * d.D;
    at::parallel_for(0, d.B * (d.N + d.M), grain_for(work), [&](int64_t r0, int64_t r1) {
      backward_rows<scalar_t>(G.data_ptr<scalar_t>(), ah.data_ptr<scalar_t>(), bh.data_ptr<scalar_t>(),
                              inv_a.data_ptr<scalar_t>(), inv_b.data_ptr<scalar_t>(), un_a.data_ptr<uint8_t>(),
                              un_b.data_ptr<uint8_t>(), ga.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(), r0, r1, d.B,
                              d.N, d.M, d.D);
    });
  });
  return {ga, gb};
}

}  // namespace
}  // namespace metareg

TORCH_LIBRARY_IMPL(metareg, CPU, m) {
  m.impl("pairwise_cosine", &metareg::pairwise_cosine_cpu);
  m.impl("pairwise_cosine_backward", &metareg::pairwise_cosine_backward_cpu);
  m.impl("pairwise_cosine_norms", &metareg::pairwise_cosine_norms_cpu);
  m.impl("gram", &metareg::gram_cpu);
}
