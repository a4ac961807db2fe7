// Layout changes between NCHW and channels_last for float32 CPU tensors, as blocked 16 x 16 transposes.
// The Winograd transforms and the attention epilogues load 16 channels of a pixel as one vector, so NCHW
// inputs are converted once per call; gradients of NCHW inputs are computed channels_last and converted back
// (a strided 16-lane store per pixel in the epilogue cost ~4x the transpose here).
#pragma once
#include <ATen/ATen.h>

namespace apnt {
namespace conv {
namespace cpu {

// t as a channels_last tensor: t itself when it already is, or when it is neither float32 nor contiguous
// (the transforms read any strides), else a transposed copy.
at::Tensor channels_last_fast(const at::Tensor& t);

// t (float32, channels_last) in memory format `format`: t itself when it already has it; Contiguous by the
// blocked transpose, any other format through ATen.
at::Tensor to_format_fast(const at::Tensor& t, at::MemoryFormat format);

}  // namespace cpu
}  // namespace conv
}  // namespace apnt
