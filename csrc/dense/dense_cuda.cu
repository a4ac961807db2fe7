// CUDA launchers of the dense-block bodies (dense.h, host code in dense_launch.h).
#include "dense/dense_launch.h"
#include "common/grid_cuda.cuh"

namespace apnt {
namespace dense {
namespace cuda {

void slice_copy(const at::Tensor& src, at::Tensor& buffer, int64_t c0, bool accumulate) {
  slice_copy_impl(src, buffer, c0, accumulate, CudaLauncher{});
}

void bias_residual_(at::Tensor& out, const at::Tensor& bias, const at::Tensor& residual) {
  bias_residual_impl(out, bias, residual, CudaLauncher{});
}

at::Tensor slice_relu_grad(const at::Tensor& grad_buffer, const at::Tensor& buffer, int64_t c0, int64_t channels) {
  return slice_relu_grad_impl(grad_buffer, buffer, c0, channels, CudaLauncher{});
}

}  // namespace cuda
}  // namespace dense
}  // namespace apnt
