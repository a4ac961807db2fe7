// The match family's ops (DESIGN §3.3-3.4).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/grid.h"
#include "match/match.h"

namespace apnt {
namespace match {
namespace {

// Features the kernels read: float32 (float64 kept for exact tests), channels_last — or, for the CPU tiled search,
// float32 NCHW-contiguous as given (it gathers tiles by transposes: two fewer copies of the maps held).
at::Tensor search_features(const at::Tensor& t, bool nchw_ok) {
  const auto dtype = t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (nchw_ok && t.scalar_type() == at::kFloat && t.is_contiguous()) return t;
  return t.to(dtype).contiguous(at::MemoryFormat::ChannelsLast);
}

// Descriptor norms per position: the k x k box sum of squared features (zero padded), clamped at 1e-12.
at::Tensor descriptor_norms(const at::Tensor& f, int64_t k) {
  const at::Tensor sq = (f * f).sum(1, /*keepdim=*/true);
  const at::Tensor box = at::avg_pool2d(sq, {k, k}, {1, 1}, {k / 2, k / 2}, false, true) * double(k * k);
  return box.clamp_min(0).sqrt().clamp_min(kNormEps).squeeze(1).contiguous();
}

std::tuple<at::Tensor, at::Tensor> patch_match(const at::Tensor& query, const at::Tensor& key, int64_t patch_size,
                                               const c10::optional<at::Tensor>& key_mask,
                                               c10::optional<int64_t> radius, c10::string_view precision) {
  check_nchw(query, "query");
  check_nchw(key, "key");
  check_same_device_dtype(key, query, "key");
  APNT_CHECK_ARG(key.size(0) == query.size(0) && key.size(1) == query.size(1), "key",
                 "expected (N, C) of query ", query.sizes(), ", got ", key.sizes());
  APNT_CHECK_ARG(patch_size >= 1 && patch_size % 2 == 1, "patch_size", "expected an odd int >= 1, got ", patch_size);
  APNT_CHECK_ARG(!radius || (*radius >= 0 && query.sizes() == key.sizes()), "radius",
                 "expected >= 0 with query and key of the same size");
  // The CUDA kernels and the emulated CUDA body read channels_last features only.
  const bool nchw_ok = query.is_cpu() && !(radius && grid_emulation_enabled());
  const at::Tensor q = search_features(query, nchw_ok), k = search_features(key, nchw_ok);
  const at::Tensor qn = descriptor_norms(q, patch_size), kn = descriptor_norms(k, patch_size);
  at::Tensor mask;
  if (key_mask.has_value()) mask = key_mask->reshape({key.size(0), key.size(2), key.size(3)}).contiguous();
#ifdef APNT_WITH_CUDA
  if (q.is_cuda()) {
    TORCH_CHECK(radius.has_value(), "apnt.ops.patch_match: the native backend searches CUDA tensors in radius mode "
                "only; the global search on GPUs is the triton backend (backend='auto' picks it)");
    return cuda::windowed_search(q, k, qn, kn, mask, patch_size, *radius);
  }
#endif
  // Under grid emulation the CPU runs the CUDA windowed search body.
  if (radius && grid_emulation_enabled()) return cpu::windowed_search(q, k, qn, kn, mask, patch_size, *radius);
  return cpu::tiled_search(q, k, qn, kn, mask, patch_size, radius);
}

TransferGeometry geometry(int64_t N, int64_t Cv, int64_t hv, int64_t wv, const at::Tensor& index, int64_t patch_size,
                          int64_t scale) {
  TransferGeometry g;
  g.N = N;
  g.Cv = Cv;
  g.s = scale;
  g.Hk = hv / scale;
  g.Wk = wv / scale;
  g.Hq = index.size(1);
  g.Wq = index.size(2);
  g.K = patch_size * scale;
  g.pad = (g.K - scale) / 2;
  return g;
}

void check_transfer(const at::Tensor& index, int64_t N, int64_t hv, int64_t wv, int64_t patch_size, int64_t scale) {
  APNT_CHECK_ARG(index.dim() == 3 && index.size(0) == N && index.scalar_type() == at::kLong, "index",
                 "expected an int64 (N=", N, ", Hq, Wq) tensor, got ", index.sizes(), " ", index.scalar_type());
  APNT_CHECK_ARG(patch_size >= 1 && patch_size % 2 == 1, "patch_size", "expected an odd int >= 1, got ", patch_size);
  APNT_CHECK_ARG(scale >= 1 && hv % scale == 0 && wv % scale == 0, "scale",
                 "expected >= 1 dividing the value's height and width, got ", scale);
}

at::Tensor patch_transfer_fwd(const at::Tensor& value, const at::Tensor& index, int64_t patch_size, int64_t scale) {
  check_nchw(value, "value");
  check_transfer(index, value.size(0), value.size(2), value.size(3), patch_size, scale);
  const TransferGeometry g = geometry(value.size(0), value.size(1), value.size(2), value.size(3), index, patch_size,
                                      scale);
  const at::Tensor v = value.contiguous(at::MemoryFormat::ChannelsLast), idx = index.contiguous();
#ifdef APNT_WITH_CUDA
  if (v.is_cuda()) return cuda::transfer_forward(v, idx, g);
#endif
  return cpu::transfer_forward(v, idx, g);
}

at::Tensor patch_transfer_bwd(const at::Tensor& grad_out, const at::Tensor& index, int64_t patch_size, int64_t scale,
                              at::IntArrayRef value_size) {
  APNT_CHECK_ARG(value_size.size() == 4, "value_size", "expected (N, Cv, Hv, Wv)");
  check_transfer(index, value_size[0], value_size[2], value_size[3], patch_size, scale);
  const TransferGeometry g = geometry(value_size[0], value_size[1], value_size[2], value_size[3], index, patch_size,
                                      scale);
  const at::Tensor go = grad_out.contiguous(at::MemoryFormat::ChannelsLast), idx = index.contiguous();
#ifdef APNT_WITH_CUDA
  if (go.is_cuda()) return cuda::transfer_backward(go, idx, g);
#endif
  return cpu::transfer_backward(go, idx, g);
}

}  // namespace

TORCH_LIBRARY_IMPL(apnt, CPU, m) {
  m.impl("patch_match", &patch_match);
  m.impl("patch_transfer_fwd", &patch_transfer_fwd);
  m.impl("patch_transfer_bwd", &patch_transfer_bwd);
}

#ifdef APNT_WITH_CUDA
TORCH_LIBRARY_IMPL(apnt, CUDA, m) {
  m.impl("patch_match", &patch_match);
  m.impl("patch_transfer_fwd", &patch_transfer_fwd);
  m.impl("patch_transfer_bwd", &patch_transfer_bwd);
}
#endif

}  // namespace match
}  // namespace apnt
