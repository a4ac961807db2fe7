#include "common/layout.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "common/cpu_features.h"
#include "common/memory.h"

#ifdef APNT_HAVE_X86_AVX512
#include <immintrin.h>
// GCC 12 warns inside avx512fintrin.h that the intrinsics' internal _mm512_undefined_ps() is uninitialised
// (a known false positive of inlined undefined-value builtins), once per inlined call.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace apnt {
namespace {

constexpr int64_t kB = 16;  // block edge: one AVX-512 vector of floats

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols (both <= 16): the portable path.
void transpose_block_scalar(const float* src, int64_t src_stride, int rows, int cols, float* dst,
                            int64_t dst_stride) {
  float block[kB][kB];
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) block[j][i] = src[i * src_stride + j];
  for (int j = 0; j < cols; ++j) std::copy(block[j], block[j] + rows, dst + j * dst_stride);
}

#ifdef APNT_HAVE_X86_AVX512
// The same in registers: 16 (masked) row loads, three rounds of interleaving (32-bit elements, 64-bit pairs,
// 128-bit quarters twice), 16 (masked) row stores.
APNT_AVX512 void transpose_block_avx512(const float* src, int64_t src_stride, int rows, int cols, float* dst,
                                        int64_t dst_stride) {
  const __mmask16 col_mask = __mmask16((1u << cols) - 1), row_mask = __mmask16((1u << rows) - 1);
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i)
    r[i] = i < rows ? _mm512_maskz_loadu_ps(col_mask, src + i * src_stride) : _mm512_setzero_ps();
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4)
    for (int k = 0; k < 2; ++k) {
      const __m512d a = _mm512_castps_pd(t[i + k]), b = _mm512_castps_pd(t[i + k + 2]);
      r[i + 2 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      r[i + 2 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    }
  // r[4q + m] now holds, in each 128-bit quarter l, element 4l + m of rows 4q..4q+3.
  for (int h = 0; h < 2; ++h)
    for (int m = 0; m < 4; ++m) {
      t[8 * h + m] = _mm512_shuffle_f32x4(r[8 * h + m], r[8 * h + 4 + m], 0x88);
      t[8 * h + 4 + m] = _mm512_shuffle_f32x4(r[8 * h + m], r[8 * h + 4 + m], 0xdd);
    }
  for (int m = 0; m < 8; ++m) {
    r[m] = _mm512_shuffle_f32x4(t[m], t[8 + m], 0x88);
    r[8 + m] = _mm512_shuffle_f32x4(t[m], t[8 + m], 0xdd);
  }
  for (int j = 0; j < cols; ++j) _mm512_mask_storeu_ps(dst + j * dst_stride, row_mask, r[j]);
}
#endif

using BlockFn = void (*)(const float*, int64_t, int, int, float*, int64_t);
BlockFn block_fn() {
#ifdef APNT_HAVE_X86_AVX512
  if (cpu_has_avx512()) return transpose_block_avx512;
#endif
  return transpose_block_scalar;
}

// Per image: the (rows_total x cols_total) matrix at src (row stride src_row, images src_image apart) -> its
// transpose at dst (row stride dst_row, images dst_image apart). 16 x 16 blocks; jobs are strips of 16 source
// columns (all rows), so each job writes whole destination rows.
void transpose_images(const float* src, int64_t src_image, int64_t src_row, float* dst, int64_t dst_image,
                      int64_t dst_row, int64_t images, int64_t rows_total, int64_t cols_total) {
  const BlockFn fn = block_fn();
  const int64_t strips = (cols_total + kB - 1) / kB;
  at::parallel_for(0, images * strips, 8, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / strips, j0 = (job % strips) * kB;
      const int cols = int(std::min(kB, cols_total - j0));
      const float* s = src + n * src_image + j0;
      float* d = dst + n * dst_image + j0 * dst_row;
      for (int64_t i0 = 0; i0 < rows_total; i0 += kB)
        fn(s + i0 * src_row, src_row, int(std::min(kB, rows_total - i0)), cols, d + i0, dst_row);
    }
  });
}

// Pixels of t (N, C, H, W) `step` floats apart with channels adjacent: channels_last, or a channel slice of it.
bool pixel_major(const at::Tensor& t, int64_t& step) {
  const int64_t W = t.size(3);
  step = t.stride(2) / std::max<int64_t>(W, 1);
  return t.stride(1) == 1 && t.stride(3) == step && t.stride(2) == W * step && step >= t.size(1) &&
         t.stride(0) >= t.size(2) * W * step;
}

}  // namespace

bool copy_nchw_into_pixel_major(const at::Tensor& src, at::Tensor& dst) {
  int64_t step = 0;
  if (src.scalar_type() != at::kFloat || dst.scalar_type() != at::kFloat || !src.is_cpu() || !dst.is_cpu() ||
      !src.is_contiguous() || src.sizes() != dst.sizes() || src.numel() == 0 || !pixel_major(dst, step))
    return false;
  // NCHW image: a (C, HW) matrix; pixel-major: its transpose (HW, C), pixels `step` floats apart.
  const int64_t C = src.size(1), HW = src.size(2) * src.size(3);
  transpose_images(src.data_ptr<float>(), C * HW, HW, dst.data_ptr<float>(), dst.stride(0), step, src.size(0), C,
                   HW);
  return true;
}

void transpose_matrix(const float* src, int64_t src_row, float* dst, int64_t dst_row, int64_t rows, int64_t cols) {
  const BlockFn fn = block_fn();
  for (int64_t j0 = 0; j0 < cols; j0 += kB)
    for (int64_t i0 = 0; i0 < rows; i0 += kB)
      fn(src + i0 * src_row + j0, src_row, int(std::min(kB, rows - i0)), int(std::min(kB, cols - j0)),
         dst + j0 * dst_row + i0, dst_row);
}

bool copy_pixel_major(const at::Tensor& src, at::Tensor& dst) {
  int64_t src_step = 0, dst_step = 0;
  if (src.scalar_type() != at::kFloat || dst.scalar_type() != at::kFloat || !src.is_cpu() || !dst.is_cpu() ||
      src.sizes() != dst.sizes() || src.numel() == 0 || !pixel_major(src, src_step) || !pixel_major(dst, dst_step))
    return false;
  const int64_t C = src.size(1), HW = src.size(2) * src.size(3), N = src.size(0);
  const float* s = src.data_ptr<float>();
  float* d = dst.data_ptr<float>();
  const int64_t s_image = src.stride(0), d_image = dst.stride(0);
  at::parallel_for(0, N * HW, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / HW, q = p % HW;
      std::memcpy(d + n * d_image + q * dst_step, s + n * s_image + q * src_step, size_t(C) * sizeof(float));
    }
  });
  return true;
}

at::Tensor channels_last_fast(const at::Tensor& t) {
  if (t.is_contiguous(at::MemoryFormat::ChannelsLast) || !t.is_contiguous() || t.scalar_type() != at::kFloat ||
      !t.is_cpu() || t.numel() == 0)
    return t;  // channels_last already, or strides the transforms read as they are
  at::Tensor out = empty_large(t.sizes(), t.options().memory_format(at::MemoryFormat::ChannelsLast));
  TORCH_INTERNAL_ASSERT(copy_nchw_into_pixel_major(t, out));
  return out;
}

at::Tensor to_format_fast(const at::Tensor& t, at::MemoryFormat format) {
  if (t.is_contiguous(format)) return t;
  int64_t step = 0;
  if (format != at::MemoryFormat::Contiguous || t.scalar_type() != at::kFloat || !t.is_cpu() || t.numel() == 0 ||
      !pixel_major(t, step))
    return t.contiguous(format);
  at::Tensor out = empty_large(t.sizes(), t.options());
  const int64_t C = t.size(1), HW = t.size(2) * t.size(3);
  transpose_images(t.data_ptr<float>(), t.stride(0), step, out.data_ptr<float>(), C * HW, HW, t.size(0), HW, C);
  return out;
}

}  // namespace apnt
