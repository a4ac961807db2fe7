// Host code of the transfer and windowed-search bodies, written once for any launcher.
#pragma once
#include "common/operands.h"
#include "match/match.h"

namespace apnt {
namespace match {

template <typename Launch>
std::tuple<at::Tensor, at::Tensor> windowed_search_impl(const at::Tensor& query_cl, const at::Tensor& key_cl,
                                                        const at::Tensor& query_norm, const at::Tensor& key_norm,
                                                        const at::Tensor& key_mask, int64_t patch_size,
                                                        int64_t radius, Launch launch) {
  const int64_t N = query_cl.size(0), C = query_cl.size(1), H = query_cl.size(2), W = query_cl.size(3);
  at::Tensor score = at::empty({N, H, W}, query_cl.options().dtype(at::kFloat));
  at::Tensor index = at::empty({N, H, W}, query_cl.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(query_cl.scalar_type(), "apnt_windowed_search", [&] {
    WindowedSearchBody<scalar_t, scalar_t> body;
    body.n = N * H * W;
    body.query = query_cl.data_ptr<scalar_t>();
    body.key = key_cl.data_ptr<scalar_t>();
    body.query_norm = query_norm.data_ptr<scalar_t>();
    body.key_norm = key_norm.data_ptr<scalar_t>();
    body.key_mask = key_mask.defined() ? key_mask.data_ptr<bool>() : nullptr;
    body.score = score.data_ptr<float>();
    body.index = index.data_ptr<int64_t>();
    body.H = H;
    body.W = W;
    body.C = C;
    body.half = patch_size / 2;
    body.radius = radius;
    launch(body, body.n);
  });
  return {score, index};
}

}  // namespace match
}  // namespace apnt
