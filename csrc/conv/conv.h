// Family `conv`: the fast convolution with fused epilogues (DESIGN §3.0) that every other family builds on.
#pragma once
#include <string_view>
#include <vector>

#include "common/elementwise.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace apnt {
namespace conv {

enum class Activation : int { kNone = 0, kRelu = 1, kLeakyRelu = 2, kSigmoid = 3 };

template <typename T>
APNT_HD T activate(T z, Activation act, T slope) {
  switch (act) {
    case Activation::kRelu: return z < T(0) ? T(0) : z;  // NaN stays NaN, as in F.relu
    case Activation::kLeakyRelu: return leaky_relu(z, slope);
    case Activation::kSigmoid: return sigmoid(z);
    default: return z;
  }
}

// d act / d z expressed through the output y, so the forward saves only y. Exact for slope >= 0:
// then y > 0 exactly when z > 0 (the Python layer rejects negative slopes).
template <typename T>
APNT_HD T activation_grad_from_output(T g, T y, Activation act, T slope) {
  switch (act) {
    case Activation::kRelu: return y > T(0) ? g : T(0);
    case Activation::kLeakyRelu: return y > T(0) ? g : g * slope;
    case Activation::kSigmoid: return g * y * (T(1) - y);
    default: return g;
  }
}

// y[i] = act(y[i]) in place. scalar_t storage, acc_t arithmetic.
template <typename scalar_t, typename acc_t>
struct ActivationBody : ElementwiseBody<ActivationBody<scalar_t, acc_t>> {
  scalar_t* y;
  Activation act;
  acc_t slope;
  APNT_HD void element(int64_t i) const { y[i] = scalar_t(activate<acc_t>(acc_t(y[i]), act, slope)); }
};

// gz[i] = g[i] * act'(z) recovered from y. For relu and leaky_relu y may be the bool mask y > 0 instead
// (y_t = bool): all their gradient needs, at a quarter of float32's bytes held for backward.
template <typename scalar_t, typename acc_t, typename y_t = scalar_t>
struct ActivationGradBody : ElementwiseBody<ActivationGradBody<scalar_t, acc_t, y_t>> {
  const scalar_t* g;
  const y_t* y;
  scalar_t* gz;
  Activation act;
  acc_t slope;
  APNT_HD void element(int64_t i) const {
    gz[i] = scalar_t(activation_grad_from_output<acc_t>(acc_t(g[i]), acc_t(y[i]), act, slope));
  }
};

Activation parse_activation(std::string_view name);

// act(conv2d(cat(inputs, dim=1), w, b, dilation=d, padding=d*(k//2))). `inputs` are concatenated along
// channels virtually: fast paths read them in place. Output: channels_last on the CPU fast paths.
at::Tensor forward(const std::vector<at::Tensor>& inputs, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                   int64_t dilation, Activation act, double slope);

// Gradients of the pre-activation convolution given grad_z: (grad of each input, grad_w, grad_b).
// Undefined tensors where `need_*` is false.
struct Grads {
  std::vector<at::Tensor> inputs;
  at::Tensor weight, bias;
};
Grads backward(const at::Tensor& grad_z, const std::vector<at::Tensor>& inputs, const at::Tensor& w,
               int64_t dilation, bool need_inputs, bool need_weight, bool need_bias);

// Elementwise epilogues, dispatched by device.
void activation_forward_(at::Tensor& y, Activation act, double slope);
at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& y, Activation act, double slope);

namespace cpu {
void activation_forward_(at::Tensor& y, Activation act, double slope);
at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& y, Activation act, double slope);
// act(conv) on CPU tensors with oneDNN / Winograd; nullopt-free fast path selection lives here.
at::Tensor forward(const std::vector<at::Tensor>& inputs, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                   int64_t dilation, Activation act, double slope);
// d/d input of the 3x3 convolution through Winograd; undefined when it does not apply. With `accumulate_into`
// (an (N, K, H, W) view, any strides) the gradient is added there and that view is returned; otherwise it is
// written in `format` (the input's: the epilogue stores any strides, cheaper than a transposing copy after).
at::Tensor grad_input_3x3(const at::Tensor& grad_z, const at::Tensor& w, int64_t dilation,
                          const at::Tensor& accumulate_into = at::Tensor(),
                          at::MemoryFormat format = at::MemoryFormat::ChannelsLast);
}  // namespace cpu

#ifdef APNT_WITH_CUDA
namespace cuda {
void activation_forward_(at::Tensor& y, Activation act, double slope);
at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& y, Activation act, double slope);
}  // namespace cuda
#endif

}  // namespace conv
}  // namespace apnt
