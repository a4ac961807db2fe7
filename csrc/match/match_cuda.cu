// CUDA launchers of the match family: the windowed search (radius mode; global search on GPUs is the
// Triton kernel), and the transfer gather / scatter.
#include "common/grid_cuda.cuh"
#include "match/match_launch.h"

namespace apnt {
namespace match {
namespace cuda {

std::tuple<at::Tensor, at::Tensor> windowed_search(const at::Tensor& query_cl, const at::Tensor& key_cl,
                                                   const at::Tensor& query_norm, const at::Tensor& key_norm,
                                                   const at::Tensor& key_mask, int64_t patch_size, int64_t radius) {
  return windowed_search_impl(query_cl, key_cl, query_norm, key_norm, key_mask, patch_size, radius, CudaLauncher{});
}

at::Tensor transfer_forward(const at::Tensor& value_cl, const at::Tensor& index, const TransferGeometry& g) {
  at::Tensor out = at::empty({g.N, g.Cv, g.Hq * g.s, g.Wq * g.s},
                             value_cl.options().memory_format(at::MemoryFormat::ChannelsLast));
  // Out-of-range indices are skipped in the kernel (never read out of bounds); reporting them would need a
  // host sync, so the flag stays on the device.
  at::Tensor bad = at::zeros({1}, value_cl.options().dtype(at::kInt));
  APNT_DISPATCH_FLOATING(value_cl.scalar_type(), "apnt_transfer_forward_cuda", [&] {
    TransferGatherBody<scalar_t, at::opmath_type<scalar_t>> body;
    body.value = value_cl.data_ptr<scalar_t>();
    body.index = index.data_ptr<int64_t>();
    body.out = out.data_ptr<scalar_t>();
    body.bad_index = bad.data_ptr<int>();
    body.g = g;
    body.n = g.N * g.Hq * g.s * g.Wq * g.s * g.Cv;
    CudaLauncher{}(body, body.n);
  });
  return out;
}

at::Tensor transfer_backward(const at::Tensor& grad_cl, const at::Tensor& index, const TransferGeometry& g) {
  // One thread per channel walks every output pixel in order: deterministic without atomics (slow; the
  // transfer backward is a small part of a training step).
  const auto acc_type = grad_cl.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // (at::zeros ignores the memory format of its options: allocate channels_last, then zero)
  at::Tensor grad_value = at::empty({g.N, g.Cv, g.Hk * g.s, g.Wk * g.s},
                                    grad_cl.options().dtype(acc_type).memory_format(at::MemoryFormat::ChannelsLast))
                              .zero_();
  APNT_DISPATCH_FLOATING(grad_cl.scalar_type(), "apnt_transfer_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TransferScatterBody<scalar_t, acc_t> body;
    body.grad_out = grad_cl.data_ptr<scalar_t>();
    body.index = index.data_ptr<int64_t>();
    body.grad_value = grad_value.data_ptr<acc_t>();
    body.g = g;
    body.n = g.Cv;
    CudaLauncher{}(body, body.n);
  });
  return grad_value.to(grad_cl.scalar_type());
}

}  // namespace cuda
}  // namespace match
}  // namespace apnt
