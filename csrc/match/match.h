// Family `match` (DESIGN §3.3-3.4): patch correspondence search and texture transfer.
// The arithmetic shared by the CPU launchers and the CUDA kernels lives here: the tie rule of the running
// argmax, the windowed search (one query per thread), and the transfer gather / scatter.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "common/elementwise.h"

namespace apnt {
namespace match {

constexpr double kTieTolerance = 1e-6;
constexpr double kNormEps = 1e-12;

// Running best candidate of one query under DESIGN §3.3's tie rule. Keys may arrive in any order. The
// choice is the lowest index seen within the tolerance of the running maximum, and it is replaced as soon as
// the maximum leaves it behind: the returned key is always within the tolerance of the true maximum.
template <typename acc_t>
struct Best {
  acc_t max = acc_t(0);          // running maximum of the valid scores
  acc_t chosen_score = acc_t(0);
  int64_t index = -1;
  acc_t own_score = acc_t(0);
  bool own_seen = false;

  APNT_HD void offer(acc_t s, int64_t k, int64_t own) {
    if (!(s == s)) return;  // NaN is never chosen
    if (k == own) {
      own_seen = true;
      own_score = s;
    }
    const acc_t tol = acc_t(kTieTolerance);
    if (index < 0) {
      max = chosen_score = s;
      index = k;
      return;
    }
    if (s > max) max = s;
    if (chosen_score < max - tol || (s >= max - tol && k < index)) {
      chosen_score = s;
      index = k;
    }
  }
  // Own position when it ties with the maximum; -1 and score 0 when nothing was valid.
  APNT_HD void finish(float* out_score, int64_t* out_index) const {
    if (own_seen && own_score >= max - acc_t(kTieTolerance)) {
      *out_score = float(own_score);
      *out_index = -2;  // caller writes its own flat position
      return;
    }
    *out_score = index < 0 ? 0.f : float(chosen_score);
    *out_index = index;
  }
};

// Radius-mode search, one query per thread (the CUDA windowed search; the CPU runs it under emulation).
// Features are channels_last: f[((n * H + y) * W + x) * C + c]; norms are descriptor norms per position.
template <typename scalar_t, typename acc_t>
struct WindowedSearchBody : ElementwiseBody<WindowedSearchBody<scalar_t, acc_t>> {
  const scalar_t *query, *key;
  const acc_t *query_norm, *key_norm;
  const bool* key_mask;  // (N, H, W) or null
  float* score;
  int64_t* index;
  int64_t H, W, C, half, radius;

  APNT_HD acc_t dot(int64_t n, int64_t qy, int64_t qx, int64_t ky, int64_t kx) const {
    acc_t s = acc_t(0);
    for (int64_t dy = -half; dy <= half; ++dy)
      for (int64_t dx = -half; dx <= half; ++dx) {
        const int64_t ay = qy + dy, ax = qx + dx, by = ky + dy, bx = kx + dx;
        if (ay < 0 || ay >= H || ax < 0 || ax >= W || by < 0 || by >= H || bx < 0 || bx >= W) continue;
        const scalar_t* a = query + ((n * H + ay) * W + ax) * C;
        const scalar_t* b = key + ((n * H + by) * W + bx) * C;
        for (int64_t c = 0; c < C; ++c) s += acc_t(a[c]) * acc_t(b[c]);
      }
    return s;
  }

  APNT_HD void element(int64_t i) const {
    const int64_t n = i / (H * W), q = i % (H * W), qy = q / W, qx = q % W;
    Best<acc_t> best;
    const acc_t qn = query_norm[i];
    for (int64_t ky = (qy - radius < 0 ? 0 : qy - radius); ky <= qy + radius && ky < H; ++ky)
      for (int64_t kx = (qx - radius < 0 ? 0 : qx - radius); kx <= qx + radius && kx < W; ++kx) {
        const int64_t k = ky * W + kx;
        if (key_mask && !key_mask[n * H * W + k]) continue;
        const acc_t kn = key_norm[n * H * W + k];
        // A NaN/Inf in either window makes reference's unit descriptor hold NaN (Inf / Inf), so every score of
        // it is NaN, never chosen. dot() skips the zero padding, where reference's 0 * NaN would say so.
        if (!(qn - qn == acc_t(0)) || !(kn - kn == acc_t(0))) continue;
        best.offer(dot(n, qy, qx, ky, kx) / (qn * kn), k, q);
      }
    int64_t idx;
    best.finish(score + i, &idx);
    index[i] = idx == -2 ? q : idx;
  }
};

// The geometry of patch_transfer: output pixel (Y, X) of an (Hq*s, Wq*s) map is covered by the columns of
// query positions qy in [(Y + pad - K + 1) / s, (Y + pad) / s] (rounded inwards), the same for x.
struct TransferGeometry {
  int64_t N, Hq, Wq, Hk, Wk, s, K, pad, Cv;
  APNT_HD int64_t first(int64_t Y) const {  // smallest q with q*s - pad + K > Y
    const int64_t t = Y + pad - K + 1;
    return t <= 0 ? 0 : (t + s - 1) / s;
  }
  APNT_HD int64_t last(int64_t Y, int64_t limit) const {  // largest q with q*s - pad <= Y
    const int64_t q = (Y + pad) / s;
    return q < limit - 1 ? q : limit - 1;
  }
};

// out[n, Y, X, c] = mean over the valid covering columns of value[n, ky*s - pad + u, kx*s - pad + v, c].
// channels_last value (N, Hk*s, Wk*s, Cv) and out (N, Hq*s, Wq*s, Cv). Deterministic (a gather).
template <typename scalar_t, typename acc_t>
struct TransferGatherBody : ElementwiseBody<TransferGatherBody<scalar_t, acc_t>> {
  const scalar_t* value;
  const int64_t* index;  // (N, Hq, Wq)
  scalar_t* out;
  int* bad_index;  // set when an index is out of range (checked without a host sync)
  TransferGeometry g;

  // Channels [c0, c1) of output pixel p (CPU: whole pixels; CUDA: one channel per thread).
  APNT_HD void pixel(int64_t p, int64_t c0, int64_t c1) const {
    const int64_t HY = g.Hq * g.s, WX = g.Wq * g.s, HV = g.Hk * g.s, WV = g.Wk * g.s;
    const int64_t n = p / (HY * WX), Y = (p / WX) % HY, X = p % WX;
    scalar_t* o = out + p * g.Cv;
    for (int64_t c = c0; c < c1; ++c) o[c] = scalar_t(0);
    int64_t count = 0;
    for (int64_t qy = g.first(Y); qy <= g.last(Y, g.Hq); ++qy)
      for (int64_t qx = g.first(X); qx <= g.last(X, g.Wq); ++qx) {
        const int64_t k = index[(n * g.Hq + qy) * g.Wq + qx];
        if (k < 0) continue;
        if (k >= g.Hk * g.Wk) {
          *bad_index = 1;
          continue;
        }
        ++count;
        const int64_t sy = (k / g.Wk) * g.s + (Y - qy * g.s), sx = (k % g.Wk) * g.s + (X - qx * g.s);
        if (sy < 0 || sy >= HV || sx < 0 || sx >= WV) continue;  // zero padding: counted, adds nothing
        const scalar_t* v = value + ((n * HV + sy) * WV + sx) * g.Cv;
        for (int64_t c = c0; c < c1; ++c) o[c] = scalar_t(acc_t(o[c]) + acc_t(v[c]));
      }
    if (count > 1)
      for (int64_t c = c0; c < c1; ++c) o[c] = scalar_t(acc_t(o[c]) / acc_t(count));
  }
  APNT_HD void element(int64_t i) const { pixel(i / g.Cv, i % g.Cv, i % g.Cv + 1); }
};

// grad_value[n, src, c] += grad_out[n, Y, X, c] / count(Y, X): the transfer's adjoint. Channels [c0, c1) for
// every output pixel, in a fixed order: a launcher that gives each thread its own channels is deterministic.
template <typename scalar_t, typename acc_t>
struct TransferScatterBody : ElementwiseBody<TransferScatterBody<scalar_t, acc_t>> {
  const scalar_t* grad_out;
  const int64_t* index;
  acc_t* grad_value;  // accumulated in acc_t, cast afterwards
  TransferGeometry g;

  APNT_HD void channels(int64_t c0, int64_t c1) const {
    const int64_t HY = g.Hq * g.s, WX = g.Wq * g.s, HV = g.Hk * g.s, WV = g.Wk * g.s;
    for (int64_t p = 0; p < g.N * HY * WX; ++p) {
      const int64_t n = p / (HY * WX), Y = (p / WX) % HY, X = p % WX;
      int64_t count = 0;
      for (int64_t qy = g.first(Y); qy <= g.last(Y, g.Hq); ++qy)
        for (int64_t qx = g.first(X); qx <= g.last(X, g.Wq); ++qx) {
          const int64_t k = index[(n * g.Hq + qy) * g.Wq + qx];
          count += (k >= 0 && k < g.Hk * g.Wk);
        }
      if (count == 0) continue;
      const acc_t inv = acc_t(1) / acc_t(count);
      for (int64_t qy = g.first(Y); qy <= g.last(Y, g.Hq); ++qy)
        for (int64_t qx = g.first(X); qx <= g.last(X, g.Wq); ++qx) {
          const int64_t k = index[(n * g.Hq + qy) * g.Wq + qx];
          if (k < 0 || k >= g.Hk * g.Wk) continue;
          const int64_t sy = (k / g.Wk) * g.s + (Y - qy * g.s), sx = (k % g.Wk) * g.s + (X - qx * g.s);
          if (sy < 0 || sy >= HV || sx < 0 || sx >= WV) continue;
          acc_t* gv = grad_value + ((n * HV + sy) * WV + sx) * g.Cv;
          const scalar_t* go = grad_out + p * g.Cv;
          for (int64_t c = c0; c < c1; ++c) gv[c] += acc_t(go[c]) * inv;
        }
    }
  }
  APNT_HD void element(int64_t c) const { channels(c, c + 1); }  // one thread per channel
};

#define APNT_CHECK_INDEX(ok, g)                                                                              \
  TORCH_CHECK_VALUE(ok, "apnt: argument 'index': values must be negative (no match) or flat key positions in [0, ", \
                    (g).Hk * (g).Wk, \
                    ") of the (", (g).Hk, ", ", (g).Wk, ") key map that value (", (g).Hk * (g).s, ", ", (g).Wk * (g).s, \
                    ") is the scale-", (g).s, " image of")

// Host entry points per device.
#define APNT_MATCH_LAUNCHERS                                                                                   \
  std::tuple<at::Tensor, at::Tensor> windowed_search(const at::Tensor& query_cl, const at::Tensor& key_cl,     \
                                                     const at::Tensor& query_norm, const at::Tensor& key_norm, \
                                                     const at::Tensor& key_mask, int64_t patch_size, int64_t radius); \
  at::Tensor transfer_forward(const at::Tensor& value_cl, const at::Tensor& index, const TransferGeometry& g); \
  at::Tensor transfer_backward(const at::Tensor& grad_cl, const at::Tensor& index, const TransferGeometry& g);
namespace cpu {
APNT_MATCH_LAUNCHERS
// Global or radius search by tiles of the Gram matrix of per-pixel features (no Nq x Nk matrix). Features
// channels_last, or (float32 only) NCHW-contiguous: tiles are then gathered by transposes, with no copy of the maps.
std::tuple<at::Tensor, at::Tensor> tiled_search(const at::Tensor& query_cl, const at::Tensor& key_cl,
                                                const at::Tensor& query_norm, const at::Tensor& key_norm,
                                                const at::Tensor& key_mask, int64_t patch_size,
                                                c10::optional<int64_t> radius);
}  // namespace cpu
#ifdef APNT_WITH_CUDA
namespace cuda {
APNT_MATCH_LAUNCHERS
}
#endif
#undef APNT_MATCH_LAUNCHERS

}  // namespace match
}  // namespace apnt
