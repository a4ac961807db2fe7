// Input checks for the C++ entry points. The Python layer validates first with fuller messages; these
// keep direct torch.ops callers from reaching a kernel with inputs it cannot serve.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#define APNT_CHECK_ARG(cond, arg, ...) TORCH_CHECK_VALUE(cond, "apnt: argument '", arg, "': ", __VA_ARGS__)

namespace apnt {

inline void check_nchw(const at::Tensor& t, const char* arg) {
  APNT_CHECK_ARG(t.dim() == 4, arg, "expected a 4-D (N, C, H, W) tensor, got shape ", t.sizes());
}

inline void check_same_device_dtype(const at::Tensor& t, const at::Tensor& like, const char* arg) {
  APNT_CHECK_ARG(t.device() == like.device(), arg, "expected device ", like.device(), ", got ", t.device());
  APNT_CHECK_ARG(t.scalar_type() == like.scalar_type(), arg, "expected dtype ", like.scalar_type(), ", got ",
                 t.scalar_type());
}

inline void check_odd_square_kernel(const at::Tensor& w, const char* arg) {
  APNT_CHECK_ARG(w.dim() == 4 && w.size(2) == w.size(3) && w.size(2) % 2 == 1, arg,
                 "expected an (O, I, k, k) weight with odd k, got shape ", w.sizes());
}

}  // namespace apnt
