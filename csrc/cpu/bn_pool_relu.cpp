// CPU kernels of metareg::bn_pool_relu (training-mode batch norm -> max-pool 2 -> ReLU in one
// op, the tail of every Conv4 block) and of its backward.
//
// Why: on the grouped channels-last layout of metareg.nets.conv, PyTorch runs this tail as
// batch norm (statistics, then normalise: two full passes), max-pooling (a full read, a quarter
// write and int64 indices), ReLU, and in the backward ReLU's, max-pooling's (a full zero fill,
// then a scatter) and batch norm's (two full passes over the gradient and the input).  Here:
//
//   forward   pass 1  per-channel sums of x (one full read)
//             pass 2  normalise, pool, ReLU (one full read, quarter writes: out and xmax, the x
//                     each window chose)
//   backward  pass A  the two per-channel sums of batch norm's backward, on the quarter-size
//                     tensors only (the pooled gradient is zero outside the chosen elements)
//             pass B  d x (one full read of x, one full write), the window's choice recomputed
//
// Semantics: z = (x - mean) * invstd * weight + bias with the biased variance over (N, H, W), as
// F.batch_norm in training mode; out = relu(max_pool2d(z, 2)) (odd H, W: the last row/column is
// in no window, as max_pool2d floors).  The window's maximum of z is found by comparing s * x,
// s = sign(weight): z is monotone in x per channel, so this is the element max_pool2d picks
// (first one on ties, NaN wins), except where two different x round to the same z; the value is
// the same either way.  Comparisons are exact, so pass B finds the element pass 2 found.
//
// Differentiable once (metareg/ops/_registration.py): the second-order path of
// metareg.nets.conv keeps fused_batch_norm, whose derivatives go to third order.
//
// Reductions: fixed blocks of rows, partial sums in double, added in block order, so the result
// does not depend on the number of threads.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "checks.h"
#include "cpu/simd.h"

// The window comparisons below are NaN-aware selects; with trapping math (GCC's default) the
// vectoriser must keep them as branches, since a comparison with NaN may raise FE_INVALID.  No
// result changes: only whether the flag may be raised, which nothing here reads.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

namespace metareg {
namespace {

constexpr const char* kFwd = "metareg::bn_pool_relu";
constexpr const char* kBwd = "metareg::bn_pool_relu_backward";

// Blocks of a reduction (fixed, so sums do not depend on the thread count).
constexpr int64_t kBlocks = 64;
// Elements per parallel task of the elementwise passes.
constexpr int64_t kGrain = 1 << 15;

// Which of a window's four elements max_pool2d takes, by comparing s * x (exact): the same
// comparisons in the forward and the backward.
template <typename T>
inline int pick(T s, T v0, T v1, T v2, T v3) {
  T best = s * v0;
  int idx = 0;
  T k = s * v1;
  bool take = (k > best) | (k != k);
  best = take ? k : best;
  idx = take ? 1 : idx;
  k = s * v2;
  take = (k > best) | (k != k);
  best = take ? k : best;
  idx = take ? 2 : idx;
  k = s * v3;
  take = (k > best) | (k != k);
  idx = take ? 3 : idx;
  return idx;
}

template <typename T>
inline T sign_of(T v) {
  return v > T(0) ? T(1) : (v < T(0) ? T(-1) : T(0));
}

// Shifted sums of `n` positions of C channels: s += x - shift, q += (x - shift)^2.
template <typename T>
METAREG_CLONES void stats_rows(const T* x, int64_t n, int64_t C, const double* shift, double* s, double* q) {
  for (int64_t i = 0; i < n; ++i) {
    const T* r = x + i * C;
    METAREG_SIMD
    for (int64_t c = 0; c < C; ++c) {
      const double d = static_cast<double>(r[c]) - shift[c];
      s[c] += d;
      q[c] += d * d;
    }
  }
}

// One window, all C channels: p00..p11 its four elements' channel vectors (restrict, so the
// vectoriser needs no alias checks at run time).
template <typename T>
inline __attribute__((always_inline)) void window_forward(
    const T* __restrict__ p00, const T* __restrict__ p01, const T* __restrict__ p10, const T* __restrict__ p11,
    int64_t C, const T* __restrict__ sgn, const T* __restrict__ a, const T* __restrict__ mean,
    const T* __restrict__ bias, T* __restrict__ o, T* __restrict__ xm) {
  METAREG_SIMD
  for (int64_t c = 0; c < C; ++c) {
    const T v0 = p00[c], v1 = p01[c], v2 = p10[c], v3 = p11[c];
    const int idx = pick(sgn[c], v0, v1, v2, v3);
    const T xs = idx == 0 ? v0 : (idx == 1 ? v1 : (idx == 2 ? v2 : v3));
    const T z = a[c] * (xs - mean[c]) + bias[c];
    o[c] = ((z > T(0)) | (z != z)) ? z : T(0);
    xm[c] = xs;
  }
}

// One row of windows: x0, x1 the two input rows (W * C each), Wo windows.
template <typename T>
METAREG_CLONES void pool_forward_row(const T* x0, const T* x1, int64_t Wo, int64_t C, const T* sgn, const T* a,
                                     const T* mean, const T* bias, T* out, T* xmax) {
  for (int64_t ow = 0; ow < Wo; ++ow) {
    const int64_t off = 2 * ow * C;
    window_forward<T>(x0 + off, x0 + off + C, x1 + off, x1 + off + C, C, sgn, a, mean, bias, out + ow * C,
                      xmax + ow * C);
  }
}

// Backward sums over `n` pooled positions: g = grad where out > 0 (ReLU), sg += g,
// sgx += g * (xmax - mean).
template <typename T>
METAREG_CLONES void backward_sums(const T* go, const T* out, const T* xm, int64_t n, int64_t C, const T* mean,
                                  double* sg, double* sgx) {
  for (int64_t i = 0; i < n; ++i) {
    const T* g = go + i * C;
    const T* o = out + i * C;
    const T* x = xm + i * C;
    METAREG_SIMD
    for (int64_t c = 0; c < C; ++c) {
      // g loaded unconditionally: a conditional load would be a masked load (microcoded on AMD)
      const T gc = g[c];
      const T gi = o[c] > T(0) ? gc : T(0);
      sg[c] += static_cast<double>(gi);
      sgx[c] += static_cast<double>(gi) * static_cast<double>(x[c] - mean[c]);
    }
  }
}

// d x for one window, all C channels: d = q * (x - mean) + r everywhere, plus a * g at the
// chosen element.
template <typename T>
inline __attribute__((always_inline)) void window_backward(
    const T* __restrict__ p00, const T* __restrict__ p01, const T* __restrict__ p10, const T* __restrict__ p11,
    T* __restrict__ d00, T* __restrict__ d01, T* __restrict__ d10, T* __restrict__ d11, const T* __restrict__ g,
    const T* __restrict__ o, int64_t C, const T* __restrict__ sgn, const T* __restrict__ a,
    const T* __restrict__ mean, const T* __restrict__ q, const T* __restrict__ r) {
  METAREG_SIMD
  for (int64_t c = 0; c < C; ++c) {
    const T v0 = p00[c], v1 = p01[c], v2 = p10[c], v3 = p11[c];
    const int idx = pick(sgn[c], v0, v1, v2, v3);
    const T agc = a[c] * g[c];  // loaded unconditionally, as in backward_sums
    const T ag = o[c] > T(0) ? agc : T(0);
    const T m = mean[c], qc = q[c], rc = r[c];
    // ag added through 0/1 factors, not `idx == k ? ag : 0`: GCC turns that select into a plain
    // store plus a masked store per element (microcoded on AMD; the backward took 1.4x as long).
    // The same numbers wherever ag is finite (a non-finite ag makes every d non-finite anyway:
    // the sums above see it)
    d00[c] = qc * (v0 - m) + rc + T(idx == 0) * ag;
    d01[c] = qc * (v1 - m) + rc + T(idx == 1) * ag;
    d10[c] = qc * (v2 - m) + rc + T(idx == 2) * ag;
    d11[c] = qc * (v3 - m) + rc + T(idx == 3) * ag;
  }
}

template <typename T>
METAREG_CLONES void pool_backward_row(const T* x0, const T* x1, const T* go, const T* out, T* d0, T* d1, int64_t Wo,
                                      int64_t C, const T* sgn, const T* a, const T* mean, const T* q, const T* r) {
  for (int64_t ow = 0; ow < Wo; ++ow) {
    const int64_t off = 2 * ow * C;
    window_backward<T>(x0 + off, x0 + off + C, x1 + off, x1 + off + C, d0 + off, d0 + off + C, d1 + off,
                       d1 + off + C, go + ow * C, out + ow * C, C, sgn, a, mean, q, r);
  }
}

// d = q * (x - mean) + r for `n` positions outside every window.
template <typename T>
METAREG_CLONES void outside_rows(const T* x, T* d, int64_t n, int64_t C, const T* mean, const T* q, const T* r) {
  for (int64_t i = 0; i < n; ++i) {
    METAREG_SIMD
    for (int64_t c = 0; c < C; ++c) d[i * C + c] = q[c] * (x[i * C + c] - mean[c]) + r[c];
  }
}

// Runs body(b, r0, r1) for kBlocks fixed blocks of [0, rows) in parallel; partial sums of
// `width` doubles per block are returned, added in block order.
template <typename F>
std::vector<double> block_sums(int64_t rows, int64_t width, F body) {
  const int64_t nb = std::max<int64_t>(1, std::min(rows, kBlocks));
  std::vector<double> part(static_cast<size_t>(nb * width), 0.0);
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) body(part.data() + b * width, rows * b / nb, rows * (b + 1) / nb);
  });
  std::vector<double> total(static_cast<size_t>(width), 0.0);
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t i = 0; i < width; ++i) total[i] += part[b * width + i];
  return total;
}


std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_pool_relu_cpu(const at::Tensor& x_in,
                                                                             const at::Tensor& weight_in,
                                                                             const at::Tensor& bias_in, double eps) {
  const PoolDims d = check_bn_pool_relu(kFwd, x_in, weight_in, bias_in);
  TORCH_CHECK(x_in.device().is_cpu(), kFwd, ": CPU kernel called with a tensor on ", x_in.device());
  const at::Tensor x = channels_last(x_in);
  const at::Tensor weight = weight_in.contiguous(), bias = bias_in.contiguous();
  const int64_t N = d.N, C = d.C, H = d.H, W = d.W, Ho = H / 2, Wo = W / 2;
  const auto opts = x.options();
  at::Tensor out = at::empty({N, C, Ho, Wo}, opts.memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor xmax = at::empty({N, C, Ho, Wo}, opts.memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor mean = at::empty({C}, opts), invstd = at::empty({C}, opts);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), kFwd, [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    const int64_t positions = N * H * W;
    // pass 1: statistics, shifted by the first position's values against cancellation
    std::vector<double> shift(C);
    for (int64_t c = 0; c < C; ++c) shift[c] = static_cast<double>(xp[c]);
    const std::vector<double> sums = block_sums(positions, 2 * C, [&](double* acc, int64_t p0, int64_t p1) {
      stats_rows<T>(xp + p0 * C, p1 - p0, C, shift.data(), acc, acc + C);
    });
    std::vector<T> sgn(C), a(C);
    T* mp = mean.data_ptr<T>();
    T* ip = invstd.data_ptr<T>();
    const T* wp = weight.data_ptr<T>();
    const T* bp = bias.data_ptr<T>();
    for (int64_t c = 0; c < C; ++c) {
      const double m1 = sums[c] / positions;
      const double var = std::max(0.0, sums[C + c] / positions - m1 * m1);
      const double is = 1.0 / std::sqrt(var + eps);
      mp[c] = static_cast<T>(shift[c] + m1);
      ip[c] = static_cast<T>(is);
      a[c] = static_cast<T>(is * static_cast<double>(wp[c]));
      sgn[c] = sign_of(a[c]);
    }
    // pass 2: normalise, pool, ReLU
    T* op = out.data_ptr<T>();
    T* xm = xmax.data_ptr<T>();
    at::parallel_for(0, N * Ho, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, 4 * Wo * C)),
                     [&](int64_t r0, int64_t r1) {
                       for (int64_t r = r0; r < r1; ++r) {
                         const int64_t n = r / Ho, oh = r % Ho;
                         const T* x0 = xp + ((n * H + 2 * oh) * W) * C;
                         pool_forward_row<T>(x0, x0 + W * C, Wo, C, sgn.data(), a.data(), mp, bp,
                                             op + r * Wo * C, xm + r * Wo * C);
                       }
                     });
  });
  return {out, xmax, mean, invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_pool_relu_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& out_in,
    const at::Tensor& xmax_in, const at::Tensor& mean_in, const at::Tensor& invstd_in) {
  const PoolDims d = check_bn_pool_relu(kBwd, x_in, weight_in, weight_in);
  TORCH_CHECK(x_in.device().is_cpu(), kBwd, ": CPU kernel called with a tensor on ", x_in.device());
  const int64_t N = d.N, C = d.C, H = d.H, W = d.W, Ho = H / 2, Wo = W / 2;
  const std::vector<int64_t> pooled{N, C, Ho, Wo};
  for (const at::Tensor* t : {&grad_in, &out_in, &xmax_in})
    TORCH_CHECK(t->sizes() == at::IntArrayRef(pooled) && t->scalar_type() == x_in.scalar_type(), kBwd,
                ": expected grad, out and xmax of shape ", at::IntArrayRef(pooled), " and dtype ", x_in.scalar_type(),
                ", got ", t->sizes(), " ", t->scalar_type());
  TORCH_CHECK(mean_in.numel() == C && invstd_in.numel() == C, kBwd, ": expected mean and invstd of ", C,
              " elements, got ", mean_in.sizes(), " and ", invstd_in.sizes());
  const at::Tensor x = channels_last(x_in), go = channels_last(grad_in), out = channels_last(out_in),
                   xmax = channels_last(xmax_in);
  const at::Tensor weight = weight_in.contiguous(), mean = mean_in.contiguous(), invstd = invstd_in.contiguous();
  at::Tensor gx = at::empty({N, C, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor gw = at::empty({C}, x.options()), gb = at::empty({C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), kBwd, [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    const T* gp = go.data_ptr<T>();
    const T* opp = out.data_ptr<T>();
    const T* mp = mean.data_ptr<T>();
    // pass A: sum g and sum g (xmax - mean) per channel, on the pooled tensors
    const std::vector<double> sums = block_sums(N * Ho * Wo, 2 * C, [&](double* acc, int64_t p0, int64_t p1) {
      backward_sums<T>(gp + p0 * C, opp + p0 * C, xmax.data_ptr<T>() + p0 * C, p1 - p0, C, mp, acc, acc + C);
    });
    const double positions = static_cast<double>(N * H * W);
    std::vector<T> sgn(C), a(C), q(C), r(C);
    const T* wp = weight.data_ptr<T>();
    const T* ip = invstd.data_ptr<T>();
    T* gwp = gw.data_ptr<T>();
    T* gbp = gb.data_ptr<T>();
    for (int64_t c = 0; c < C; ++c) {
      const double is = static_cast<double>(ip[c]);
      const double ac = is * static_cast<double>(wp[c]);
      const double sg = sums[c], sgxh = sums[C + c] * is;  // sum g, sum g * xhat
      gbp[c] = static_cast<T>(sg);
      gwp[c] = static_cast<T>(sgxh);
      // d x = a (G - mean(G) - xhat mean(G xhat)), xhat = (x - mean) invstd
      a[c] = static_cast<T>(ac);
      sgn[c] = sign_of(a[c]);
      q[c] = static_cast<T>(-ac * is * sgxh / positions);
      r[c] = static_cast<T>(-ac * sg / positions);
    }
    // pass B: d x
    T* dp = gx.data_ptr<T>();
    at::parallel_for(0, N * Ho, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, 4 * Wo * C)),
                     [&](int64_t r0, int64_t r1) {
                       for (int64_t rr = r0; rr < r1; ++rr) {
                         const int64_t n = rr / Ho, oh = rr % Ho;
                         const int64_t row0 = (n * H + 2 * oh) * W * C;
                         pool_backward_row<T>(xp + row0, xp + row0 + W * C, gp + rr * Wo * C, opp + rr * Wo * C,
                                              dp + row0, dp + row0 + W * C, Wo, C, sgn.data(), a.data(), mp, q.data(),
                                              r.data());
                         if (W % 2)  // the last column of both rows is in no window
                           for (int64_t k = 0; k < 2; ++k)
                             outside_rows<T>(xp + row0 + k * W * C + (W - 1) * C, dp + row0 + k * W * C + (W - 1) * C,
                                             1, C, mp, q.data(), r.data());
                         if (H % 2 && oh == Ho - 1)  // so is the last row
                           outside_rows<T>(xp + (n * H + H - 1) * W * C, dp + (n * H + H - 1) * W * C, W, C, mp,
                                           q.data(), r.data());
                       }
                     });
  });
  return {gx, gw, gb};
}

}  // namespace
}  // namespace metareg

TORCH_LIBRARY_IMPL(metareg, CPU, m) {
  m.impl("bn_pool_relu", &metareg::bn_pool_relu_cpu);
  m.impl("bn_pool_relu_backward", &metareg::bn_pool_relu_backward_cpu);
}
