// Winograd F(4x4, 3x3) (Lavin & Gray 2016, points 0, ±1, ±2, ∞): a 6x6 input tile and a 3x3 filter give a
// 4x4 output tile with 36 multiplies per (input, output) channel pair instead of 144. The 36 products
// across channels are 36 GEMMs, run through at::bmm. Dilation d works on the d*d interleaved sub-lattices:
// output (py + d*r, px + d*c) only reads inputs of the same sub-lattice, where the convolution is undilated.
#pragma once
#include <vector>

#include "conv/conv.h"

namespace apnt {
namespace conv {

// B^T d for one 6-vector (stride `s` between its elements), written to o[0..5] (stride `so`).
template <typename T>
APNT_HD void winograd_input_1d(const T* d, int s, T* o, int so) {
  const T d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s], d5 = d[5 * s];
  // Scalar constants (not T(4)) so T may also be a SIMD vector type.
  o[0] = 4.f * d0 - 5.f * d2 + d4;
  o[so] = -4.f * (d1 + d2) + d3 + d4;
  o[2 * so] = 4.f * (d1 - d2) - d3 + d4;
  o[3 * so] = 2.f * (d3 - d1) - d2 + d4;
  o[4 * so] = 2.f * (d1 - d3) - d2 + d4;
  o[5 * so] = 4.f * d1 - 5.f * d3 + d5;
}

// A^T m for one 6-vector, written to y[0..3].
template <typename T>
APNT_HD void winograd_output_1d(const T* m, int s, T* y, int sy) {
  const T m0 = m[0], m1 = m[s], m2 = m[2 * s], m3 = m[3 * s], m4 = m[4 * s], m5 = m[5 * s];
  const T a = m1 + m2, b = m1 - m2, c = m3 + m4, e = m3 - m4;
  y[0] = m0 + a + c;
  y[sy] = b + 2.f * e;
  y[2 * sy] = a + 4.f * c;
  y[3 * sy] = b + 8.f * e + m5;
}

// G g for one 3-vector, written to u[0..5].
template <typename T>
APNT_HD void winograd_filter_1d(const T* g, int s, T* u, int su) {
  const T g0 = g[0], g1 = g[s], g2 = g[2 * s];
  u[0] = g0 / T(4);
  u[su] = -(g0 + g1 + g2) / T(6);
  u[2 * su] = -(g0 - g1 + g2) / T(6);
  u[3 * su] = g0 / T(24) + g1 / T(12) + g2 / T(6);
  u[4 * su] = g0 / T(24) - g1 / T(12) + g2 / T(6);
  u[5 * su] = g2;
}

namespace cpu {

// Transformed filters (36, K, O) for w (O, K, 3, 3), fp32.
at::Tensor winograd_filter(const at::Tensor& w);

// out = act(conv3x3(cat(inputs), w, b, dilation=d, padding=d) [+ 0]) in fp32. Every input and `out` must
// have unit channel stride (channels_last, or a channel slice of a channels_last buffer). `filter` is
// winograd_filter(w) (callers that reuse a filter pass it once).
void winograd_conv3x3_out(const std::vector<at::Tensor>& inputs, const at::Tensor& filter,
                          const c10::optional<at::Tensor>& bias, int64_t dilation, Activation act, float slope,
                          at::Tensor& out);

bool winograd_applicable(const std::vector<at::Tensor>& inputs, const at::Tensor& w);

}  // namespace cpu
}  // namespace conv
}  // namespace apnt
