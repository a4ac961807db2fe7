// The dense family's ops (DESIGN §3.2): forward into one buffer, backward through one gradient buffer.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/memory.h"
#include "conv/conv.h"
#include "dense/dense.h"

namespace apnt {
namespace dense {

#ifdef APNT_WITH_CUDA
#define APNT_BY_DEVICE(t, fn, ...) ((t).is_cuda() ? cuda::fn(__VA_ARGS__) : cpu::fn(__VA_ARGS__))
#else
#define APNT_BY_DEVICE(t, fn, ...) cpu::fn(__VA_ARGS__)
#endif

void slice_copy(const at::Tensor& src, at::Tensor& buffer, int64_t c0, bool accumulate) {
  APNT_BY_DEVICE(buffer, slice_copy, src, buffer, c0, accumulate);
}
void bias_residual_(at::Tensor& out, const at::Tensor& bias, const at::Tensor& residual) {
  APNT_BY_DEVICE(out, bias_residual_, out, bias, residual);
}
at::Tensor slice_relu_grad(const at::Tensor& grad_buffer, const at::Tensor& buffer, int64_t c0, int64_t channels) {
  return APNT_BY_DEVICE(buffer, slice_relu_grad, grad_buffer, buffer, c0, channels);
}

namespace {

// (P, C) view of a channels_last (N, C, H, W) tensor, P = N*H*W pixels.
at::Tensor pixels(const at::Tensor& t) { return t.permute({0, 2, 3, 1}).reshape({-1, t.size(1)}); }

void check_inputs(const at::Tensor& x, at::TensorList weights, at::TensorList biases, const at::Tensor& fuse_weight,
                  const at::Tensor& fuse_bias, int64_t dilation) {
  check_nchw(x, "x");
  APNT_CHECK_ARG(!weights.empty() && weights.size() == biases.size(), "weights",
                 "expected L >= 1 weights and as many biases, got ", weights.size(), " and ", biases.size());
  const int64_t C = x.size(1), G = weights[0].size(0);
  for (size_t i = 0; i < weights.size(); ++i) {
    check_same_device_dtype(weights[i], x, "weights");
    APNT_CHECK_ARG(weights[i].dim() == 4 && weights[i].size(0) == G && weights[i].size(1) == C + int64_t(i) * G &&
                       weights[i].size(2) == 3 && weights[i].size(3) == 3,
                   "weights", "expected weights[", i, "] of shape (G, C+", i, "*G, 3, 3), got ", weights[i].sizes());
  }
  APNT_CHECK_ARG(fuse_weight.dim() == 4 && fuse_weight.size(0) == C &&
                     fuse_weight.size(1) == C + int64_t(weights.size()) * G,
                 "fuse_weight", "expected (C, C+L*G, 1, 1), got ", fuse_weight.sizes());
  APNT_CHECK_ARG(fuse_bias.numel() == C, "fuse_bias", "expected (C,), got ", fuse_bias.sizes());
  APNT_CHECK_ARG(dilation >= 1, "dilation", "expected >= 1, got ", dilation);
}

// Fills `buffer` (N, C+L*G, H, W, channels_last): x, then every layer's output in its slice.
void fill_buffer(const at::Tensor& x, at::TensorList weights, at::TensorList biases, int64_t dilation,
                 at::Tensor& buffer) {
  const int64_t C = x.size(1), G = weights[0].size(0);
  slice_copy(x, buffer, 0, false);
  for (size_t i = 0; i < weights.size(); ++i) {
    const int64_t c0 = C + int64_t(i) * G;
    const at::Tensor prefix = buffer.narrow(1, 0, c0);
    at::Tensor slice = buffer.narrow(1, c0, G);
    if (buffer.is_cpu() && cpu::layer_forward(prefix, weights[i], biases[i], dilation, slice)) continue;
    const at::Tensor h = conv::forward({prefix}, weights[i], biases[i], dilation, conv::Activation::kRelu, 0.0);
    slice_copy(h, buffer, c0, false);
  }
}

at::Tensor new_buffer(const at::Tensor& x, int64_t channels) {
  return empty_large({x.size(0), channels, x.size(2), x.size(3)},
                     x.options().memory_format(at::MemoryFormat::ChannelsLast));
}

// The block's own buffers (never returned to the caller; autograd may keep the forward one until backward).
at::Tensor new_workspace(const at::Tensor& x, int64_t channels) {
  return empty_workspace({x.size(0), channels, x.size(2), x.size(3)}, x.options(), at::MemoryFormat::ChannelsLast);
}

std::tuple<at::Tensor, at::Tensor> dense_block_fwd(const at::Tensor& x, at::TensorList weights,
                                                   at::TensorList biases, const at::Tensor& fuse_weight,
                                                   const at::Tensor& fuse_bias, int64_t dilation, bool checkpoint) {
  check_inputs(x, weights, biases, fuse_weight, fuse_bias, dilation);
  const int64_t C = x.size(1);
  at::Tensor buffer = new_workspace(x, fuse_weight.size(1));
  fill_buffer(x, weights, biases, dilation, buffer);
  // 1x1 fusion: one GEMM over the whole buffer, then bias and the residual (x = the buffer's first slice).
  at::Tensor out = new_buffer(x, C);
  if (!(x.is_cpu() && cpu::fuse_forward(buffer, fuse_weight, fuse_bias, out))) {
    at::Tensor out2d = out.permute({0, 2, 3, 1}).view({-1, C});
    at::mm_out(out2d, pixels(buffer), fuse_weight.reshape({C, -1}).t());
    bias_residual_(out, fuse_bias, buffer.narrow(1, 0, C));
  }
  // checkpoint=True keeps only x (an input): the buffer is rebuilt in backward.
  return {out, checkpoint ? at::empty({0}, x.options()) : buffer};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor, at::Tensor> dense_block_bwd(
    const at::Tensor& grad_out, const at::Tensor& x, at::TensorList weights, at::TensorList biases,
    const at::Tensor& fuse_weight, const at::Tensor& saved_buffer, int64_t dilation, bool checkpoint) {
  const int64_t C = x.size(1), G = weights[0].size(0), L = int64_t(weights.size()), total = fuse_weight.size(1);
  at::Tensor buffer = saved_buffer;
  if (checkpoint) {
    buffer = new_workspace(x, total);
    fill_buffer(x, weights, biases, dilation, buffer);
  }
  const at::Tensor g = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor g2d = pixels(g);
  const at::Tensor fw2d = fuse_weight.reshape({C, total});
  const at::Tensor grad_fuse_weight = at::mm(g2d.t(), pixels(buffer)).view(fuse_weight.sizes());
  const at::Tensor grad_fuse_bias = g2d.sum(0);
  // The shared gradient buffer: d out / d buffer from the fusion; every layer then adds its part to the prefix.
  at::Tensor grad_buffer = new_workspace(x, total);
  at::Tensor gb2d = grad_buffer.permute({0, 2, 3, 1}).view({-1, total});
  at::mm_out(gb2d, g2d, fw2d);
  std::vector<at::Tensor> grad_weights(L), grad_biases(L);
  for (int64_t i = L - 1; i >= 0; --i) {
    const int64_t c0 = C + i * G;
    const at::Tensor gz = slice_relu_grad(grad_buffer, buffer, c0, G);
    const at::Tensor prefix = buffer.narrow(1, 0, c0);
    at::Tensor grad_prefix = grad_buffer.narrow(1, 0, c0);
    const bool fast = gz.is_cpu() && conv::cpu::grad_input_3x3(gz, weights[i], dilation, grad_prefix).defined();
    conv::Grads gr = conv::backward(gz, {prefix}, weights[i], dilation, !fast, true, true);
    if (!fast) slice_copy(gr.inputs[0], grad_buffer, 0, true);
    grad_weights[i] = gr.weight.contiguous(weights[i].suggest_memory_format());
    grad_biases[i] = gr.bias;
  }
  at::Tensor grad_x = grad_buffer.narrow(1, 0, C) + g;  // + the residual path
  return {grad_x.contiguous(x.suggest_memory_format()), grad_weights, grad_biases,
          grad_fuse_weight.contiguous(fuse_weight.suggest_memory_format()), grad_fuse_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(apnt, CPU, m) {
  m.impl("dense_block_fwd", &dense_block_fwd);
  m.impl("dense_block_bwd", &dense_block_bwd);
}

#ifdef APNT_WITH_CUDA
TORCH_LIBRARY_IMPL(apnt, CUDA, m) {
  m.impl("dense_block_fwd", &dense_block_fwd);
  m.impl("dense_block_bwd", &dense_block_bwd);
}
#endif

}  // namespace dense
}  // namespace apnt
