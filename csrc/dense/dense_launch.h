// Host code of the dense-block bodies, written once for any launcher (CpuLauncher, CudaLauncher).
#pragma once
#include "common/operands.h"
#include "common/memory.h"
#include "dense/dense.h"

namespace apnt {
namespace dense {

// Pixel stride of a channels_last tensor or channel-slice view of one (unit channel stride).
inline int64_t pixel_stride(const at::Tensor& t) {
  TORCH_INTERNAL_ASSERT(t.stride(1) == 1 || t.size(1) == 1, "expected unit channel stride");
  return t.stride(3);
}

template <typename Launch>
void slice_copy_impl(const at::Tensor& src_any, at::Tensor& buffer, int64_t c0, bool accumulate, Launch launch) {
  const at::Tensor src = in_format(src_any, at::MemoryFormat::ChannelsLast);
  APNT_DISPATCH_FLOATING(src.scalar_type(), "apnt_dense_slice_copy", [&] {
    SliceCopyBody<scalar_t, at::opmath_type<scalar_t>> body;
    body.channels = src.size(1);
    body.n = src.numel();
    body.src = src.data_ptr<scalar_t>();
    body.src_stride = src.size(1);
    body.dst = buffer.data_ptr<scalar_t>();
    body.dst_stride = pixel_stride(buffer);
    body.c0 = c0;
    body.accumulate = accumulate;
    launch(body, body.n);
  });
}

template <typename Launch>
void bias_residual_impl(at::Tensor& out, const at::Tensor& bias, const at::Tensor& residual, Launch launch) {
  TORCH_INTERNAL_ASSERT(out.is_contiguous(at::MemoryFormat::ChannelsLast));
  const at::Tensor b = bias.contiguous();
  APNT_DISPATCH_FLOATING(out.scalar_type(), "apnt_dense_bias_residual", [&] {
    BiasResidualBody<scalar_t, at::opmath_type<scalar_t>> body;
    body.n = out.numel();
    body.out = out.data_ptr<scalar_t>();
    body.bias = b.data_ptr<scalar_t>();
    body.residual = residual.data_ptr<scalar_t>();
    body.channels = out.size(1);
    body.residual_stride = pixel_stride(residual);
    launch(body, body.n);
  });
}

template <typename Launch>
at::Tensor slice_relu_grad_impl(const at::Tensor& grad_buffer, const at::Tensor& buffer, int64_t c0,
                                int64_t channels, Launch launch) {
  at::Tensor gz = empty_large({buffer.size(0), channels, buffer.size(2), buffer.size(3)},
                            buffer.options().memory_format(at::MemoryFormat::ChannelsLast));
  APNT_DISPATCH_FLOATING(buffer.scalar_type(), "apnt_dense_relu_grad", [&] {
    SliceReluGradBody<scalar_t, at::opmath_type<scalar_t>> body;
    body.n = gz.numel();
    body.grad = grad_buffer.data_ptr<scalar_t>();
    body.buffer = buffer.data_ptr<scalar_t>();
    body.gz = gz.data_ptr<scalar_t>();
    body.channels = channels;
    body.stride = buffer.size(1);
    body.c0 = c0;
    launch(body, body.n);
  });
  return gz;
}

}  // namespace dense
}  // namespace apnt
