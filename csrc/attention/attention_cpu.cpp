// CPU launchers of the attention epilogues (bodies in attention.h, host code in attention_epilogue.h).
#pragma GCC diagnostic ignored "-Wpsabi"  // Lanes values stay inside this library (winograd.h)

#include "attention/attention_epilogue.h"
#include "common/grid_cpu.h"
#include "common/memory.h"
#include "conv/winograd.h"


namespace apnt {
namespace attention {
namespace cpu {

at::Tensor gate_forward(const at::Tensor& x, const at::Tensor& s) { return gate_forward_impl(x, s, CpuLauncher{}); }

std::tuple<at::Tensor, at::Tensor> gate_backward(const at::Tensor& g, const at::Tensor& g_att, const at::Tensor& x,
                                                 const at::Tensor& s) {
  return gate_backward_impl(g, g_att, x, s, CpuLauncher{});
}

at::Tensor blend_forward(const at::Tensor& x, const at::Tensor& y, const at::Tensor& a) {
  return blend_forward_impl(x, y, a, CpuLauncher{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> blend_backward(const at::Tensor& g, const at::Tensor& g_att,
                                                              const at::Tensor& x, const at::Tensor& y,
                                                              const at::Tensor& a) {
  return blend_backward_impl(g, g_att, x, y, a, CpuLauncher{});
}

namespace {

using conv::Activation;
using conv::cpu::Lanes;
using conv::cpu::OutputTile;
using conv::cpu::Plane;

// attention = sigmoid(z) and out = gate_value(x, attention), straight from the Winograd tile.
struct GateEpilogue : conv::cpu::TileEpilogue {
  Plane x, attention, out;
  GateEpilogue(Plane x_, Plane a_, Plane o_) : x(x_), attention(a_), out(o_) {}
  void apply(const OutputTile& t, int64_t o0, int lanes, Lanes* z) const override {
    for (int i = 0; i < t.rows; ++i)
      for (int j = 0; j < t.cols; ++j) {
        Lanes s = z[i * 4 + j];
        conv::cpu::activate_lanes(s, Activation::kSigmoid, 0.f);
        const Lanes xv = conv::cpu::load_lanes(x.at(t.n, o0, t.y[i], t.x[j]), x.sc, lanes);
        conv::cpu::store_lanes(attention.at(t.n, o0, t.y[i], t.x[j]), attention.sc, s, lanes);
        conv::cpu::store_lanes(out.at(t.n, o0, t.y[i], t.x[j]), out.sc, gate_value(xv, s), lanes);
      }
  }
};

struct BlendEpilogue : conv::cpu::TileEpilogue {
  Plane x, y, attention, out;
  BlendEpilogue(Plane x_, Plane y_, Plane a_, Plane o_) : x(x_), y(y_), attention(a_), out(o_) {}
  void apply(const OutputTile& t, int64_t o0, int lanes, Lanes* z) const override {
    for (int i = 0; i < t.rows; ++i)
      for (int j = 0; j < t.cols; ++j) {
        Lanes a = z[i * 4 + j];
        conv::cpu::activate_lanes(a, Activation::kSigmoid, 0.f);
        const Lanes xv = conv::cpu::load_lanes(x.at(t.n, o0, t.y[i], t.x[j]), x.sc, lanes);
        const Lanes yv = conv::cpu::load_lanes(y.at(t.n, o0, t.y[i], t.x[j]), y.sc, lanes);
        conv::cpu::store_lanes(attention.at(t.n, o0, t.y[i], t.x[j]), attention.sc, a, lanes);
        conv::cpu::store_lanes(out.at(t.n, o0, t.y[i], t.x[j]), out.sc, blend_value(xv, yv, a), lanes);
      }
  }
};

// Under grid emulation the CPU runs what the CUDA launcher runs (convolution, then the epilogue body).
bool fused_applies(const std::vector<at::Tensor>& inputs, const at::Tensor& w) {
  return !grid_emulation_enabled() && conv::cpu::winograd_applicable(inputs, w);
}

at::Tensor empty_cl(const at::Tensor& like) {
  return empty_large(like.sizes(), like.options().memory_format(at::MemoryFormat::ChannelsLast));
}

}  // namespace

bool fused_gate(const at::Tensor& hidden, const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& x_in,
                at::Tensor& out, at::Tensor& attention) {
  if (!fused_applies({hidden, x_in}, w2)) return false;
  const at::Tensor x = channels_last_fast(x_in);  // the epilogue then loads 16 channels at once
  attention = empty_cl(x);
  out = empty_cl(x);
  conv::cpu::winograd_conv3x3({hidden}, conv::cpu::winograd_filter(w2), b2, 1,
                              GateEpilogue(conv::cpu::plane_of(x), conv::cpu::plane_of(attention),
                                           conv::cpu::plane_of(out)));
  return true;
}

bool fused_blend(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& w, const at::Tensor& b,
                 at::Tensor& out, at::Tensor& attention) {
  if (!fused_applies({x_in, y_in}, w)) return false;
  // Converted once, read by both the input transform and the epilogue.
  const at::Tensor x = channels_last_fast(x_in), y = channels_last_fast(y_in);
  attention = empty_cl(x);
  out = empty_cl(x);
  conv::cpu::winograd_conv3x3({x, y}, conv::cpu::winograd_filter(w), b, 1,
                              BlendEpilogue(conv::cpu::plane_of(x), conv::cpu::plane_of(y),
                                            conv::cpu::plane_of(attention), conv::cpu::plane_of(out)));
  return true;
}

}  // namespace cpu
}  // namespace attention
}  // namespace apnt
