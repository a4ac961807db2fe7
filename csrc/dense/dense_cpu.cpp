// CPU launchers of the dense-block bodies (dense.h, host code in dense_launch.h).
#include "dense/dense_launch.h"
#include "common/grid_cpu.h"
#include "conv/winograd.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // Lanes values stay inside this library (winograd.h)

namespace apnt {
namespace dense {
namespace cpu {

void slice_copy(const at::Tensor& src, at::Tensor& buffer, int64_t c0, bool accumulate) {
  slice_copy_impl(src, buffer, c0, accumulate, CpuLauncher{});
}

void bias_residual_(at::Tensor& out, const at::Tensor& bias, const at::Tensor& residual) {
  bias_residual_impl(out, bias, residual, CpuLauncher{});
}

at::Tensor slice_relu_grad(const at::Tensor& grad_buffer, const at::Tensor& buffer, int64_t c0, int64_t channels) {
  return slice_relu_grad_impl(grad_buffer, buffer, c0, channels, CpuLauncher{});
}

bool layer_forward(const at::Tensor& prefix, const at::Tensor& w, const at::Tensor& b, int64_t dilation,
                   at::Tensor& slice) {
  // Under grid emulation the CPU runs what the CUDA launcher runs: convolution, then the slice copy.
  if (grid_emulation_enabled() || !conv::cpu::winograd_applicable({prefix}, w)) return false;
  conv::cpu::winograd_conv3x3({prefix}, conv::cpu::winograd_filter(w), b, dilation,
                              conv::cpu::ActivationEpilogue(conv::cpu::plane_of(slice), conv::Activation::kRelu, 0.f));
  return true;
}

}  // namespace cpu
}  // namespace dense
}  // namespace apnt
