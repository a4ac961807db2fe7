#include "conv/winograd.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "common/cpu_clones.h"
#include "conv/winograd_gemm.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // see winograd.h

namespace apnt {
namespace conv {
namespace cpu {
namespace {

constexpr int kTile = 4;         // output tile edge
constexpr int kIn = 6;           // input tile edge
constexpr int kPoints = 36;      // kIn * kIn
// Tiles per GEMM batch. With MKL's bmm 96 measured 10-20% faster than 48 (its per-call overhead is spread over
// more rows). Our own GEMM has no such overhead: there the chunk is as large as lets V (36 x chunk x K) and
// M (36 x chunk x O) stay within 768 KB of L2, in steps of the kernel's 6 rows, 12 to 48. The input transform's
// stores then hit L2 instead of missing it: 224->32 at 512^2 dilation 2, 80.7 -> 75.6 ms at 18 rather than 48;
// 128->128, 160 -> 142 ms; 64->32 (48 either way) unchanged (2-core EPYC, medians of 7, interleaved).
constexpr int64_t kChunkAten = 96, kChunkOwnGemmMax = 48, kChunkOwnGemmMin = 12;
constexpr int64_t kChunkL2Bytes = 768 << 10;

int64_t own_gemm_chunk(int64_t K, int64_t O) {
  const int64_t fit = kChunkL2Bytes / (kPoints * (K + O) * int64_t(sizeof(float))) / 6 * 6;
  return std::max(kChunkOwnGemmMin, std::min(kChunkOwnGemmMax, fit));
}
Plane plane_of_impl(const at::Tensor& t) {
  return {t.data_ptr<float>(), t.size(1), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// One output tile: image n, sub-lattice (py, px), first lattice row/column r0, c0. int64 like every index here:
// int32 fields wrapped for batches or maps with a dimension >= 2**31 (zero-stride expanded inputs are read in place).
struct Tile {
  int64_t n, py, px, r0, c0;
};

std::vector<Tile> enumerate_tiles(int64_t N, int64_t H, int64_t W, int64_t d) {
  std::vector<Tile> tiles;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t py = 0; py < std::min(d, H); ++py)
      for (int64_t px = 0; px < std::min(d, W); ++px) {
        const int64_t hp = (H - py + d - 1) / d, wp = (W - px + d - 1) / d;
        for (int64_t r = 0; r < hp; r += kTile)
          for (int64_t c = 0; c < wp; c += kTile)
            tiles.push_back({n, py, px, r, c});
      }
  return tiles;
}


// V[p][t][k0 + c] = (B^T d B)[p] for the tile's 6x6 input window of one input plane.
APNT_CPU_CLONES
void transform_input_tile(const Plane& in, const Tile& tile, int64_t H, int64_t W, int64_t d, float* V,
                          int64_t t, int64_t chunk, int64_t K, int64_t k0) {
  const float* base = in.data + tile.n * in.sn;
  const int64_t sc = in.sc;
  int64_t row_off[kIn], col_off[kIn];
  bool row_ok[kIn], col_ok[kIn];
  for (int i = 0; i < kIn; ++i) {
    const int64_t y = tile.py + d * (tile.r0 + i - 1), x = tile.px + d * (tile.c0 + i - 1);
    row_ok[i] = y >= 0 && y < H;
    col_ok[i] = x >= 0 && x < W;
    row_off[i] = y * in.sy;
    col_off[i] = x * in.sx;
  }
  Lanes tv[kPoints], cv[kIn], rv[kIn];
  for (int64_t c0 = 0; c0 < in.channels; c0 += kLanes) {
    const int lanes = int(std::min<int64_t>(kLanes, in.channels - c0));
    for (int j = 0; j < kIn; ++j) {  // columns: B^T d, one loaded column at a time
      for (int i = 0; i < kIn; ++i)
        cv[i] = row_ok[i] && col_ok[j] ? load_lanes(base + row_off[i] + col_off[j] + c0 * sc, sc, lanes) : Lanes{};
      winograd_input_1d(cv, 1, tv + j, kIn);
    }
    float* dst = V + t * K + k0 + c0;
    for (int i = 0; i < kIn; ++i) {
      winograd_input_1d(tv + i * kIn, 1, rv, 1);  // rows: (B^T d) B
      for (int j = 0; j < kIn; ++j) store_lanes(dst + int64_t(i * kIn + j) * chunk * K, 1, rv[j], lanes);
    }
  }
}

// A^T m A plus bias for one tile from M[p][t][0..O) (rows of `ldm` >= O floats), handed to the epilogue per block
// of kLanes channels.
APNT_CPU_CLONES
void transform_output_tile(const float* M, int64_t t, int64_t chunk, int64_t O, int64_t ldm, const Tile& tile,
                           int64_t H, int64_t W, int64_t d, const float* bias, const TileEpilogue& epilogue) {
  OutputTile ot;
  ot.n = tile.n;
  ot.rows = ot.cols = 0;
  for (int i = 0; i < kTile; ++i) {
    const int64_t y = tile.py + d * (tile.r0 + i), x = tile.px + d * (tile.c0 + i);
    if (y < H) ot.y[ot.rows++] = y;
    if (x < W) ot.x[ot.cols++] = x;
  }
  Lanes mv[kPoints], tv[kTile * kIn], yv[kTile * kTile];
  for (int64_t o0 = 0; o0 < O; o0 += kLanes) {
    const int lanes = int(std::min<int64_t>(kLanes, O - o0));
    const float* src = M + t * ldm + o0;
    for (int p = 0; p < kPoints; ++p) mv[p] = load_lanes(src + int64_t(p) * chunk * ldm, 1, lanes);
    for (int j = 0; j < kIn; ++j) winograd_output_1d(mv + j, kIn, tv + j, kIn);            // columns: A^T m
    for (int i = 0; i < kTile; ++i) winograd_output_1d(tv + i * kIn, 1, yv + i * kTile, 1);  // rows: 4x4
    if (bias) {
      const Lanes bv = load_lanes(bias + o0, 1, lanes);
      for (auto& v : yv) v += bv;
    }
    epilogue.apply(ot, o0, lanes, yv);
  }
}

// Z[p][t][o] = (A dY A^T)[p] for the tile's 4x4 output gradient window (zeros outside the map): the adjoint
// of transform_output_tile, for the weight gradient.
APNT_CPU_CLONES
void transform_grad_tile(const Plane& gz, const Tile& tile, int64_t H, int64_t W, int64_t d, float* Z, int64_t t,
                         int64_t chunk) {
  const int64_t O = gz.channels;
  int64_t ys[kTile], xs[kTile];
  bool row_ok[kTile], col_ok[kTile];
  for (int i = 0; i < kTile; ++i) {
    ys[i] = tile.py + d * (tile.r0 + i);
    xs[i] = tile.px + d * (tile.c0 + i);
    row_ok[i] = ys[i] < H;
    col_ok[i] = xs[i] < W;
  }
  Lanes dy[kTile * kTile], tv[kTile * kIn], mv[kPoints];
  for (int64_t o0 = 0; o0 < O; o0 += kLanes) {
    const int lanes = int(std::min<int64_t>(kLanes, O - o0));
    for (int i = 0; i < kTile; ++i)
      for (int j = 0; j < kTile; ++j)
        dy[i * kTile + j] = row_ok[i] && col_ok[j] ? load_lanes(gz.at(tile.n, o0, ys[i], xs[j]), gz.sc, lanes)
                                                   : Lanes{};
    for (int i = 0; i < kTile; ++i) winograd_output_adjoint_1d(dy + i * kTile, 1, tv + i * kIn, 1);  // rows
    for (int j = 0; j < kIn; ++j) winograd_output_adjoint_1d(tv + j, kIn, mv + j, kIn);              // columns
    float* dst = Z + t * O + o0;
    for (int p = 0; p < kPoints; ++p) store_lanes(dst + int64_t(p) * chunk * O, 1, mv[p], lanes);
  }
}

}  // namespace

Plane plane_of(const at::Tensor& t) { return plane_of_impl(t); }

namespace {
typedef int32_t LaneInts __attribute__((vector_size(kLanes * sizeof(int32_t))));  // bit pattern of a float

// e^x on 16 lanes: x = n ln2 + r with |r| <= ln2/2, e^r by its degree-6 Taylor polynomial (relative error
// < 2e-7, about 2 ulp), 2^n through the exponent bits. x is clamped to [-87, 88] so 2^n stays a normal
// float: e^-87 ~ 1.6e-38 stands in for anything smaller, which changes 1 / (1 + e^-z) by less than 1e-37.
// NaN passes through the clamps and the polynomial. Scalar expf per lane made sigmoid epilogues the
// largest cost of the attention ops.
inline Lanes exp_lanes(Lanes x) {
  x = x < -87.f ? Lanes{} - 87.f : x;
  x = x > 88.f ? Lanes{} + 88.f : x;
  const float kLog2e = 1.44269504f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f, kRound = 12582912.f;
  const Lanes n = (x * kLog2e + kRound) - kRound;  // round to nearest (1.5 * 2^23 trick)
  const Lanes r = (x - n * kLn2Hi) - n * kLn2Lo;
  Lanes p = r * (1.f / 720) + (1.f / 120);
  p = p * r + (1.f / 24);
  p = p * r + (1.f / 6);
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const LaneInts bits = (__builtin_convertvector(n, LaneInts) + 127) << 23;
  Lanes scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
}  // namespace

APNT_CPU_CLONES
void activate_lanes(Lanes& z, Activation act, float slope) {
  switch (act) {
    case Activation::kNone: break;
    case Activation::kRelu: z = z < 0.f ? Lanes{} : z; break;  // NaN stays NaN, as in F.relu
    case Activation::kLeakyRelu: z = z < 0.f ? z * slope : z; break;
    case Activation::kSigmoid: z = 1.f / (1.f + exp_lanes(-z)); break;
    default:
      for (int l = 0; l < kLanes; ++l) z[l] = activate<float>(z[l], act, slope);
  }
}

void ActivationEpilogue::apply(const OutputTile& tile, int64_t o0, int lanes, Lanes* z) const {
  for (int i = 0; i < tile.rows; ++i)
    for (int j = 0; j < tile.cols; ++j) {
      Lanes& v = z[i * 4 + j];
      activate_lanes(v, act, slope);
      float* dst = out.at(tile.n, o0, tile.y[i], tile.x[j]);
      if (accumulate) v += load_lanes(dst, out.sc, lanes);
      store_lanes(dst, out.sc, v, lanes);
    }
}

namespace {
// The filter transform g -> G g G^T as a (9, 36) fp64 matrix: row i*3+j is the transform of the unit filter
// e_ij, by the same 1-D transforms. Filters then transform as one fp64 GEMM (the 1/6 and 1/24 factors would
// round twice in fp32; as scalar fp64 divisions per filter they cost more than a small convolution).
const at::Tensor& filter_transform_matrix() {
  static const at::Tensor m = [] {
    at::Tensor t = at::empty({9, kPoints}, at::TensorOptions().dtype(at::kDouble));
    double* out = t.data_ptr<double>();
    for (int e = 0; e < 9; ++e) {
      double f[9] = {}, u[kIn * 3];
      f[e] = 1.0;
      for (int j = 0; j < 3; ++j) winograd_filter_1d(f + j, 3, u + j, 3);                    // G g: 6x3
      for (int i = 0; i < kIn; ++i) winograd_filter_1d(u + i * 3, 1, out + e * kPoints + i * kIn, 1);  // (G g) G^T
    }
    return t;
  }();
  return m;
}
}  // namespace

at::Tensor winograd_filter(const at::Tensor& w, bool for_grad_input) {
  // (O*K, 9) fp64 filters times the (9, 36) transform, then laid out (36, K, O), or for the input gradient
  // (36, O, K) of the spatially flipped filters.
  const int64_t O = w.size(0), K = w.size(1);
  const at::Tensor g = (for_grad_input ? w.flip({2, 3}) : w).to(at::kDouble).reshape({O * K, 9});
  const at::Tensor u = at::mm(g, filter_transform_matrix()).to(at::kFloat).view({O, K, kPoints});
  return for_grad_input ? u.permute({2, 0, 1}).contiguous() : u.permute({2, 1, 0}).contiguous();
}

bool winograd_applicable(const std::vector<at::Tensor>& inputs, const at::Tensor& w) {
  if (w.size(2) != 3 || w.size(3) != 3 || w.scalar_type() != at::kFloat) return false;
  for (const auto& x : inputs)
    if (x.scalar_type() != at::kFloat || x.device().type() != at::kCPU) return false;
  return true;
}

void winograd_conv3x3(const std::vector<at::Tensor>& inputs, const at::Tensor& filter,
                      const c10::optional<at::Tensor>& bias, int64_t dilation, const TileEpilogue& epilogue) {
  const at::Tensor& x0 = inputs.front();
  const int64_t N = x0.size(0), H = x0.size(2), W = x0.size(3), d = dilation;
  const int64_t K = filter.size(1), O = filter.size(2);
  // A few output channels (AHDRNet's last conv: 3) run through our GEMM on filters zero-padded to 16: at::bmm's
  // per-call overhead made that 64->3 conv ~60 % GEMM at 1500x1000.
  const int64_t O16 = (O + 15) / 16 * 16;
  const bool own_gemm = filter.is_contiguous() && winograd_gemm_usable(O16);
  const at::Tensor U = own_gemm && O16 != O ? at::constant_pad_nd(filter, {0, O16 - O}) : filter;
  const int64_t ldm = own_gemm ? O16 : O;
  std::vector<at::Tensor> held;  // NCHW inputs converted once: the input transform then loads whole vectors
  std::vector<Plane> planes;
  for (const auto& x : inputs) {
    TORCH_INTERNAL_ASSERT(x.size(0) == N && x.size(2) == H && x.size(3) == W);
    held.push_back(channels_last_fast(x));
    planes.push_back(plane_of(held.back()));
  }
  const std::vector<Tile> tiles = enumerate_tiles(N, H, W, d);
  const int64_t T = int64_t(tiles.size());
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* bptr = b.defined() ? b.data_ptr<float>() : nullptr;
  const int64_t chunk = own_gemm ? own_gemm_chunk(K, ldm) : kChunkAten;
  const int64_t chunks = (T + chunk - 1) / chunk;

  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor V = at::empty({kPoints, chunk, K}, filter.options());
    at::Tensor M = at::empty({kPoints, chunk, ldm}, filter.options());
    for (int64_t ci = begin; ci < end; ++ci) {
      const int64_t t0 = ci * chunk, n = std::min<int64_t>(chunk, T - t0);
      float* v = V.data_ptr<float>();
      for (int64_t t = 0; t < n; ++t) {
        int64_t k0 = 0;
        for (const Plane& p : planes) {
          transform_input_tile(p, tiles[t0 + t], H, W, d, v, t, chunk, K, k0);
          k0 += p.channels;
        }
      }
      if (n < chunk)  // last chunk: zero the unused rows so the full-size GEMM reads no garbage
        for (int p = 0; p < kPoints; ++p) std::fill(v + (p * chunk + n) * K, v + (p + 1) * chunk * K, 0.f);
      if (own_gemm)
        winograd_gemm(v, U.data_ptr<float>(), M.data_ptr<float>(), kPoints, chunk, K, ldm);
      else
        at::bmm_out(M, V, filter);
      const float* m = M.data_ptr<float>();
      for (int64_t t = 0; t < n; ++t)
        transform_output_tile(m, t, chunk, O, ldm, tiles[t0 + t], H, W, d, bptr, epilogue);
    }
  });
}

at::Tensor winograd_grad_weight(const std::vector<at::Tensor>& inputs, const at::Tensor& grad_z, int64_t dilation) {
  const at::Tensor& x0 = inputs.front();
  const int64_t N = x0.size(0), H = x0.size(2), W = x0.size(3), d = dilation, O = grad_z.size(1);
  std::vector<at::Tensor> held;  // as in winograd_conv3x3
  std::vector<Plane> planes;
  int64_t K = 0;
  for (const auto& x : inputs) {
    TORCH_INTERNAL_ASSERT(x.size(0) == N && x.size(2) == H && x.size(3) == W);
    held.push_back(channels_last_fast(x));
    planes.push_back(plane_of(held.back()));
    K += x.size(1);
  }
  const at::Tensor gz_cl = channels_last_fast(grad_z);
  const Plane gplane = plane_of(gz_cl);
  const std::vector<Tile> tiles = enumerate_tiles(N, H, W, d);
  const int64_t T = int64_t(tiles.size());
  const bool own_gemm = winograd_gemm_usable(O);
  const int64_t chunk = own_gemm ? kChunkOwnGemmMax : kChunkAten;  // larger chunks amortise the dU pass
  const int64_t chunks = (T + chunk - 1) / chunk;
  // One dU accumulator per thread, summed at the end: the reduction over tiles needs no locks.
  const int64_t threads = at::get_num_threads();
  at::Tensor dU = at::zeros({threads, kPoints, K, O}, grad_z.options());
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    const int64_t me = at::get_thread_num();
    TORCH_INTERNAL_ASSERT(me >= 0 && me < threads);
    at::Tensor acc = dU[me];
    at::Tensor V = at::empty({kPoints, chunk, K}, grad_z.options());
    at::Tensor Z = at::empty({kPoints, chunk, O}, grad_z.options());
    float* v = V.data_ptr<float>();
    float* z = Z.data_ptr<float>();
    for (int64_t ci = begin; ci < end; ++ci) {
      const int64_t t0 = ci * chunk, n = std::min<int64_t>(chunk, T - t0);
      for (int64_t t = 0; t < n; ++t) {
        int64_t k0 = 0;
        for (const Plane& p : planes) {
          transform_input_tile(p, tiles[t0 + t], H, W, d, v, t, chunk, K, k0);
          k0 += p.channels;
        }
        transform_grad_tile(gplane, tiles[t0 + t], H, W, d, z, t, chunk);
      }
      if (n < chunk)  // last chunk: zero both operands' unused rows (garbage could hold NaN, and NaN * 0 = NaN)
        for (int p = 0; p < kPoints; ++p) {
          std::fill(v + (p * chunk + n) * K, v + (p + 1) * chunk * K, 0.f);
          std::fill(z + (p * chunk + n) * O, z + (p + 1) * chunk * O, 0.f);
        }
      if (own_gemm)
        winograd_gemm_tn_accumulate(v, z, acc.data_ptr<float>(), kPoints, chunk, K, O);
      else
        acc.baddbmm_(V.transpose(1, 2), Z);
    }
  });
  // w = G^T dU G per (o, k): the adjoint of the filter transform, i.e. its matrix transposed, in fp64.
  const at::Tensor dU_sum = threads == 1 ? dU[0] : dU.sum(0);                         // (36, K, O)
  const at::Tensor du = dU_sum.permute({2, 1, 0}).to(at::kDouble).reshape({O * K, kPoints});
  const at::Tensor gw = at::mm(du, filter_transform_matrix().t()).to(at::kFloat).view({O, K, 3, 3});
  return gw;
}

}  // namespace cpu
}  // namespace conv
}  // namespace apnt
