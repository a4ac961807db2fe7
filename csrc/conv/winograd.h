// Winograd F(4x4, 3x3) (Lavin & Gray 2016, points 0, ±1, ±2, ∞): a 6x6 input tile and a 3x3 filter give a
// 4x4 output tile with 36 multiplies per (input, output) channel pair instead of 144. The 36 products
// across channels are 36 GEMMs, run through at::bmm. Dilation d works on the d*d interleaved sub-lattices:
// output (py + d*r, px + d*c) only reads inputs of the same sub-lattice, where the convolution is undilated.
#pragma once
#include "common/layout.h"
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

// The adjoint (transpose) of winograd_output_1d, for the weight gradient: m = A y (6 from the 4 of its y). The
// filter transform's adjoint is the transpose of its matrix (winograd_cpu.cpp).
template <typename T>
APNT_HD void winograd_output_adjoint_1d(const T* y, int s, T* m, int sm) {
  const T y0 = y[0], y1 = y[s], y2 = y[2 * s], y3 = y[3 * s];
  const T p = y0 + y2, q = y1 + y3, r = y0 + 4.f * y2, t = 2.f * y1 + 8.f * y3;
  m[0] = y0;
  m[sm] = p + q;
  m[2 * sm] = p - q;
  m[3 * sm] = r + t;
  m[4 * sm] = r - t;
  m[5 * sm] = y3;
}


namespace cpu {

// Lanes values never cross a library boundary: the ABI note about 64-byte vectors does not apply.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

constexpr int kLanes = 16;  // channels transformed together
// kLanes channels as one value: the 1-D transforms above then run on whole vectors.
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));

// Loads / stores `lanes` channels spaced `stride` apart (stride 1: channels_last; HW: NCHW).
inline Lanes load_lanes(const float* p, int64_t stride, int lanes) {
  Lanes v = {};
  if (stride == 1 && lanes == kLanes) {
    __builtin_memcpy(&v, p, sizeof(Lanes));
  } else {
    for (int l = 0; l < lanes; ++l) v[l] = p[l * stride];
  }
  return v;
}

inline void store_lanes(float* p, int64_t stride, const Lanes& v, int lanes) {
  if (stride == 1 && lanes == kLanes) {
    __builtin_memcpy(p, &v, sizeof(Lanes));
  } else {
    for (int l = 0; l < lanes; ++l) p[l * stride] = v[l];
  }
}

// A float32 (N, C, H, W) tensor with any strides: element (n, c, y, x) at data + n*sn + c*sc + y*sy + x*sx.
struct Plane {
  float* data;
  int64_t channels, sn, sc, sy, sx;
  float* at(int64_t n, int64_t c, int64_t y, int64_t x) const { return data + n * sn + c * sc + y * sy + x * sx; }
};
Plane plane_of(const at::Tensor& t);

// The valid output positions of one 4x4 tile: rows y[0..rows), columns x[0..cols) of image n.
struct OutputTile {
  int64_t n, y[4], x[4];
  int rows, cols;
};

// What happens to the convolution results (bias included) of one tile and kLanes output channels:
// z[i * 4 + j] holds channels [o0, o0 + lanes) at (y[i], x[j]). One virtual call per tile and channel
// block, so an epilogue may be as rich as the attention gate without slowing the transforms.
struct TileEpilogue {
  virtual ~TileEpilogue() = default;
  virtual void apply(const OutputTile& tile, int64_t o0, int lanes, Lanes* z) const = 0;
};

// Applies the activation and stores into `out` (or adds to it: gradients summed into a shared buffer).
struct ActivationEpilogue : TileEpilogue {
  Plane out;
  Activation act;
  float slope;
  bool accumulate;
  ActivationEpilogue(const Plane& o, Activation a, float s, bool acc = false)
      : out(o), act(a), slope(s), accumulate(acc) {}
  void apply(const OutputTile& tile, int64_t o0, int lanes, Lanes* z) const override;
};
void activate_lanes(Lanes& z, Activation act, float slope);

#pragma GCC diagnostic pop

// Transformed filters (36, K, O) for w (O, K, 3, 3), fp32. for_grad_input: those of the convolution that
// gives d/d input, i.e. of w flipped in space and transposed in channels: (36, O, K).
at::Tensor winograd_filter(const at::Tensor& w, bool for_grad_input = false);

// conv3x3(cat(inputs), w, b, dilation=d, padding=d) in fp32 for an (N, O, H, W) output, handed tile by
// tile to `epilogue`. Inputs may have any strides (no copies; channels_last reads fastest).
void winograd_conv3x3(const std::vector<at::Tensor>& inputs, const at::Tensor& filter,
                      const c10::optional<at::Tensor>& bias, int64_t dilation, const TileEpilogue& epilogue);

// d loss / d w (O, K, 3, 3) of conv3x3(cat(inputs), w, dilation=d, padding=d) given grad_z (N, O, H, W), all
// fp32: the adjoint of the forward transforms, dU[p] = sum over tiles of V[p]^T (A dY A^T)[p], w = G^T dU G.
at::Tensor winograd_grad_weight(const std::vector<at::Tensor>& inputs, const at::Tensor& grad_z, int64_t dilation);

bool winograd_applicable(const std::vector<at::Tensor>& inputs, const at::Tensor& w);

}  // namespace cpu
}  // namespace conv
}  // namespace apnt
