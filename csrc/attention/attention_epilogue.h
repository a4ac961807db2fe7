// Host code of the attention epilogues, written once for any launcher (CpuLauncher, CudaLauncher).
// All operands are brought to channels_last (the format every forward output of apnt has), so one flat
// index addresses them all.
#pragma once
#include <tuple>

#include "attention/attention.h"
#include "common/operands.h"
#include "common/memory.h"

namespace apnt {
namespace attention {

template <typename Launch>
at::Tensor gate_forward_impl(const at::Tensor& x, const at::Tensor& s, Launch launch) {
  const auto fmt = at::MemoryFormat::ChannelsLast;
  const at::Tensor xc = in_format(x, fmt), sc = in_format(s, fmt);
  at::Tensor out = empty_large_like(sc, fmt);
  APNT_DISPATCH_FLOATING(s.scalar_type(), "apnt_gate_forward", [&] {
    GateForwardBody<scalar_t, at::opmath_type<scalar_t>> body;
    body.n = out.numel();
    body.x = xc.data_ptr<scalar_t>();
    body.s = sc.data_ptr<scalar_t>();
    body.out = out.data_ptr<scalar_t>();
    launch(body, body.n);
  });
  return out;
}

template <typename Launch>
std::tuple<at::Tensor, at::Tensor> gate_backward_impl(const at::Tensor& g, const at::Tensor& g_att,
                                                      const at::Tensor& x, const at::Tensor& s, Launch launch) {
  const auto fmt = at::MemoryFormat::ChannelsLast;
  const at::Tensor gc = in_format(g, fmt), xc = in_format(x, fmt), sc = in_format(s, fmt);
  const at::Tensor gac = g_att.defined() ? in_format(g_att, fmt) : at::Tensor();
  at::Tensor gx = empty_large_like(sc, fmt), gz = empty_large_like(sc, fmt);
  APNT_DISPATCH_FLOATING(s.scalar_type(), "apnt_gate_backward", [&] {
    GateBackwardBody<scalar_t, at::opmath_type<scalar_t>> body;
    body.n = gx.numel();
    body.g = gc.data_ptr<scalar_t>();
    body.g_att = ptr_or_null<scalar_t>(gac);
    body.x = xc.data_ptr<scalar_t>();
    body.s = sc.data_ptr<scalar_t>();
    body.gx = gx.data_ptr<scalar_t>();
    body.gz = gz.data_ptr<scalar_t>();
    launch(body, body.n);
  });
  return {gx, gz};
}

template <typename Launch>
at::Tensor blend_forward_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& a, Launch launch) {
  const auto fmt = at::MemoryFormat::ChannelsLast;
  const at::Tensor xc = in_format(x, fmt), yc = in_format(y, fmt), ac = in_format(a, fmt);
  at::Tensor out = empty_large_like(ac, fmt);
  APNT_DISPATCH_FLOATING(a.scalar_type(), "apnt_blend_forward", [&] {
    BlendForwardBody<scalar_t, at::opmath_type<scalar_t>> body;
    body.n = out.numel();
    body.x = xc.data_ptr<scalar_t>();
    body.y = yc.data_ptr<scalar_t>();
    body.a = ac.data_ptr<scalar_t>();
    body.out = out.data_ptr<scalar_t>();
    launch(body, body.n);
  });
  return out;
}

template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> blend_backward_impl(const at::Tensor& g, const at::Tensor& g_att,
                                                                   const at::Tensor& x, const at::Tensor& y,
                                                                   const at::Tensor& a, Launch launch) {
  const auto fmt = at::MemoryFormat::ChannelsLast;
  const at::Tensor gc = in_format(g, fmt), xc = in_format(x, fmt), yc = in_format(y, fmt), ac = in_format(a, fmt);
  const at::Tensor gac = g_att.defined() ? in_format(g_att, fmt) : at::Tensor();
  at::Tensor gx = empty_large_like(ac, fmt), gy = empty_large_like(ac, fmt), gz = empty_large_like(ac, fmt);
  APNT_DISPATCH_FLOATING(a.scalar_type(), "apnt_blend_backward", [&] {
    BlendBackwardBody<scalar_t, at::opmath_type<scalar_t>> body;
    body.n = gx.numel();
    body.g = gc.data_ptr<scalar_t>();
    body.g_att = ptr_or_null<scalar_t>(gac);
    body.x = xc.data_ptr<scalar_t>();
    body.y = yc.data_ptr<scalar_t>();
    body.a = ac.data_ptr<scalar_t>();
    body.gx = gx.data_ptr<scalar_t>();
    body.gy = gy.data_ptr<scalar_t>();
    body.gz = gz.data_ptr<scalar_t>();
    launch(body, body.n);
  });
  return {gx, gy, gz};
}

// The device-dispatching entry points (attention_ops.cpp) and their per-device instantiations.
#define APNT_ATTENTION_EPILOGUES                                                                          \
  at::Tensor gate_forward(const at::Tensor& x, const at::Tensor& s);                                      \
  std::tuple<at::Tensor, at::Tensor> gate_backward(const at::Tensor& g, const at::Tensor& g_att,          \
                                                   const at::Tensor& x, const at::Tensor& s);             \
  at::Tensor blend_forward(const at::Tensor& x, const at::Tensor& y, const at::Tensor& a);                \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> blend_backward(const at::Tensor& g, const at::Tensor& g_att, \
                                                                const at::Tensor& x, const at::Tensor& y, \
                                                                const at::Tensor& a);
APNT_ATTENTION_EPILOGUES
namespace cpu {
APNT_ATTENTION_EPILOGUES
// CPU fast path: the attention convolution (float32, 3x3) with sigmoid and the gate / blend fused into
// its Winograd output transform. Returns false (and touches nothing) when it does not apply.
bool fused_gate(const at::Tensor& hidden, const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& x,
                at::Tensor& out, at::Tensor& attention);
bool fused_blend(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w, const at::Tensor& b, at::Tensor& out,
                 at::Tensor& attention);
}
#ifdef APNT_WITH_CUDA
namespace cuda {
APNT_ATTENTION_EPILOGUES
}
#endif
#undef APNT_ATTENTION_EPILOGUES

}  // namespace attention
}  // namespace apnt
