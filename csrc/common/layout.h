// Layout changes between NCHW and channels_last for float32 CPU tensors, as blocked 16 x 16 transposes
// (in_format of operands.h and the conv family use them).
// The Winograd transforms and the attention epilogues load 16 channels of a pixel as one vector, so NCHW
// inputs are converted once per call; gradients of NCHW inputs are computed channels_last and converted back
// (a strided 16-lane store per pixel in the epilogue cost ~4x the transpose here).
#pragma once
#include <ATen/ATen.h>

namespace apnt {

// t as a channels_last tensor: t itself when it already is, or when it is neither float32 nor contiguous
// (the transforms read any strides), else a transposed copy.
at::Tensor channels_last_fast(const at::Tensor& t);

// t in memory format `format`: t itself when it already has it; Contiguous from float32 channels_last (or a
// channel slice of it) by the blocked transpose; anything else through ATen.
at::Tensor to_format_fast(const at::Tensor& t, at::MemoryFormat format);

// dst = src for NCHW-contiguous float32 src and a channels_last dst (or a channel slice of one): the dense
// block's input written into its buffer. False (nothing written) for any other operands.
bool copy_nchw_into_pixel_major(const at::Tensor& src, at::Tensor& dst);

// dst = src for float32 src and dst that are both channels_last (or channel slices of one): a pixel's channels
// as one memcpy (the dense block's channels_last input into its buffer). False (nothing written) otherwise.
bool copy_pixel_major(const at::Tensor& src, at::Tensor& dst);

// dst[j * dst_row + i] = src[i * src_row + j] for i < rows, j < cols, by 16 x 16 blocks, on the calling thread
// (for kernels that gather tiles inside their own parallel region).
void transpose_matrix(const float* src, int64_t src_row, float* dst, int64_t dst_row, int64_t rows, int64_t cols);

}  // namespace apnt
