// CRTP base of elementwise kernel bodies: `element(i)` holds the arithmetic, the grid-stride loop is here.
#pragma once
#include "common/grid.h"

namespace apnt {

template <typename Derived>
struct ElementwiseBody {
  static constexpr int kPhases = 1;
  int64_t n = 0;
  APNT_HD void operator()(const ThreadCtx& ctx, int /*phase*/) const {
    for (int64_t i = ctx.global_x(); i < n; i += ctx.stride_x()) static_cast<const Derived*>(this)->element(i);
  }
};

}  // namespace apnt
