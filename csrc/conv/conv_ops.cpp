// The conv family's ops, device-agnostic: engine choice per device, backward through the same engines.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/memory.h"
#include "common/operands.h"
#include "conv/conv.h"
#include "conv/winograd.h"

namespace apnt {
namespace conv {

Activation parse_activation(std::string_view name) {
  if (name == "none") return Activation::kNone;
  if (name == "relu") return Activation::kRelu;
  if (name == "leaky_relu") return Activation::kLeakyRelu;
  if (name == "sigmoid") return Activation::kSigmoid;
  TORCH_CHECK_VALUE(false, "apnt: argument 'activation': expected one of none, relu, leaky_relu, sigmoid; got '",
                    std::string(name), "'");
}

void activation_forward_(at::Tensor& y, Activation act, double slope) {
#ifdef APNT_WITH_CUDA
  if (y.is_cuda()) return cuda::activation_forward_(y, act, slope);
#endif
  cpu::activation_forward_(y, act, slope);
}

at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& y, Activation act, double slope) {
#ifdef APNT_WITH_CUDA
  if (y.is_cuda()) return cuda::activation_backward(grad, y, act, slope);
#endif
  return cpu::activation_backward(grad, y, act, slope);
}

namespace {
at::Tensor concat(const std::vector<at::Tensor>& inputs) {
  return inputs.size() == 1 ? inputs.front() : at::cat(inputs, 1);
}

// The concatenation in channels_last, written once (oneDNN's weight gradient is fastest with both
// operands channels_last; at::cat of NCHW inputs would give NCHW and need a second copy).
at::Tensor concat_channels_last(const std::vector<at::Tensor>& inputs) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  if (inputs.size() == 1) return inputs.front().contiguous(cl);
  int64_t channels = 0;
  for (const auto& t : inputs) channels += t.size(1);
  const at::Tensor& x = inputs.front();
  at::Tensor out = empty_large({x.size(0), channels, x.size(2), x.size(3)}, x.options().memory_format(cl));
  int64_t c0 = 0;
  for (const auto& t : inputs) {
    out.narrow(1, c0, t.size(1)).copy_(t);
    c0 += t.size(1);
  }
  return out;
}
}  // namespace

at::Tensor forward(const std::vector<at::Tensor>& inputs, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                   int64_t dilation, Activation act, double slope) {
  if (inputs.front().is_cpu()) return cpu::forward(inputs, w, b, dilation, act, slope);
  // GPU: cuDNN through ATen (bias fused there), then our activation epilogue in place.
  const int64_t pad = dilation * (w.size(2) / 2);
  at::Tensor out = at::convolution(concat(inputs), w, b, {1, 1}, {pad, pad}, {dilation, dilation}, false, {0, 0}, 1);
  out = out.contiguous(at::MemoryFormat::ChannelsLast);
  activation_forward_(out, act, slope);
  return out;
}

Grads backward(const at::Tensor& grad_z, const std::vector<at::Tensor>& inputs, const at::Tensor& w,
               int64_t dilation, bool need_inputs, bool need_weight, bool need_bias) {
  Grads g;
  const int64_t pad = dilation * (w.size(2) / 2);
  at::Tensor grad_x;
  if (need_inputs && grad_z.is_cpu()) {
    // Winograd when it applies, in the layout of a lone input (the gradient returned must have it anyway).
    const auto format = inputs.size() == 1 ? inputs[0].suggest_memory_format() : at::MemoryFormat::ChannelsLast;
    grad_x = cpu::grad_input_3x3(grad_z, w, dilation, at::Tensor(), format);
    need_inputs = !grad_x.defined();
  }
  if (need_weight && grad_z.is_cpu()) {
    std::vector<at::Tensor> operands = inputs;
    operands.push_back(grad_z);
    if (cpu::winograd_applicable(operands, w)) {  // the adjoint of the forward's Winograd, inputs read in place
      g.weight = cpu::winograd_grad_weight(inputs, grad_z, dilation);
      need_weight = false;
    }
  }
  if (need_inputs || need_weight) {
    // The concatenation exists only here, for the weight gradient: nothing holds it after backward.
    const at::Tensor x = concat_channels_last(inputs);
    const at::Tensor gz = grad_z.contiguous(at::MemoryFormat::ChannelsLast);
    auto r = at::convolution_backward(gz, x, w, c10::nullopt, {1, 1}, {pad, pad}, {dilation, dilation}, false,
                                      {0, 0}, 1, {need_inputs, need_weight, false});
    if (need_inputs) grad_x = std::get<0>(r);
    if (need_weight) g.weight = std::get<1>(r);
  }
  if (need_bias) g.bias = grad_z.sum({0, 2, 3});
  if (grad_x.defined()) {
    int64_t c0 = 0;
    for (const auto& x : inputs) {
      g.inputs.push_back(grad_x.narrow(1, c0, x.size(1)));
      c0 += x.size(1);
    }
  }
  return g;
}

namespace {


at::Tensor conv2d_fwd(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                      int64_t dilation, c10::string_view activation, double negative_slope) {
  check_nchw(x, "x");
  check_odd_square_kernel(w, "w");
  check_same_device_dtype(w, x, "w");
  APNT_CHECK_ARG(w.size(1) == x.size(1), "w", "expected ", x.size(1), " input channels, got shape ", w.sizes());
  APNT_CHECK_ARG(dilation >= 1, "dilation", "expected >= 1, got ", dilation);
  return forward({x}, w, b, dilation, parse_activation(activation), negative_slope);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_bwd(const at::Tensor& grad_out, const at::Tensor& x,
                                                          const at::Tensor& w, const at::Tensor& out,
                                                          int64_t dilation, c10::string_view activation,
                                                          double negative_slope, std::array<bool, 3> mask) {
  const at::Tensor gz = activation_backward(grad_out, out, parse_activation(activation), negative_slope);
  Grads g = backward(gz, {x}, w, dilation, mask[0], mask[1], mask[2]);
  return {or_empty(mask[0] ? g.inputs[0] : at::Tensor(), x), or_empty(g.weight, w), bias_or_empty(g.bias, x)};
}

}  // namespace

TORCH_LIBRARY_IMPL(apnt, CPU, m) {
  m.impl("conv2d_fwd", &conv2d_fwd);
  m.impl("conv2d_bwd", &conv2d_bwd);
}

#ifdef APNT_WITH_CUDA
TORCH_LIBRARY_IMPL(apnt, CUDA, m) {
  m.impl("conv2d_fwd", &conv2d_fwd);
  m.impl("conv2d_bwd", &conv2d_bwd);
}
#endif

}  // namespace conv
}  // namespace apnt
