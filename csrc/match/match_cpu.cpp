// CPU launchers of the match family: the tiled Gram search, and the transfer gather / scatter.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/cpu_clones.h"
#include "common/grid_cpu.h"
#include "common/layout.h"
#include "match/match_launch.h"

namespace apnt {
namespace match {
namespace cpu {
namespace {

// Query and key tiles. Global search: 16 x 32 positions: Gram GEMMs of 612 x 612 x C still run near MKL's peak,
// the halo costs 1.43x the multiplies for k = 3, and the per-thread workspace (G: 1.5 MB) is a quarter of 16 x 64's
// — measured on the 2-core AMD EPYC: 250x375 no slower (48 vs 50 s), 64x64 peak RSS increase 24 -> 13 MiB.
// Radius mode: 8 x 32, so little work falls outside the window.
constexpr int64_t kMaxTileH = 16, kMaxTileW = 32;
struct TileShape {
  int64_t h, w;
};

// Features of the tile [y0, y0+TH) x [x0, x0+TW) plus a `half`-pixel halo, one row per pixel (zeros outside).
// f: channels_last, or NCHW (`nchw`, float only): each valid run of a tile row is then one (C x run) transpose.
template <typename scalar_t>
void gather_tile(const scalar_t* f, bool nchw, int64_t n, int64_t H, int64_t W, int64_t C, int64_t y0, int64_t x0,
                 int64_t half, TileShape tile, scalar_t* out) {
  const int64_t PH = tile.h + 2 * half, PW = tile.w + 2 * half;
  const int64_t xa = std::max<int64_t>(0, x0 - half), xb = std::min<int64_t>(W, x0 - half + PW);
  for (int64_t i = 0; i < PH; ++i) {
    const int64_t y = y0 - half + i;
    scalar_t* row = out + i * PW * C;
    if (y < 0 || y >= H || xb <= xa) {
      std::fill(row, row + PW * C, scalar_t(0));
      continue;
    }
    const int64_t ja = xa - (x0 - half), jb = xb - (x0 - half);  // the valid columns of this padded row
    std::fill(row, row + ja * C, scalar_t(0));
    std::fill(row + jb * C, row + PW * C, scalar_t(0));
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (nchw) {
        transpose_matrix(f + n * C * H * W + y * W + xa, H * W, row + ja * C, C, C, xb - xa);
        continue;
      }
    }
    std::copy(f + ((n * H + y) * W + xa) * C, f + ((n * H + y) * W + xb) * C, row + ja * C);
  }
}

// One (query tile, key tile) pair after its Gram matrix G is known.
template <typename scalar_t>
struct PairScan {
  const scalar_t* G;
  const scalar_t* key_norm;  // (Hk, Wk) of this image
  const bool* mask;          // (Hk, Wk) or null
  int64_t half, Hk, Wk, ky0, kx0, radius;  // radius < 0: global
  bool same_size;
  TileShape tile;
};

// Patch dot products of query (a, b) with the key tile: sums of G along the k*k shifted diagonals.
template <typename scalar_t>
[[gnu::always_inline]] inline void diagonal_sums(const PairScan<scalar_t>& p, int64_t a, int64_t b, scalar_t* acc) {
  const int64_t TH = p.tile.h, TW = p.tile.w, PW = TW + 2 * p.half, P = (TH + 2 * p.half) * PW;
  for (int64_t i = 0; i < TH * TW; ++i) acc[i] = scalar_t(0);
  for (int64_t dy = -p.half; dy <= p.half; ++dy)
    for (int64_t dx = -p.half; dx <= p.half; ++dx) {
      const scalar_t* row = p.G + ((a + p.half + dy) * PW + b + p.half + dx) * P;
      for (int64_t c = 0; c < TH; ++c) {
        const scalar_t* seg = row + (c + p.half + dy) * PW + p.half + dx;
        scalar_t* dst = acc + c * TW;
        for (int64_t d = 0; d < TW; ++d) dst[d] += seg[d];
      }
    }
}

// Scores of one query against the key tile, offered to its running best. Most tiles cannot beat the best
// found so far: their maximum (one vectorised pass) is checked first and the tie-rule scan skipped.
template <typename scalar_t>
[[gnu::always_inline]] inline void scan_query_impl(const PairScan<scalar_t>& p, int64_t a, int64_t b, int64_t qy,
                                                   int64_t qx, int64_t Wq, scalar_t qnorm, scalar_t* acc,
                                                   Best<scalar_t>& best) {
  diagonal_sums(p, a, b, acc);
  const scalar_t inf = std::numeric_limits<scalar_t>::infinity();
  const int64_t TW = p.tile.w;
  const int64_t rows = std::min<int64_t>(p.tile.h, p.Hk - p.ky0), cols = std::min<int64_t>(TW, p.Wk - p.kx0);
  scalar_t top = -inf;
  for (int64_t c = 0; c < rows; ++c) {
    const int64_t ky = p.ky0 + c;
    const bool row_out = p.radius >= 0 && (ky < qy - p.radius || ky > qy + p.radius);
    const scalar_t* kn = p.key_norm + ky * p.Wk + p.kx0;
    const bool* m = p.mask ? p.mask + ky * p.Wk + p.kx0 : nullptr;
    scalar_t* s = acc + c * TW;
    for (int64_t d = 0; d < cols; ++d) {
      const int64_t kx = p.kx0 + d;
      const bool out = row_out || (p.radius >= 0 && (kx < qx - p.radius || kx > qx + p.radius)) || (m && !m[d]);
      const scalar_t v = s[d] / (qnorm * kn[d]);
      s[d] = out || v != v ? -inf : v;  // excluded and NaN scores are never chosen
      top = s[d] > top ? s[d] : top;
    }
  }
  const int64_t own = p.same_size ? qy * Wq + qx : -1;
  const bool own_here = own >= 0 && qy >= p.ky0 && qy < p.ky0 + rows && qx >= p.kx0 && qx < p.kx0 + cols;
  if (top == -inf || (!own_here && best.index >= 0 && top < best.max - scalar_t(kTieTolerance))) return;
  for (int64_t c = 0; c < rows; ++c)
    for (int64_t d = 0; d < cols; ++d) {
      const scalar_t v = acc[c * TW + d];
      if (v != -inf) best.offer(v, (p.ky0 + c) * p.Wk + p.kx0 + d, own);
    }
}

APNT_CPU_CLONES
void scan_query(const PairScan<float>& p, int64_t a, int64_t b, int64_t qy, int64_t qx, int64_t Wq, float qnorm,
                float* acc, Best<float>& best) {
  scan_query_impl(p, a, b, qy, qx, Wq, qnorm, acc, best);
}

APNT_CPU_CLONES
void scan_query(const PairScan<double>& p, int64_t a, int64_t b, int64_t qy, int64_t qx, int64_t Wq, double qnorm,
                double* acc, Best<double>& best) {
  scan_query_impl(p, a, b, qy, qx, Wq, qnorm, acc, best);
}

template <typename scalar_t>
void tiled_search_impl(const at::Tensor& q_cl, const at::Tensor& k_cl, const at::Tensor& qn_t, const at::Tensor& kn_t,
                       const at::Tensor& mask_t, int64_t patch_size, c10::optional<int64_t> radius, at::Tensor& score_t,
                       at::Tensor& index_t) {
  const int64_t N = q_cl.size(0), C = q_cl.size(1), Hq = q_cl.size(2), Wq = q_cl.size(3);
  const int64_t Hk = k_cl.size(2), Wk = k_cl.size(3);
  const TileShape tile = radius ? TileShape{8, 32} : TileShape{kMaxTileH, kMaxTileW};
  const int64_t TH = tile.h, TW = tile.w;
  const int64_t half = patch_size / 2, PH = TH + 2 * half, PW = TW + 2 * half, P = PH * PW;
  const bool same_size = Hq == Hk && Wq == Wk;
  const scalar_t *qf = q_cl.data_ptr<scalar_t>(), *kf = k_cl.data_ptr<scalar_t>();
  // channels_last wins where both hold (C == 1, or 1x1 maps): the same bytes either way.
  const bool q_nchw = !q_cl.is_contiguous(at::MemoryFormat::ChannelsLast),
             k_nchw = !k_cl.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_INTERNAL_ASSERT((!q_nchw || (q_cl.is_contiguous() && q_cl.scalar_type() == at::kFloat)) &&
                        (!k_nchw || (k_cl.is_contiguous() && k_cl.scalar_type() == at::kFloat)));
  const scalar_t *qn = qn_t.data_ptr<scalar_t>(), *kn = kn_t.data_ptr<scalar_t>();
  const bool* mask = mask_t.defined() ? mask_t.data_ptr<bool>() : nullptr;
  float* score = score_t.data_ptr<float>();
  int64_t* index = index_t.data_ptr<int64_t>();
  const int64_t qty = (Hq + TH - 1) / TH, qtx = (Wq + TW - 1) / TW;
  const int64_t kty = (Hk + TH - 1) / TH, ktx = (Wk + TW - 1) / TW;

  at::parallel_for(0, N * qty * qtx, 1, [&](int64_t begin, int64_t end) {
    const auto opts = q_cl.options().memory_format(at::MemoryFormat::Contiguous);
    at::Tensor A = at::empty({P, C}, opts), B = at::empty({P, C}, opts), G = at::empty({P, P}, opts);
    std::vector<scalar_t> acc(TH * TW);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / (qty * qtx), y0 = (t / qtx) % qty * TH, x0 = t % qtx * TW;
      gather_tile(qf, q_nchw, n, Hq, Wq, C, y0, x0, half, tile, A.data_ptr<scalar_t>());
      std::vector<Best<scalar_t>> best(TH * TW);
      // Key tiles: all of them, or those meeting the radius window of this query tile.
      int64_t ty0 = 0, ty1 = kty, tx0 = 0, tx1 = ktx;
      if (radius) {
        ty0 = std::max<int64_t>(0, y0 - *radius) / TH;
        ty1 = std::min<int64_t>(Hk - 1, y0 + TH - 1 + *radius) / TH + 1;
        tx0 = std::max<int64_t>(0, x0 - *radius) / TW;
        tx1 = std::min<int64_t>(Wk - 1, x0 + TW - 1 + *radius) / TW + 1;
      }
      for (int64_t ky0t = ty0; ky0t < ty1; ++ky0t)
        for (int64_t kx0t = tx0; kx0t < tx1; ++kx0t) {
          const int64_t ky0 = ky0t * TH, kx0 = kx0t * TW;
          gather_tile(kf, k_nchw, n, Hk, Wk, C, ky0, kx0, half, tile, B.data_ptr<scalar_t>());
          at::mm_out(G, A, B.t());  // Gram of per-pixel features: 9x fewer multiplies than unfolded patches
          PairScan<scalar_t> scan{G.data_ptr<scalar_t>(), kn + n * Hk * Wk, mask ? mask + n * Hk * Wk : nullptr,
                                  half, Hk, Wk, ky0, kx0, radius ? *radius : -1, same_size, tile};
          for (int64_t a = 0; a < TH && y0 + a < Hq; ++a)
            for (int64_t b = 0; b < TW && x0 + b < Wq; ++b)
              scan_query(scan, a, b, y0 + a, x0 + b, Wq, qn[(n * Hq + y0 + a) * Wq + x0 + b], acc.data(),
                         best[a * TW + b]);
        }
      for (int64_t a = 0; a < TH && y0 + a < Hq; ++a)
        for (int64_t b = 0; b < TW && x0 + b < Wq; ++b) {
          const int64_t o = (n * Hq + y0 + a) * Wq + x0 + b;
          best[a * TW + b].finish(score + o, index + o);
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
