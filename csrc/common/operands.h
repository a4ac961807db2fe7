// Host-side preparation shared by the CPU and CUDA launchers of elementwise epilogues: every operand is
// brought to one memory format so a flat index addresses the same (n, c, y, x) in all of them.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "common/layout.h"

namespace apnt {

inline at::Tensor in_format(const at::Tensor& t, at::MemoryFormat fmt) {
  if (t.is_contiguous(fmt)) return t;
  if (t.is_cpu()) {  // float32 NCHW <-> channels_last by the register transposes of layout.h
    at::Tensor r = fmt == at::MemoryFormat::ChannelsLast ? channels_last_fast(t) : to_format_fast(t, fmt);
    if (r.is_contiguous(fmt)) return r;
  }
  return t.contiguous(fmt);
}

template <typename scalar_t>
const scalar_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
}

// Gradient outputs of the _bwd ops come back in the layout of the tensor they belong to (what the fake
// kernels promise); a gradient that was not asked for is an empty tensor.
inline at::Tensor or_empty(const at::Tensor& grad, const at::Tensor& like) {
  return grad.defined() ? grad.contiguous(like.suggest_memory_format()) : at::empty({0}, like.options());
}

// 1-D bias gradients: plain contiguous.
inline at::Tensor bias_or_empty(const at::Tensor& grad, const at::Tensor& options_from) {
  return grad.defined() ? grad.contiguous() : at::empty({0}, options_from.options());
}

}  // namespace apnt

#define APNT_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
