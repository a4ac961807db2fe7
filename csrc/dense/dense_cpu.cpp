// CPU launchers of the dense-block bodies (dense.h, host code in dense_launch.h).
#include "dense/dense_launch.h"
#include "common/grid_cpu.h"
#include "conv/winograd.h"
#include "conv/winograd_gemm.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // Lanes values stay inside this library (winograd.h)

namespace apnt {
namespace dense {
namespace cpu {

void slice_copy(const at::Tensor& src, at::Tensor& buffer, int64_t c0, bool accumulate) {
  if (!accumulate && !grid_emulation_enabled()) {  // NCHW x: one transpose into the slice; channels_last: memcpys
    at::Tensor slice = buffer.narrow(1, c0, src.size(1));
    if (src.is_contiguous() ? copy_nchw_into_pixel_major(src, slice) : copy_pixel_major(src, slice)) return;
  }
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

bool fuse_forward(const at::Tensor& buffer, const at::Tensor& fuse_weight, const at::Tensor& fuse_bias,
                  at::Tensor& out) {
  // float32 only, where the layers run as Winograd: there a non-finite x already poisons its tiles, so folding
  // changes no documented result. Under grid emulation the CPU runs what CUDA runs (GEMM, then bias_residual_).
  if (grid_emulation_enabled() || buffer.scalar_type() != at::kFloat) return false;
  // out = W buffer + b + x = (W + [I 0]) buffer + b: the residual folded into the weight, the bias as the GEMM's
  // C operand, so no pass over the output follows the GEMM.
  const int64_t C = out.size(1), total = buffer.size(1);
  at::Tensor w = fuse_weight.reshape({C, total}).to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
  w.narrow(1, 0, C).diagonal().add_(1.f);
  at::Tensor out2d = out.permute({0, 2, 3, 1}).view({-1, C});
  const at::Tensor pixels = buffer.permute({0, 2, 3, 1}).reshape({-1, total});
  const at::Tensor bias = fuse_bias.to(at::kFloat).contiguous();
  if (conv::cpu::winograd_gemm_usable(C) && pixels.stride(1) == 1 && out2d.is_contiguous()) {
    // Our register-blocked GEMM starts its accumulators at the bias: addmm first broadcast the bias into the
    // output (a pass over it), and MKL packed the operands (together 40% of addmm's time at 512^2 here).
    const at::Tensor wt = w.t().contiguous();  // (total, C)
    conv::cpu::gemm_bias_rows(pixels.data_ptr<float>(), pixels.stride(0), wt.data_ptr<float>(), bias.data_ptr<float>(),
                              out2d.data_ptr<float>(), pixels.size(0), total, C);
    return true;
  }
  at::addmm_out(out2d, bias, pixels, w.t());
  return true;
}

}  // namespace cpu
}  // namespace dense
}  // namespace apnt
