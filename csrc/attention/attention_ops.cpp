// The attention family's ops (DESIGN §3.1): convolutions from the conv family (no materialised cat on
// the CPU fast path: Winograd reads x and ref in place), bias + activation fused into their epilogues,
// then the gate / blend epilogue of attention.h.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "attention/attention_epilogue.h"
#include "common/checks.h"
#include "common/operands.h"
#include "conv/conv.h"

namespace apnt {
namespace attention {

#ifdef APNT_WITH_CUDA
#define APNT_BY_DEVICE(t, fn, ...) ((t).is_cuda() ? cuda::fn(__VA_ARGS__) : cpu::fn(__VA_ARGS__))
#else
#define APNT_BY_DEVICE(t, fn, ...) cpu::fn(__VA_ARGS__)
#endif

at::Tensor gate_forward(const at::Tensor& x, const at::Tensor& s) { return APNT_BY_DEVICE(s, gate_forward, x, s); }
std::tuple<at::Tensor, at::Tensor> gate_backward(const at::Tensor& g, const at::Tensor& g_att, const at::Tensor& x,
                                                 const at::Tensor& s) {
  return APNT_BY_DEVICE(s, gate_backward, g, g_att, x, s);
}
at::Tensor blend_forward(const at::Tensor& x, const at::Tensor& y, const at::Tensor& a) {
  return APNT_BY_DEVICE(a, blend_forward, x, y, a);
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> blend_backward(const at::Tensor& g, const at::Tensor& g_att,
                                                              const at::Tensor& x, const at::Tensor& y,
                                                              const at::Tensor& a) {
  return APNT_BY_DEVICE(a, blend_backward, g, g_att, x, y, a);
}

namespace {

using conv::Activation;

void check_pair(const at::Tensor& x, const at::Tensor& other, const char* name) {
  check_nchw(other, name);
  check_same_device_dtype(other, x, name);
  APNT_CHECK_ARG(other.size(0) == x.size(0) && other.size(2) == x.size(2) && other.size(3) == x.size(3), name,
                 "expected batch and spatial size of x ", x.sizes(), ", got ", other.sizes());
}


// A gradient in the layout of its input: as computed (channels_last, or a channel slice of it) for channels_last
// inputs, else transposed to NCHW (for a leaf, autograd would otherwise copy it into the leaf's layout, slowly).
at::Tensor layout_like(const at::Tensor& grad, const at::Tensor& input) {
  return input.suggest_memory_format() == at::MemoryFormat::ChannelsLast
             ? grad
             : to_format_fast(grad, at::MemoryFormat::Contiguous);
}

at::Tensor defined_or_null(const c10::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_gate_fwd(const at::Tensor& x, const at::Tensor& ref,
                                                                  const at::Tensor& w1, const at::Tensor& b1,
                                                                  const at::Tensor& w2, const at::Tensor& b2,
                                                                  double slope) {
  check_nchw(x, "x");
  check_pair(x, ref, "ref");
  check_odd_square_kernel(w1, "w1");
  check_odd_square_kernel(w2, "w2");
  APNT_CHECK_ARG(w1.size(1) == x.size(1) + ref.size(1), "w1", "expected (M, Cx+Cr, k, k), got ", w1.sizes());
  APNT_CHECK_ARG(w2.size(0) == x.size(1) && w2.size(1) == w1.size(0), "w2", "expected (Cx, M, k, k), got ",
                 w2.sizes());
  const at::Tensor hidden = conv::forward({x, ref}, w1, b1, 1, Activation::kLeakyRelu, slope);
  at::Tensor out, attention;
  if (x.is_cpu() && cpu::fused_gate(hidden, w2, b2, x, out, attention)) return {out, attention, hidden};
  attention = conv::forward({hidden}, w2, b2, 1, Activation::kSigmoid, 0.0);
  return {gate_forward(x, attention), attention, hidden};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_gate_bwd(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_attention, const at::Tensor& x,
    const at::Tensor& ref, const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& attention,
    const at::Tensor& hidden, double slope, std::array<bool, 6> mask) {
  const auto [gx_gate, gz2] = gate_backward(grad_out, defined_or_null(grad_attention), x, attention);
  const bool need_first = mask[0] || mask[1] || mask[2] || mask[3];
  const conv::Grads g2 = conv::backward(gz2, {hidden}, w2, 1, need_first, mask[4], mask[5]);
  conv::Grads g1;
  if (need_first) {
    const at::Tensor gz1 = conv::activation_backward(g2.inputs[0], hidden, Activation::kLeakyRelu, slope);
    g1 = conv::backward(gz1, {x, ref}, w1, 1, mask[0] || mask[1], mask[2], mask[3]);
  }
  at::Tensor gx, gref;
  if (mask[0]) gx = layout_like(gx_gate.add_(g1.inputs[0]), x);
  if (mask[1]) gref = layout_like(g1.inputs[1], ref);
  return {or_empty(gx, x), or_empty(gref, ref), or_empty(g1.weight, w1), bias_or_empty(g1.bias, x),
          or_empty(g2.weight, w2), bias_or_empty(g2.bias, x)};
}

std::tuple<at::Tensor, at::Tensor> attention_blend_fwd(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
                                                       const at::Tensor& b) {
  check_nchw(x, "x");
  check_pair(x, y, "y");
  APNT_CHECK_ARG(y.size(1) == x.size(1), "y", "expected ", x.size(1), " channels like x, got ", y.sizes());
  check_odd_square_kernel(w, "w");
  APNT_CHECK_ARG(w.size(0) == x.size(1) && w.size(1) == 2 * x.size(1), "w", "expected (C, 2C, k, k), got ",
                 w.sizes());
  at::Tensor out, attention;
  if (x.is_cpu() && cpu::fused_blend(x, y, w, b, out, attention)) return {out, attention};
  attention = conv::forward({x, y}, w, b, 1, Activation::kSigmoid, 0.0);
  return {blend_forward(x, y, attention), attention};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_blend_bwd(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_attention, const at::Tensor& x,
    const at::Tensor& y, const at::Tensor& w, const at::Tensor& attention, std::array<bool, 4> mask) {
  const auto [gx_direct, gy_direct, gz] =
      blend_backward(grad_out, defined_or_null(grad_attention), x, y, attention);
  const conv::Grads g = conv::backward(gz, {x, y}, w, 1, mask[0] || mask[1], mask[2], mask[3]);
  at::Tensor gx, gy;
  if (mask[0]) gx = layout_like(gx_direct.add_(g.inputs[0]), x);
  if (mask[1]) gy = layout_like(gy_direct.add_(g.inputs[1]), y);
  return {or_empty(gx, x), or_empty(gy, y), or_empty(g.weight, w), bias_or_empty(g.bias, x)};
}

}  // namespace

TORCH_LIBRARY_IMPL(apnt, CPU, m) {
  m.impl("attention_gate_fwd", &attention_gate_fwd);
  m.impl("attention_gate_bwd", &attention_gate_bwd);
  m.impl("attention_blend_fwd", &attention_blend_fwd);
  m.impl("attention_blend_bwd", &attention_blend_bwd);
}

#ifdef APNT_WITH_CUDA
TORCH_LIBRARY_IMPL(apnt, CUDA, m) {
  m.impl("attention_gate_fwd", &attention_gate_fwd);
  m.impl("attention_gate_bwd", &attention_gate_bwd);
  m.impl("attention_blend_fwd", &attention_blend_fwd);
  m.impl("attention_blend_bwd", &attention_blend_bwd);
}
#endif

}  // namespace attention
}  // namespace apnt
