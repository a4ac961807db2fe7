// Host code of the conv epilogues, written once for any launcher (CpuLauncher, CudaLauncher).
#pragma once
#include "common/operands.h"
#include "common/memory.h"
#include "conv/conv.h"

namespace apnt {
namespace conv {

template <typename Launch>
void activation_forward_impl(at::Tensor& y, Activation act, double slope, Launch launch) {
  if (act == Activation::kNone || y.numel() == 0) return;
  TORCH_INTERNAL_ASSERT(y.is_contiguous(at::MemoryFormat::ChannelsLast));
  APNT_DISPATCH_FLOATING(y.scalar_type(), "apnt_activation", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ActivationBody<scalar_t, acc_t> body;
    body.n = y.numel();
    body.y = y.data_ptr<scalar_t>();
    body.act = act;
    body.slope = acc_t(slope);
    launch(body, body.n);
  });
}

template <typename Launch>
at::Tensor activation_backward_impl(const at::Tensor& grad, const at::Tensor& y, Activation act, double slope,
                                    Launch launch) {
  const auto fmt = at::MemoryFormat::ChannelsLast;
  const at::Tensor gc = in_format(grad, fmt);
  if (act == Activation::kNone) return gc;  // y may then be an empty placeholder
  const at::Tensor yc = in_format(y, fmt);
  const bool mask = y.scalar_type() == at::kBool;
  TORCH_CHECK(!mask || act == Activation::kRelu || act == Activation::kLeakyRelu,
              "activation_backward: a bool mask of y > 0 stands in for y only for relu and leaky_relu");
  at::Tensor gz = empty_large_like(gc, fmt);
  if (gz.numel() == 0) return gz;
  APNT_DISPATCH_FLOATING(grad.scalar_type(), "apnt_activation_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto run = [&](auto y_tag) {
      using y_t = decltype(y_tag);
      ActivationGradBody<scalar_t, acc_t, y_t> body;
      body.n = yc.numel();
      body.g = gc.data_ptr<scalar_t>();
      body.y = yc.data_ptr<y_t>();
      body.gz = gz.data_ptr<scalar_t>();
      body.act = act;
      body.slope = acc_t(slope);
      launch(body, body.n);
    };
    if (mask)
      run(bool{});
    else
      run(scalar_t{});
  });
  return gz;
}

}  // namespace conv
}  // namespace apnt
