// CPU launchers of the conv family: the activation epilogue bodies, and the choice of convolution engine
// (Winograd F(4x4,3x3) for fp32 3x3, oneDNN with a fused post-op for other fp32/bf16, ATen otherwise).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cstring>
#include <type_traits>
#include <ATen/core/dispatch/Dispatcher.h>

#include "common/grid_cpu.h"
#include "common/memory.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vectors stay inside this file
#include "conv/conv_epilogue.h"
#include "conv/winograd.h"

namespace apnt {
namespace conv {
namespace cpu {
namespace {

const char* onednn_attr(Activation act) {
  switch (act) {
    case Activation::kRelu: return "relu";
    case Activation::kLeakyRelu: return "leaky_relu";
    case Activation::kSigmoid: return "sigmoid";
    default: return "none";
  }
}

// mkldnn::_convolution_pointwise (oneDNN with the activation as a post-op). Called boxed: oneDNN is
// reachable only through ATen's dispatcher (torch exports no dnnl_* symbols).
at::Tensor onednn_conv(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b, int64_t d,
                       Activation act, double slope) {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_convolution_pointwise", "");
  const int64_t pad = d * (w.size(2) / 2);
  c10::List<c10::optional<at::Scalar>> scalars;
  if (act == Activation::kLeakyRelu) scalars.push_back(at::Scalar(slope));
  torch::jit::Stack stack;
  stack.reserve(10);
  stack.emplace_back(x);
  stack.emplace_back(w);
  // oneDNN reads the bias as a dense vector: a strided one (a slice of a longer vector) must be packed.
  stack.emplace_back(b.has_value() ? c10::IValue(b->contiguous()) : c10::IValue());
  stack.emplace_back(std::vector<int64_t>{pad, pad});
  stack.emplace_back(std::vector<int64_t>{1, 1});
  stack.emplace_back(std::vector<int64_t>{d, d});
  stack.emplace_back(int64_t(1));
  stack.emplace_back(std::string(onednn_attr(act)));
  stack.emplace_back(scalars);
  stack.emplace_back(std::string(""));
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

at::Tensor channels_last_view(const at::Tensor& t) {
  return t.stride(1) == 1 ? t : t.contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace

void activation_forward_(at::Tensor& y, Activation act, double slope) {
  activation_forward_impl(y, act, slope, CpuLauncher{});
}

namespace {
// gz = g * act'(z) for float32 with the activation a compile-time constant. The generic body branches per
// element on the sign (a mispredict every other pixel of a random mask: 10 ms for 4M relu gradients here).
template <Activation kAct, typename y_t>
void activation_grad_loop(const float* __restrict g, const y_t* __restrict y, float* __restrict gz, int64_t n,
                          float slope) {
  at::parallel_for(0, n, 16384, [=](int64_t begin, int64_t end) {
    if constexpr (kAct == Activation::kRelu || kAct == Activation::kLeakyRelu) {
      // Where y > 0 (the saved bool mask, or the float output itself), as bit operations: GCC vectorizes
      // these (it keeps a select a branch). relu: g's bits where the mask is on, +0 elsewhere (not 0 * g:
      // F.relu gives 0 for Inf/NaN g); leaky_relu: g times exactly 1 or slope.
      using FloatBits = uint32_t;  // bit pattern of a float, not an index
      FloatBits slope_bits, one_bits, g_bits;
      const float one = 1.f;
      std::memcpy(&slope_bits, &slope, 4);
      std::memcpy(&one_bits, &one, 4);
      for (int64_t i = begin; i < end; ++i) {
        bool positive;
        if constexpr (std::is_same_v<y_t, bool>) positive = y[i];
        else positive = y[i] > 0.f;
        const FloatBits on = FloatBits(0) - FloatBits(positive);
        float r;
        if constexpr (kAct == Activation::kRelu) {
          std::memcpy(&g_bits, g + i, 4);
          g_bits &= on;
          std::memcpy(&r, &g_bits, 4);
        } else {
          const FloatBits f_bits = (one_bits & on) | (slope_bits & ~on);
          std::memcpy(&r, &f_bits, 4);
          r *= g[i];
        }
        gz[i] = r;
      }
    } else {
      for (int64_t i = begin; i < end; ++i) gz[i] = activation_grad_from_output<float>(g[i], y[i], kAct, slope);
    }
  });
}

template <typename y_t>
void activation_grad_float(const float* g, const y_t* y, float* gz, int64_t n, Activation act, float slope) {
  switch (act) {
    case Activation::kRelu: return activation_grad_loop<Activation::kRelu>(g, y, gz, n, slope);
    case Activation::kLeakyRelu: return activation_grad_loop<Activation::kLeakyRelu>(g, y, gz, n, slope);
    case Activation::kSigmoid: return activation_grad_loop<Activation::kSigmoid>(g, y, gz, n, slope);
    default: return activation_grad_loop<Activation::kNone>(g, y, gz, n, slope);
  }
}
}  // namespace

at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& y, Activation act, double slope) {
  const bool mask = y.scalar_type() == at::kBool;
  if (grid_emulation_enabled() || act == Activation::kNone || grad.scalar_type() != at::kFloat ||
      !(mask || y.scalar_type() == at::kFloat) || (mask && act == Activation::kSigmoid))
    return activation_backward_impl(grad, y, act, slope, CpuLauncher{});  // also where the checks live
  const auto fmt = at::MemoryFormat::ChannelsLast;
  const at::Tensor gc = channels_last_fast(grad).contiguous(fmt), yc = y.contiguous(fmt);
  at::Tensor gz = empty_large_like(gc, fmt);
  if (mask)
    activation_grad_float(gc.data_ptr<float>(), yc.data_ptr<bool>(), gz.data_ptr<float>(), gz.numel(), act,
                          float(slope));
  else
    activation_grad_float(gc.data_ptr<float>(), yc.data_ptr<float>(), gz.data_ptr<float>(), gz.numel(), act,
                          float(slope));
  return gz;
}

at::Tensor forward(const std::vector<at::Tensor>& inputs, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                   int64_t dilation, Activation act, double slope) {
  const at::Tensor& x0 = inputs.front();
  // Under grid emulation the CPU runs what the CUDA launcher runs: ATen convolution, then the epilogue body.
  if (grid_emulation_enabled()) {
    const int64_t pad = dilation * (w.size(2) / 2);
    at::Tensor out = at::convolution(inputs.size() == 1 ? x0 : at::cat(inputs, 1), w, b, {1, 1}, {pad, pad},
                                     {dilation, dilation}, false, {0, 0}, 1)
                         .contiguous(at::MemoryFormat::ChannelsLast);
    cpu::activation_forward_(out, act, slope);
    return out;
  }
  if (winograd_applicable(inputs, w)) {
    at::Tensor out = empty_large({x0.size(0), w.size(0), x0.size(2), x0.size(3)},
                               x0.options().memory_format(at::MemoryFormat::ChannelsLast));
    winograd_conv3x3(inputs, winograd_filter(w), b, dilation, ActivationEpilogue(plane_of(out), act, float(slope)));
    return out;
  }
  const at::Tensor x = inputs.size() == 1 ? x0 : at::cat(inputs, 1);
  const auto dtype = x.scalar_type();
  if (dtype == at::kFloat || dtype == at::kBFloat16) {
    // oneDNN's relu post-op (alpha = 0) maps NaN to 0, and so does its sigmoid post-op in some kernels (a 1x1
    // map with a 5x5 filter); F.relu and torch.sigmoid keep NaN. Those run as our epilogue.
    const bool hides_nan = act == Activation::kRelu || act == Activation::kSigmoid ||
                           (act == Activation::kLeakyRelu && slope == 0.0);
    at::Tensor out = onednn_conv(channels_last_view(x), w.contiguous(), b, dilation,
                                 hides_nan ? Activation::kNone : act, slope)
                         .contiguous(at::MemoryFormat::ChannelsLast);
    if (hides_nan) cpu::activation_forward_(out, act, slope);
    return out;
  }
  // fp64 and fp16: oneDNN's fused path rejects them on this CPU; ATen convolution + our epilogue.
  const int64_t pad = dilation * (w.size(2) / 2);
  at::Tensor out = at::convolution(x, w, b, {1, 1}, {pad, pad}, {dilation, dilation}, false, {0, 0}, 1);
  out = out.contiguous(at::MemoryFormat::ChannelsLast);
  cpu::activation_forward_(out, act, slope);
  return out;
}

at::Tensor grad_input_3x3(const at::Tensor& grad_z, const at::Tensor& w, int64_t dilation,
                          const at::Tensor& accumulate_into, at::MemoryFormat format) {
  if (!winograd_applicable({grad_z}, w)) return at::Tensor();
  // d/dx of a stride-1 "same" convolution is the same convolution of grad_z with the flipped, transposed filter.
  // Computed channels_last (whole-vector stores), then converted to `format` (layout.h).
  const bool accumulate = accumulate_into.defined();
  at::Tensor gx = accumulate ? accumulate_into
                             : empty_large({grad_z.size(0), w.size(1), grad_z.size(2), grad_z.size(3)},
                                         grad_z.options().memory_format(at::MemoryFormat::ChannelsLast));
  winograd_conv3x3({grad_z}, winograd_filter(w, /*for_grad_input=*/true), c10::nullopt, dilation,
                   ActivationEpilogue(plane_of(gx), Activation::kNone, 0.f, accumulate));
  return accumulate ? gx : to_format_fast(gx, format);
}

}  // namespace cpu
}  // namespace conv
}  // namespace apnt
