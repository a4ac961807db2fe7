// CPU launchers of the match family: the tiled Gram search, and the transfer gather / scatter.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "common/grid_cpu.h"
#include "match/match_launch.h"

namespace apnt {
namespace match {
namespace cpu {
namespace {

constexpr int64_t kTileH = 8, kTileW = 32;  // query and key tiles: 256 positions

// Features of the tile [y0, y0+TH) x [x0, x0+TW) plus a `half`-pixel halo, one row per pixel (zeros outside).
template <typename scalar_t>
void gather_tile(const scalar_t* f, int64_t n, int64_t H, int64_t W, int64_t C, int64_t y0, int64_t x0, int64_t half,
                 scalar_t* out) {
  const int64_t PH = kTileH + 2 * half, PW = kTileW + 2 * half;
  for (int64_t i = 0; i < PH; ++i)
    for (int64_t j = 0; j < PW; ++j) {
      const int64_t y = y0 - half + i, x = x0 - half + j;
      scalar_t* dst = out + (i * PW + j) * C;
      if (y < 0 || y >= H || x < 0 || x >= W) {
        std::fill(dst, dst + C, scalar_t(0));
      } else {
        std::copy(f + ((n * H + y) * W + x) * C, f + ((n * H + y) * W + x + 1) * C, dst);
      }
    }
}

template <typename scalar_t>
void tiled_search_impl(const at::Tensor& q_cl, const at::Tensor& k_cl, const at::Tensor& qn_t, const at::Tensor& kn_t,
                       const at::Tensor& mask_t, int64_t patch_size, c10::optional<int64_t> radius, at::Tensor& score_t,
                       at::Tensor& index_t) {
  const int64_t N = q_cl.size(0), C = q_cl.size(1), Hq = q_cl.size(2), Wq = q_cl.size(3);
  const int64_t Hk = k_cl.size(2), Wk = k_cl.size(3);
  const int64_t half = patch_size / 2, PH = kTileH + 2 * half, PW = kTileW + 2 * half, P = PH * PW;
  const bool same_size = Hq == Hk && Wq == Wk;
  const scalar_t *qf = q_cl.data_ptr<scalar_t>(), *kf = k_cl.data_ptr<scalar_t>();
  const scalar_t *qn = qn_t.data_ptr<scalar_t>(), *kn = kn_t.data_ptr<scalar_t>();
  const bool* mask = mask_t.defined() ? mask_t.data_ptr<bool>() : nullptr;
  float* score = score_t.data_ptr<float>();
  int64_t* index = index_t.data_ptr<int64_t>();
  const int64_t qty = (Hq + kTileH - 1) / kTileH, qtx = (Wq + kTileW - 1) / kTileW;
  const int64_t kty = (Hk + kTileH - 1) / kTileH, ktx = (Wk + kTileW - 1) / kTileW;

  at::parallel_for(0, N * qty * qtx, 1, [&](int64_t begin, int64_t end) {
    const auto opts = q_cl.options().memory_format(at::MemoryFormat::Contiguous);
    at::Tensor A = at::empty({P, C}, opts), B = at::empty({P, C}, opts), G = at::empty({P, P}, opts);
    std::vector<scalar_t> acc(kTileH * kTileW);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / (qty * qtx), y0 = (t / qtx) % qty * kTileH, x0 = t % qtx * kTileW;
      gather_tile(qf, n, Hq, Wq, C, y0, x0, half, A.data_ptr<scalar_t>());
      std::vector<Best<scalar_t>> best(kTileH * kTileW);
      // Key tiles: all of them, or those meeting the radius window of this query tile.
      int64_t ty0 = 0, ty1 = kty, tx0 = 0, tx1 = ktx;
      if (radius) {
        ty0 = std::max<int64_t>(0, y0 - *radius) / kTileH;
        ty1 = std::min<int64_t>(Hk - 1, y0 + kTileH - 1 + *radius) / kTileH + 1;
        tx0 = std::max<int64_t>(0, x0 - *radius) / kTileW;
        tx1 = std::min<int64_t>(Wk - 1, x0 + kTileW - 1 + *radius) / kTileW + 1;
      }
      for (int64_t ky0t = ty0; ky0t < ty1; ++ky0t)
        for (int64_t kx0t = tx0; kx0t < tx1; ++kx0t) {
          const int64_t ky0 = ky0t * kTileH, kx0 = kx0t * kTileW;
          gather_tile(kf, n, Hk, Wk, C, ky0, kx0, half, B.data_ptr<scalar_t>());
          at::mm_out(G, A, B.t());  // Gram of per-pixel features: 9x fewer multiplies than unfolded patches
          const scalar_t* g = G.data_ptr<scalar_t>();
          for (int64_t a = 0; a < kTileH && y0 + a < Hq; ++a)
            for (int64_t b = 0; b < kTileW && x0 + b < Wq; ++b) {
              // patch dot products = sums of the Gram along the k*k shifted diagonals
              std::fill(acc.begin(), acc.end(), scalar_t(0));
              for (int64_t dy = -half; dy <= half; ++dy)
                for (int64_t dx = -half; dx <= half; ++dx) {
                  const scalar_t* row = g + ((a + half + dy) * PW + b + half + dx) * P;
                  for (int64_t c = 0; c < kTileH; ++c) {
                    const scalar_t* seg = row + (c + half + dy) * PW + half + dx;
                    scalar_t* dst = acc.data() + c * kTileW;
                    for (int64_t d = 0; d < kTileW; ++d) dst[d] += seg[d];
                  }
                }
              const int64_t qy = y0 + a, qx = x0 + b, q = qy * Wq + qx;
              const scalar_t qnorm = qn[n * Hq * Wq + q];
              const int64_t own = same_size ? q : -1;
              Best<scalar_t>& bq = best[a * kTileW + b];
              for (int64_t c = 0; c < kTileH && ky0 + c < Hk; ++c) {
                const int64_t ky = ky0 + c;
                if (radius && (ky < qy - *radius || ky > qy + *radius)) continue;
                for (int64_t d = 0; d < kTileW && kx0 + d < Wk; ++d) {
                  const int64_t kx = kx0 + d, k = ky * Wk + kx;
                  if (radius && (kx < qx - *radius || kx > qx + *radius)) continue;
                  if (mask && !mask[n * Hk * Wk + k]) continue;
                  bq.offer(acc[c * kTileW + d] / (qnorm * kn[n * Hk * Wk + k]), k, own);
                }
              }
            }
        }
      for (int64_t a = 0; a < kTileH && y0 + a < Hq; ++a)
        for (int64_t b = 0; b < kTileW && x0 + b < Wq; ++b) {
          const int64_t o = (n * Hq + y0 + a) * Wq + x0 + b;
          best[a * kTileW + b].finish(score + o, index + o);
          if (index[o] == -2) index[o] = (y0 + a) * Wq + x0 + b;
        }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> tiled_search(const at::Tensor& query_cl, const at::Tensor& key_cl,
                                                const at::Tensor& query_norm, const at::Tensor& key_norm,
                                                const at::Tensor& key_mask, int64_t patch_size,
                                                c10::optional<int64_t> radius) {
  const int64_t N = query_cl.size(0), Hq = query_cl.size(2), Wq = query_cl.size(3);
  at::Tensor score = at::empty({N, Hq, Wq}, query_cl.options().dtype(at::kFloat));
  at::Tensor index = at::empty({N, Hq, Wq}, query_cl.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(query_cl.scalar_type(), "apnt_tiled_search", [&] {
    tiled_search_impl<scalar_t>(query_cl, key_cl, query_norm, key_norm, key_mask, patch_size, radius, score, index);
  });
  return {score, index};
}

std::tuple<at::Tensor, at::Tensor> windowed_search(const at::Tensor& query_cl, const at::Tensor& key_cl,
                                                   const at::Tensor& query_norm, const at::Tensor& key_norm,
                                                   const at::Tensor& key_mask, int64_t patch_size, int64_t radius) {
  return windowed_search_impl(query_cl, key_cl, query_norm, key_norm, key_mask, patch_size, radius, CpuLauncher{});
}

at::Tensor transfer_forward(const at::Tensor& value_cl, const at::Tensor& index, const TransferGeometry& g) {
  at::Tensor out = at::empty({g.N, g.Cv, g.Hq * g.s, g.Wq * g.s},
                             value_cl.options().memory_format(at::MemoryFormat::ChannelsLast));
  int bad = 0;
  APNT_DISPATCH_FLOATING(value_cl.scalar_type(), "apnt_transfer_forward", [&] {
    TransferGatherBody<scalar_t, at::opmath_type<scalar_t>> body;
    body.value = value_cl.data_ptr<scalar_t>();
    body.index = index.data_ptr<int64_t>();
    body.out = out.data_ptr<scalar_t>();
    body.bad_index = &bad;
    body.g = g;
    const int64_t pixels = g.N * g.Hq * g.s * g.Wq * g.s;
    body.n = pixels * g.Cv;
    if (grid_emulation_enabled()) {
      run_elementwise_cpu(body, body.n);
    } else {
      at::parallel_for(0, pixels, 256, [&](int64_t b, int64_t e) {
        for (int64_t p = b; p < e; ++p) body.pixel(p, 0, g.Cv);
      });
    }
  });
  APNT_CHECK_INDEX(bad == 0, g);
  return out;
}

at::Tensor transfer_backward(const at::Tensor& grad_cl, const at::Tensor& index, const TransferGeometry& g) {
  const auto acc_type = grad_cl.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // (at::zeros ignores the memory format of its options: allocate channels_last, then zero)
  at::Tensor grad_value = at::empty({g.N, g.Cv, g.Hk * g.s, g.Wk * g.s},
                                    grad_cl.options().dtype(acc_type).memory_format(at::MemoryFormat::ChannelsLast))
                              .zero_();
  APNT_DISPATCH_FLOATING(grad_cl.scalar_type(), "apnt_transfer_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TransferScatterBody<scalar_t, acc_t> body;
    body.grad_out = grad_cl.data_ptr<scalar_t>();
    body.index = index.data_ptr<int64_t>();
    body.grad_value = grad_value.data_ptr<acc_t>();
    body.g = g;
    body.n = g.Cv;
    if (grid_emulation_enabled()) {
      run_elementwise_cpu(body, body.n);
    } else {  // each thread owns a block of channels: race-free and deterministic
      at::parallel_for(0, g.Cv, 1, [&](int64_t c0, int64_t c1) { body.channels(c0, c1); });
    }
  });
  return grad_value.to(grad_cl.scalar_type());
}

}  // namespace cpu
}  // namespace match
}  // namespace apnt
