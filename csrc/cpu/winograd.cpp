// CPU kernels of metareg::conv3x3_winograd (a 3x3 convolution, stride 1, padding 1, grouped, no
// bias) and of its backward, by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast
// Algorithms for Convolutional Neural Networks", CVPR 2016).
//
// Why: the query pass of a Conv4 MAML step is bound by its 64-channel convolutions, which oneDNN
// runs as direct convolutions at this CPU's GEMM rate (benchmarks/conv_floor.py).  F(4x4, 3x3)
// computes each 4x4 output tile from a 6x6 input tile with 36 multiplications per (input,
// output) channel pair instead of 144, so the products, 36 batched GEMMs of [tiles, C_in] x
// [C_in, C_out] per group, are 4x fewer; the transforms between them are additions and small
// constant multiples, done here in one pass each, vectorised over the channels (channels-last).
//
//   forward    V = B^T d B     (input tiles, [36, tiles, C_in] per group)   one read of x
//              M = V U         (U = G w G^T, [G, 36, C_in, C_out])          at::bmm (BLAS)
//              y = A^T M A     (output tiles)                               one write of y
//   backward   d x = the forward on d y with the flipped, transposed weights
//              d U = V^T (A dy A^T), d w = G^T dU G                         one more read of x, dy
//
// Blocking: a work item is one group and kBlock tiles; a thread transforms them into its own
// [36, kBlock, C] buffer (295 KB at C = 64, float32), multiplies, and transforms back, so the
// 4x-expanded tiles never leave the cache (whole-tensor buffers were 1.3x slower here, mostly
// page faults and cache misses).  The weight transforms are a plain loop: with few images and
// many groups (MAML's support pass: 5 images, 32 groups) they cost as much as the products save,
// which is why the support passes keep oneDNN.
//
// The result is the convolution's up to rounding: the transforms multiply by up to 8 and sum up
// to 36 terms, so float32 errors are several times a direct convolution's (float64: ~1e-14).
// Differentiable once (metareg/ops/_registration.py): only the query pass, whose convolutions
// are differentiated once, uses it.
//
// Tiles: output tile (ty, tx) covers rows 4ty..4ty+3 and columns 4tx..4tx+3; its input tile
// rows 4ty-1..4ty+4 (zero outside the image: the padding, and the ragged last tile).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "checks.h"
#include "cpu/simd.h"

namespace metareg {
namespace {

constexpr const char* kFwd = "metareg::conv3x3_winograd";
constexpr const char* kBwd = "metareg::conv3x3_winograd_backward";
// Tiles per block (one thread's transform -> products -> transform, in cache).
constexpr int64_t kBlock = 32;
// Partial sums per group of the weight gradient, where the tiles allow (fixed, so the sum does
// not depend on the thread count).
constexpr int64_t kParts = 8;

struct Geo {
  int64_t N, H, W, G, Cin, Cout, th, tw, tiles;
};

// B^T along one axis of a 6x6 tile: six vectors of length len in, six out.
template <typename T>
METAREG_CLONES void bt6(const T* const* in, T* const* out, int64_t len) {
  const T* __restrict d0 = in[0];
  const T* __restrict d1 = in[1];
  const T* __restrict d2 = in[2];
  const T* __restrict d3 = in[3];
  const T* __restrict d4 = in[4];
  const T* __restrict d5 = in[5];
  T* __restrict o0 = out[0];
  T* __restrict o1 = out[1];
  T* __restrict o2 = out[2];
  T* __restrict o3 = out[3];
  T* __restrict o4 = out[4];
  T* __restrict o5 = out[5];
  METAREG_SIMD
  for (int64_t c = 0; c < len; ++c) {
    const T a0 = d0[c], a1 = d1[c], a2 = d2[c], a3 = d3[c], a4 = d4[c], a5 = d5[c];
    o0[c] = T(4) * a0 - T(5) * a2 + a4;
    o1[c] = a3 + a4 - T(4) * (a1 + a2);
    o2[c] = a4 - a3 + T(4) * (a1 - a2);
    o3[c] = a4 - a2 + T(2) * (a3 - a1);
    o4[c] = a4 - a2 + T(2) * (a1 - a3);
    o5[c] = T(4) * a1 - T(5) * a3 + a5;
  }
}

// A^T along one axis: six vectors in, four out.
template <typename T>
METAREG_CLONES void at6(const T* const* in, T* const* out, int64_t len) {
  const T* __restrict m0 = in[0];
  const T* __restrict m1 = in[1];
  const T* __restrict m2 = in[2];
  const T* __restrict m3 = in[3];
  const T* __restrict m4 = in[4];
  const T* __restrict m5 = in[5];
  T* __restrict o0 = out[0];
  T* __restrict o1 = out[1];
  T* __restrict o2 = out[2];
  T* __restrict o3 = out[3];
  METAREG_SIMD
  for (int64_t c = 0; c < len; ++c) {
    const T s12 = m1[c] + m2[c], d12 = m1[c] - m2[c], s34 = m3[c] + m4[c], d34 = m3[c] - m4[c];
    o0[c] = m0[c] + s12 + s34;
    o1[c] = d12 + T(2) * d34;
    o2[c] = s12 + T(4) * s34;
    o3[c] = d12 + T(8) * d34 + m5[c];
  }
}

// A along one axis (the adjoint of at6): four vectors in, six out.
template <typename T>
METAREG_CLONES void a4(const T* const* in, T* const* out, int64_t len) {
  const T* __restrict g0 = in[0];
  const T* __restrict g1 = in[1];
  const T* __restrict g2 = in[2];
  const T* __restrict g3 = in[3];
  T* __restrict o0 = out[0];
  T* __restrict o1 = out[1];
  T* __restrict o2 = out[2];
  T* __restrict o3 = out[3];
  T* __restrict o4 = out[4];
  T* __restrict o5 = out[5];
  METAREG_SIMD
  for (int64_t c = 0; c < len; ++c) {
    const T s02 = g0[c] + g2[c], s13 = g1[c] + g3[c], t0 = g0[c] + T(4) * g2[c], t1 = T(2) * g1[c] + T(8) * g3[c];
    o0[c] = g0[c];
    o1[c] = s02 + s13;
    o2[c] = s02 - s13;
    o3[c] = t0 + t1;
    o4[c] = t0 - t1;
    o5[c] = g3[c];
  }
}

// Tiles t0..t1-1 of group grp of x (channels-last [N, H, W, G*C]) -> V [36, t1 - t0, C]; tmp:
// 36 C, zeros: C.
template <typename T>
void input_transform(const T* x, T* V, const Geo& g, int64_t C, int64_t grp, int64_t t0, int64_t t1, T* tmp,
                     const T* zeros) {
  const int64_t nb = t1 - t0;
  const T* in[6];
  T* out[6];
  {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / (g.th * g.tw), ty = t / g.tw % g.th, tx = t % g.tw;
      {
        // columns: tmp[a][j] = sum_i B^T[a][i] d[i][j]
        for (int64_t j = 0; j < 6; ++j) {
          const int64_t col = 4 * tx - 1 + j;
          for (int64_t i = 0; i < 6; ++i) {
            const int64_t row = 4 * ty - 1 + i;
            in[i] = (row < 0 || row >= g.H || col < 0 || col >= g.W)
                        ? zeros
                        : x + ((n * g.H + row) * g.W + col) * g.G * C + grp * C;
            out[i] = tmp + (i * 6 + j) * C;
          }
          bt6<T>(in, out, C);
        }
        // rows: V[a*6+b] = sum_j tmp[a][j] B^T[b][j]
        for (int64_t a = 0; a < 6; ++a) {
          for (int64_t k = 0; k < 6; ++k) {
            in[k] = tmp + (a * 6 + k) * C;
            out[k] = V + ((a * 6 + k) * nb + t - t0) * C;
          }
          bt6<T>(in, out, C);
        }
      }
    }
  }
}

// M [36, t1 - t0, C] -> tiles t0..t1-1 of group grp of y (channels-last [N, H, W, G*C]); tmp:
// 24 C, scratch: C.
template <typename T>
void output_transform(const T* M, T* y, const Geo& g, int64_t C, int64_t grp, int64_t t0, int64_t t1, T* tmp,
                      T* scratch) {
  const int64_t nb = t1 - t0;
  const T* in[6];
  T* out[6];
  {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / (g.th * g.tw), ty = t / g.tw % g.th, tx = t % g.tw;
      {
        // columns: tmp[i][b] = sum_a A^T[i][a] M[a][b]
        for (int64_t b = 0; b < 6; ++b) {
          for (int64_t a = 0; a < 6; ++a) in[a] = M + ((a * 6 + b) * nb + t - t0) * C;
          for (int64_t i = 0; i < 4; ++i) out[i] = tmp + (i * 6 + b) * C;
          at6<T>(in, out, C);
        }
        // rows: y[i][j] = sum_b tmp[i][b] A^T[j][b]
        for (int64_t i = 0; i < 4; ++i) {
          const int64_t row = 4 * ty + i;
          for (int64_t b = 0; b < 6; ++b) in[b] = tmp + (i * 6 + b) * C;
          for (int64_t j = 0; j < 4; ++j) {
            const int64_t col = 4 * tx + j;
            out[j] = (row < g.H && col < g.W) ? y + ((n * g.H + row) * g.W + col) * g.G * C + grp * C : scratch;
          }
          at6<T>(in, out, C);
        }
      }
    }
  }
}

// Tiles t0..t1-1 of group grp of dy (channels-last [N, H, W, G*C]) -> dM = A dy A^T,
// [36, t1 - t0, C]; tmp: 24 C, zeros: C.
template <typename T>
void output_adjoint(const T* dy, T* dM, const Geo& g, int64_t C, int64_t grp, int64_t t0, int64_t t1, T* tmp,
                    const T* zeros) {
  const int64_t nb = t1 - t0;
  const T* in[6];
  T* out[6];
  {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / (g.th * g.tw), ty = t / g.tw % g.th, tx = t % g.tw;
      {
        // columns: tmp[a][j] = sum_i A[a][i] dy[i][j]
        for (int64_t j = 0; j < 4; ++j) {
          const int64_t col = 4 * tx + j;
          for (int64_t i = 0; i < 4; ++i) {
            const int64_t row = 4 * ty + i;
            in[i] = (row < g.H && col < g.W) ? dy + ((n * g.H + row) * g.W + col) * g.G * C + grp * C : zeros;
          }
          for (int64_t a = 0; a < 6; ++a) out[a] = tmp + (a * 4 + j) * C;
          a4<T>(in, out, C);
        }
        // rows: dM[a*6+b] = sum_j tmp[a][j] A[b][j]
        for (int64_t a = 0; a < 6; ++a) {
          for (int64_t j = 0; j < 4; ++j) in[j] = tmp + (a * 4 + j) * C;
          for (int64_t b = 0; b < 6; ++b) out[b] = dM + ((a * 6 + b) * nb + t - t0) * C;
          a4<T>(in, out, C);
        }
      }
    }
  }
}

// Winograd's filter matrix G [6, 3].
constexpr double kG[6][3] = {{1.0 / 4, 0, 0},           {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                             {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};

// One row of filters, vectorised over n of them: w9 [9][n] (tap i*3+l, or the 180-degree turn
// (2-i)*3+2-l with flip) -> u[(a*6+b) * stride] = (G w G^T)[a][b], n values each; tmp: 18 n.
template <typename T>
METAREG_CLONES void filter_row(const T* __restrict w9, T* __restrict u, int64_t stride, int64_t n, bool flip,
                               T* __restrict tmp) {
  for (int a = 0; a < 6; ++a)
    for (int l = 0; l < 3; ++l) {
      const T g0 = T(kG[a][0]), g1 = T(kG[a][1]), g2 = T(kG[a][2]);
      const T* __restrict w0 = w9 + (flip ? 8 - l : l) * n;
      const T* __restrict w1 = w9 + (flip ? 5 - l : 3 + l) * n;
      const T* __restrict w2 = w9 + (flip ? 2 - l : 6 + l) * n;
      T* __restrict t = tmp + (a * 3 + l) * n;
      METAREG_SIMD
      for (int64_t c = 0; c < n; ++c) t[c] = g0 * w0[c] + g1 * w1[c] + g2 * w2[c];
    }
  for (int a = 0; a < 6; ++a)
    for (int b = 0; b < 6; ++b) {
      const T g0 = T(kG[b][0]), g1 = T(kG[b][1]), g2 = T(kG[b][2]);
      const T* __restrict t0 = tmp + (a * 3) * n;
      const T* __restrict t1 = tmp + (a * 3 + 1) * n;
      const T* __restrict t2 = tmp + (a * 3 + 2) * n;
      T* __restrict o = u + (a * 6 + b) * stride;
      METAREG_SIMD
      for (int64_t c = 0; c < n; ++c) o[c] = t0[c] * g0 + t1[c] * g1 + t2[c] * g2;
    }
}

// Its adjoint: du[(a*6+b) * stride] (n values each) -> w9 [9][n] = (G^T dU G)[i][l]; tmp: 18 n.
template <typename T>
METAREG_CLONES void filter_row_adjoint(const T* __restrict du, int64_t stride, T* __restrict w9, int64_t n,
                                       T* __restrict tmp) {
  for (int i = 0; i < 3; ++i)
    for (int b = 0; b < 6; ++b) {
      T* __restrict s = tmp + (i * 6 + b) * n;
      METAREG_SIMD
      for (int64_t c = 0; c < n; ++c) {
        T acc = T(0);
        for (int a = 0; a < 6; ++a) acc += T(kG[a][i]) * du[(a * 6 + b) * stride + c];
        s[c] = acc;
      }
    }
  for (int i = 0; i < 3; ++i)
    for (int l = 0; l < 3; ++l) {
      T* __restrict o = w9 + (i * 3 + l) * n;
      METAREG_SIMD
      for (int64_t c = 0; c < n; ++c) {
        T acc = T(0);
        for (int b = 0; b < 6; ++b) acc += tmp[(i * 6 + b) * n + c] * T(kG[b][l]);
        o[c] = acc;
      }
    }
}

// weight [G*Cout, Cin, 3, 3] -> U = G w G^T as [G, 36, Cin, Cout]; with flip, the weights of the
// input gradient instead (in and out swapped, each filter turned 180 degrees): [G, 36, Cout, Cin].
// Vectorised over the last index (the filters are first laid out [G, rows, 9, cols]).
at::Tensor weight_transform(const at::Tensor& w, const Geo& g, bool flip) {
  const int64_t rows = flip ? g.Cout : g.Cin, cols = flip ? g.Cin : g.Cout;
  const at::Tensor w5 = w.view({g.G, g.Cout, g.Cin, 9});
  const at::Tensor w9 = (flip ? w5.permute({0, 1, 3, 2}) : w5.permute({0, 2, 3, 1})).contiguous();
  at::Tensor U = at::empty({g.G, 36, rows, cols}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), kFwd, [&] {
    using T = scalar_t;
    const T* wp = w9.data_ptr<T>();
    T* up = U.data_ptr<T>();
    at::parallel_for(0, g.G * rows, 8, [&](int64_t r0, int64_t r1) {
      std::vector<T> tmp(18 * cols);
      for (int64_t r = r0; r < r1; ++r) {  // r = group * rows + row
        const int64_t grp = r / rows, row = r % rows;
        filter_row<T>(wp + r * 9 * cols, up + (grp * 36 * rows + row) * cols, rows * cols, cols, flip, tmp.data());
      }
    });
  });
  return U;
}

// d U [G, 36, Cin, Cout] -> d w = G^T dU G, [G*Cout, Cin, 3, 3] (computed as [G, Cin, 9, Cout]).
at::Tensor weight_adjoint(const at::Tensor& dU, const Geo& g) {
  at::Tensor w9 = at::empty({g.G, g.Cin, 9, g.Cout}, dU.options());
  AT_DISPATCH_FLOATING_TYPES(dU.scalar_type(), kBwd, [&] {
    using T = scalar_t;
    const T* up = dU.data_ptr<T>();
    T* wp = w9.data_ptr<T>();
    at::parallel_for(0, g.G * g.Cin, 8, [&](int64_t r0, int64_t r1) {
      std::vector<T> tmp(18 * g.Cout);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t grp = r / g.Cin, ci = r % g.Cin;
        filter_row_adjoint<T>(up + (grp * 36 * g.Cin + ci) * g.Cout, g.Cin * g.Cout, wp + r * 9 * g.Cout, g.Cout,
                              tmp.data());
      }
    });
  });
  return w9.permute({0, 3, 1, 2}).reshape({g.G * g.Cout, g.Cin, 3, 3});
}

Geo geometry(const char* op, const at::Tensor& x, const at::Tensor& w, int64_t groups) {
  TORCH_CHECK(x.dim() == 4, op, ": expected x of shape [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(groups >= 1 && w.dim() == 4 && w.size(2) == 3 && w.size(3) == 3 && w.size(0) % groups == 0 &&
                  w.size(1) * groups == x.size(1),
              op, ": expected weight of shape [groups * C_out, C / groups, 3, 3] for x of shape ", x.sizes(),
              " and groups=", groups, ", got weight of shape ", w.sizes());
  check_float_dtype(op, x, "x", /*allow_half=*/false);
  TORCH_CHECK(w.scalar_type() == x.scalar_type() && w.device() == x.device(), op,
              ": weight must match x in dtype and device, got x ", x.scalar_type(), " on ", x.device(), ", weight ",
              w.scalar_type(), " on ", w.device());
  TORCH_CHECK(x.device().is_cpu(), op, ": CPU kernel called with a tensor on ", x.device());
  Geo g;
  g.N = x.size(0), g.H = x.size(2), g.W = x.size(3), g.G = groups, g.Cin = w.size(1), g.Cout = w.size(0) / groups;
  g.th = (g.H + 3) / 4, g.tw = (g.W + 3) / 4, g.tiles = g.N * g.th * g.tw;
  return g;
}

// The forward on channels-last x with the transformed weights U [G, 36, Cin, Cout], one group
// and kBlock tiles at a time per thread: transform, 36 products, inverse transform, in buffers
// that stay in cache (whole-tensor V and M would be 4x x's size, out of cache and page-faulted).
at::Tensor forward_with(const at::Tensor& x, const at::Tensor& U, const Geo& g) {
  at::Tensor y = at::empty({g.N, g.G * g.Cout, g.H, g.W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  const int64_t blocks = (g.tiles + kBlock - 1) / kBlock;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), kFwd, [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    at::parallel_for(0, g.G * blocks, 1, [&](int64_t i0, int64_t i1) {
      at::Tensor V = at::empty({36 * kBlock * g.Cin}, x.options());
      at::Tensor M = at::empty({36 * kBlock * g.Cout}, x.options());
      // zeros: the padding input_transform reads; scratch: where output_transform writes the
      // outputs of a ragged last tile that lie outside y
      std::vector<T> tmp(36 * std::max(g.Cin, g.Cout)), zeros(g.Cin, T(0)), scratch(g.Cout);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t grp = i / blocks, t0 = i % blocks * kBlock, t1 = std::min(g.tiles, t0 + kBlock), nb = t1 - t0;
        input_transform<T>(xp, V.data_ptr<T>(), g, g.Cin, grp, t0, t1, tmp.data(), zeros.data());
        at::Tensor m = M.narrow(0, 0, 36 * nb * g.Cout).view({36, nb, g.Cout});
        at::bmm_out(m, V.narrow(0, 0, 36 * nb * g.Cin).view({36, nb, g.Cin}), U.select(0, grp));
        output_transform<T>(M.data_ptr<T>(), yp, g, g.Cout, grp, t0, t1, tmp.data(), scratch.data());
      }
    });
  });
  return y;
}

// d U [G, 36, Cin, Cout] = sum over tiles of V^T (A dy A^T), one group and kBlock tiles at a time;
// each group's blocks in `parts` fixed partial sums added in order.  parts depends on the tiles
// per group only, so a group's result depends neither on the number of threads nor on the other
// groups (how many tasks share a chunk, or a process in a distributed run).
at::Tensor weight_grad_transformed(const at::Tensor& x, const at::Tensor& gy, const Geo& g) {
  const int64_t blocks = (g.tiles + kBlock - 1) / kBlock;
  const int64_t parts = std::max<int64_t>(1, std::min(blocks, kParts));
  at::Tensor dU = at::empty({parts, g.G, 36, g.Cin, g.Cout}, x.options());  // each part's first block writes it
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), kBwd, [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    const T* gp = gy.data_ptr<T>();
    at::parallel_for(0, g.G * parts, 1, [&](int64_t i0, int64_t i1) {
      at::Tensor V = at::empty({36 * kBlock * g.Cin}, x.options());
      at::Tensor dM = at::empty({36 * kBlock * g.Cout}, x.options());
      std::vector<T> tmp(36 * std::max(g.Cin, g.Cout)), zeros(std::max(g.Cin, g.Cout), T(0));
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t grp = i / parts, p = i % parts;
        at::Tensor acc = dU.select(0, p).select(0, grp);
        for (int64_t b = p * blocks / parts; b < (p + 1) * blocks / parts; ++b) {
          const int64_t t0 = b * kBlock, t1 = std::min(g.tiles, t0 + kBlock), nb = t1 - t0;
          input_transform<T>(xp, V.data_ptr<T>(), g, g.Cin, grp, t0, t1, tmp.data(), zeros.data());
          output_adjoint<T>(gp, dM.data_ptr<T>(), g, g.Cout, grp, t0, t1, tmp.data(), zeros.data());
          const at::Tensor vt = V.narrow(0, 0, 36 * nb * g.Cin).view({36, nb, g.Cin}).transpose(1, 2);
          const at::Tensor dm = dM.narrow(0, 0, 36 * nb * g.Cout).view({36, nb, g.Cout});
          if (b == p * blocks / parts)
            at::bmm_out(acc, vt, dm);
          else
            acc.baddbmm_(vt, dm);
        }
      }
    });
  });
  at::Tensor total = dU.select(0, 0).clone();
  for (int64_t p = 1; p < parts; ++p) total.add_(dU.select(0, p));
  return total;
}

at::Tensor conv3x3_winograd_cpu(const at::Tensor& x_in, const at::Tensor& w_in, int64_t groups) {
  const Geo g = geometry(kFwd, x_in, w_in, groups);
  return forward_with(channels_last(x_in), weight_transform(w_in.contiguous(), g, /*flip=*/false), g);
}

std::tuple<at::Tensor, at::Tensor> conv3x3_winograd_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                                 const at::Tensor& w_in, int64_t groups,
                                                                 bool need_x, bool need_w) {
  const Geo g = geometry(kBwd, x_in, w_in, groups);
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.size(0) == g.N && grad_in.size(1) == g.G * g.Cout &&
                  grad_in.size(2) == g.H && grad_in.size(3) == g.W && grad_in.scalar_type() == x_in.scalar_type(),
              kBwd, ": expected grad of shape [", g.N, ", ", g.G * g.Cout, ", ", g.H, ", ", g.W, "] and dtype ",
              x_in.scalar_type(), ", got ", grad_in.sizes(), " ", grad_in.scalar_type());
  const at::Tensor gy = channels_last(grad_in), w = w_in.contiguous();
  at::Tensor gx = x_in.new_empty({0}), gw = w.new_empty({0});
  if (need_x) {
    // the input gradient is the convolution of dy with the flipped weights, in and out swapped
    Geo gt = g;
    std::swap(gt.Cin, gt.Cout);
    gx = forward_with(gy, weight_transform(w, g, /*flip=*/true), gt);
  }
  if (need_w)
    gw = g.tiles == 0 ? at::zeros_like(w) : weight_adjoint(weight_grad_transformed(channels_last(x_in), gy, g), g);
  return {gx, gw};
}

}  // namespace
}  // namespace metareg

TORCH_LIBRARY_IMPL(metareg, CPU, m) {
  m.impl("conv3x3_winograd", &metareg::conv3x3_winograd_cpu);
  m.impl("conv3x3_winograd_backward", &metareg::conv3x3_winograd_backward_cpu);
}
