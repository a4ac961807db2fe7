// Family `attention` (DESIGN §3.1): the elementwise epilogues that follow the attention convolutions.
// Gate:  out = x * s,  s = sigmoid(z)                (s saved; s' = s (1 - s) needs no exp in backward)
// Blend: out = a * x + (1 - a) * y,  a = sigmoid(z)
#pragma once
#include "common/elementwise.h"

namespace apnt {
namespace attention {

// The arithmetic, once. T may be a scalar or a SIMD vector (the CPU Winograd epilogues use whole vectors).
template <typename T>
APNT_HD T gate_value(const T& x, const T& s) {
  return x * s;
}

// Written as the reference writes it, not as y + a (x - y): with y = +-Inf and a = 0 exactly (sigmoid of -Inf)
// that form gives Inf + 0 * (x - Inf) = NaN where reference gives Inf.
template <typename T>
APNT_HD T blend_value(const T& x, const T& y, const T& a) {
  return a * x + (1.f - a) * y;
}

template <typename scalar_t, typename acc_t>
struct GateForwardBody : ElementwiseBody<GateForwardBody<scalar_t, acc_t>> {
  const scalar_t *x, *s;
  scalar_t* out;
  APNT_HD void element(int64_t i) const { out[i] = scalar_t(gate_value(acc_t(x[i]), acc_t(s[i]))); }
};

// gx = g s;  gz = (g x + g_att) s (1 - s). g_att (the gradient reaching the returned attention map) may be null.
template <typename scalar_t, typename acc_t>
struct GateBackwardBody : ElementwiseBody<GateBackwardBody<scalar_t, acc_t>> {
  const scalar_t *g, *g_att, *x, *s;
  scalar_t *gx, *gz;
  APNT_HD void element(int64_t i) const {
    const acc_t gi = acc_t(g[i]), si = acc_t(s[i]);
    const acc_t ga = gi * acc_t(x[i]) + (g_att ? acc_t(g_att[i]) : acc_t(0));
    gx[i] = scalar_t(gi * si);
    gz[i] = scalar_t(ga * si * (acc_t(1) - si));
  }
};

template <typename scalar_t, typename acc_t>
struct BlendForwardBody : ElementwiseBody<BlendForwardBody<scalar_t, acc_t>> {
  const scalar_t *x, *y, *a;
  scalar_t* out;
  APNT_HD void element(int64_t i) const { out[i] = scalar_t(blend_value(acc_t(x[i]), acc_t(y[i]), acc_t(a[i]))); }
};

// gx = g a;  gy = g (1 - a);  gz = (g (x - y) + g_att) a (1 - a).
template <typename scalar_t, typename acc_t>
struct BlendBackwardBody : ElementwiseBody<BlendBackwardBody<scalar_t, acc_t>> {
  const scalar_t *g, *g_att, *x, *y, *a;
  scalar_t *gx, *gy, *gz;
  APNT_HD void element(int64_t i) const {
    const acc_t gi = acc_t(g[i]), ai = acc_t(a[i]);
    const acc_t ga = gi * (acc_t(x[i]) - acc_t(y[i])) + (g_att ? acc_t(g_att[i]) : acc_t(0));
    gx[i] = scalar_t(gi * ai);
    gy[i] = scalar_t(gi - gi * ai);
    gz[i] = scalar_t(ga * ai * (acc_t(1) - ai));
  }
};

}  // namespace attention
}  // namespace apnt
