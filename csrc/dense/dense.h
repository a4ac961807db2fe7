// Family `dense` (DESIGN §3.2): the dilated dense block on one preallocated channels_last buffer
// (N, C + L*G, H, W). Layer i reads the channel prefix [0, C + iG) in place and writes slice
// [C + iG, C + (i+1)G); backward fills one gradient buffer of the same shape the same way.
// These bodies are the bookkeeping and epilogue kernels around the convolutions.
#pragma once
#include <vector>

#include <ATen/core/Tensor.h>

#include "common/elementwise.h"

namespace apnt {
namespace dense {

// dst[p, c0 + c] (=|+=) src[p, c] for pixel p and c < channels; dst has pixel stride dst_stride.
template <typename scalar_t, typename acc_t>
struct SliceCopyBody : ElementwiseBody<SliceCopyBody<scalar_t, acc_t>> {
  const scalar_t* src;
  scalar_t* dst;
  int64_t channels, src_stride, dst_stride, c0;
  bool accumulate;
  APNT_HD void element(int64_t i) const {
    const int64_t p = i / channels, c = i % channels;
    scalar_t* d = dst + p * dst_stride + c0 + c;
    const acc_t v = acc_t(src[p * src_stride + c]);
    *d = scalar_t(accumulate ? acc_t(*d) + v : v);
  }
};

// out[p, c] += bias[c] + residual[p, c]: the 1x1 fusion's epilogue after its GEMM.
template <typename scalar_t, typename acc_t>
struct BiasResidualBody : ElementwiseBody<BiasResidualBody<scalar_t, acc_t>> {
  scalar_t* out;
  const scalar_t *bias, *residual;
  int64_t channels, residual_stride;
  APNT_HD void element(int64_t i) const {
    const int64_t p = i / channels, c = i % channels;
    out[i] = scalar_t(acc_t(out[i]) + acc_t(bias[c]) + acc_t(residual[p * residual_stride + c]));
  }
};

// gz[p, c] = grad[p, c0 + c] * relu'(h) read from the layer output h = buffer[p, c0 + c].
template <typename scalar_t, typename acc_t>
struct SliceReluGradBody : ElementwiseBody<SliceReluGradBody<scalar_t, acc_t>> {
  const scalar_t *grad, *buffer;
  scalar_t* gz;
  int64_t channels, stride, c0;
  APNT_HD void element(int64_t i) const {
    const int64_t p = i / channels, c = i % channels, j = p * stride + c0 + c;
    gz[i] = acc_t(buffer[j]) > acc_t(0) ? grad[j] : scalar_t(0);
  }
};

// Host side: per-device launchers of the bodies (channels_last tensors / views with unit channel stride).
#define APNT_DENSE_LAUNCHERS                                                                                \
  void slice_copy(const at::Tensor& src, at::Tensor& buffer, int64_t c0, bool accumulate);                 \
  void bias_residual_(at::Tensor& out, const at::Tensor& bias, const at::Tensor& residual);                 \
  at::Tensor slice_relu_grad(const at::Tensor& grad_buffer, const at::Tensor& buffer, int64_t c0, int64_t channels);
APNT_DENSE_LAUNCHERS
namespace cpu {
APNT_DENSE_LAUNCHERS
// Layer i straight into its buffer slice through Winograd (float32 3x3); false when that does not apply.
bool layer_forward(const at::Tensor& prefix, const at::Tensor& w, const at::Tensor& b, int64_t dilation,
                   at::Tensor& slice);
// The 1x1 fusion with bias and residual as one GEMM into `out` (float32); false when that does not apply.
bool fuse_forward(const at::Tensor& buffer, const at::Tensor& fuse_weight, const at::Tensor& fuse_bias,
                  at::Tensor& out);
}  // namespace cpu
#ifdef APNT_WITH_CUDA
namespace cuda {
APNT_DENSE_LAUNCHERS
}
#endif
#undef APNT_DENSE_LAUNCHERS

}  // namespace dense
}  // namespace apnt
