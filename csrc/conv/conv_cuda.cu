// CUDA launchers of the conv family: cuDNN convolutions come through ATen, the epilogues are our bodies.
#include "common/grid_cuda.cuh"
#include "conv/conv_epilogue.h"

namespace apnt {
namespace conv {
namespace cuda {

void activation_forward_(at::Tensor& y, Activation act, double slope) {
  activation_forward_impl(y, act, slope, CudaLauncher{});
}

at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& y, Activation act, double slope) {
  return activation_backward_impl(grad, y, act, slope, CudaLauncher{});
}

}  // namespace cuda
}  // namespace conv
}  // namespace apnt
