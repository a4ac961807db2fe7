// CPU launchers of the attention epilogues (bodies in attention.h, host code in attention_epilogue.h).
#include "attention/attention_epilogue.h"
#include "common/grid_cpu.h"

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

}  // namespace cpu
}  // namespace attention
}  // namespace apnt
