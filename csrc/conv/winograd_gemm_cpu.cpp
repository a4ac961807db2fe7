#include "conv/winograd_gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/cpu_features.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vectors stay inside this file

namespace apnt {
namespace conv {
namespace cpu {
namespace {

#ifdef APNT_HAVE_X86_AVX512
#define APNT_HAVE_AVX512_GEMM 1

typedef float Vec16 __attribute__((vector_size(64), aligned(4)));

// MR rows x NV*16 columns of C, accumulated over all K in registers (MR*NV + NV of the 32 zmm registers).
// `init` (NV*16 floats, e.g. a bias) or zeros start every row.
template <int MR, int NV>
APNT_AVX512 inline void micro_kernel(const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                                     int64_t ldc, int64_t K, const float* init = nullptr) {
  Vec16 acc[MR][NV];
  for (int j = 0; j < NV; ++j) {
    Vec16 start = {};
    if (init) std::memcpy(&start, init + 16 * j, sizeof(Vec16));
    for (int r = 0; r < MR; ++r) acc[r][j] = start;
  }
  for (int64_t k = 0; k < K; ++k) {
    Vec16 b[NV];
    for (int j = 0; j < NV; ++j) std::memcpy(&b[j], B + k * ldb + 16 * j, sizeof(Vec16));
    for (int r = 0; r < MR; ++r) {
      const float a = A[r * lda + k];
      for (int j = 0; j < NV; ++j) acc[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) std::memcpy(C + r * ldc + 16 * j, &acc[r][j], sizeof(Vec16));
}

// C[0..MR) x [0..NV*16) += sum over t of A[t][r] B[t][:]: rows of C are MR consecutive columns of A.
template <int MR, int NV>
APNT_AVX512 inline void micro_kernel_tn(const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                                        int64_t ldc, int64_t T) {
  Vec16 acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) std::memcpy(&acc[r][j], C + r * ldc + 16 * j, sizeof(Vec16));
  for (int64_t t = 0; t < T; ++t) {
    Vec16 b[NV];
    for (int j = 0; j < NV; ++j) std::memcpy(&b[j], B + t * ldb + 16 * j, sizeof(Vec16));
    for (int r = 0; r < MR; ++r) {
      const float a = A[t * lda + r];
      for (int j = 0; j < NV; ++j) acc[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) std::memcpy(C + r * ldc + 16 * j, &acc[r][j], sizeof(Vec16));
}

template <int MR>
APNT_AVX512 inline void row_block_tn(const float* A, int64_t K, const float* B, float* C, int64_t T, int64_t O) {
  int64_t o = 0;
  for (; o + 64 <= O; o += 64) micro_kernel_tn<MR, 4>(A, K, B + o, O, C + o, O, T);
  if (o + 32 <= O) {
    micro_kernel_tn<MR, 2>(A, K, B + o, O, C + o, O, T);
    o += 32;
  }
  if (o < O) micro_kernel_tn<MR, 1>(A, K, B + o, O, C + o, O, T);
}

APNT_AVX512 void gemm_tn_avx512(const float* A, const float* B, float* C, int64_t points, int64_t T, int64_t K,
                                int64_t O) {
  constexpr int kRows = 6;
  for (int64_t p = 0; p < points; ++p) {
    const float* a = A + p * T * K;
    const float* b = B + p * T * O;
    float* c = C + p * K * O;
    int64_t k = 0;
    for (; k + kRows <= K; k += kRows) row_block_tn<kRows>(a + k, K, b, c + k * O, T, O);
    for (; k < K; ++k) row_block_tn<1>(a + k, K, b, c + k * O, T, O);
  }
}

// Rows of C in blocks of MR; columns in blocks of 64, then 32, then 16 (O is a multiple of 16). A's rows lda apart.
template <int MR>
APNT_AVX512 inline void row_block(const float* A, int64_t lda, const float* B, float* C, int64_t K, int64_t O,
                                  const float* bias = nullptr) {
  int64_t o = 0;
  auto bias_from = [bias](int64_t o) { return bias ? bias + o : nullptr; };
  for (; o + 64 <= O; o += 64) micro_kernel<MR, 4>(A, lda, B + o, O, C + o, O, K, bias_from(o));
  if (o + 32 <= O) {
    micro_kernel<MR, 2>(A, lda, B + o, O, C + o, O, K, bias_from(o));
    o += 32;
  }
  if (o < O) micro_kernel<MR, 1>(A, lda, B + o, O, C + o, O, K, bias_from(o));
}

constexpr int kRows = 6;

APNT_AVX512 void rows_avx512(const float* A, int64_t lda, const float* B, float* C, int64_t T, int64_t K, int64_t O,
                             const float* bias) {
  int64_t t = 0;
  for (; t + kRows <= T; t += kRows) row_block<kRows>(A + t * lda, lda, B, C + t * O, K, O, bias);
  for (; t < T; ++t) row_block<1>(A + t * lda, lda, B, C + t * O, K, O, bias);
}

APNT_AVX512 void gemm_avx512(const float* A, const float* B, float* C, int64_t points, int64_t T, int64_t K,
                             int64_t O) {
  for (int64_t p = 0; p < points; ++p) rows_avx512(A + p * T * K, K, B + p * K * O, C + p * T * O, T, K, O, nullptr);
}

#endif

bool engine_enabled() {
#ifdef APNT_HAVE_AVX512_GEMM
  static const bool enabled = [] {
    const char* choice = std::getenv("APNT_WINOGRAD_GEMM");
    return cpu_has_avx512() && !(choice && std::strcmp(choice, "aten") == 0);
  }();
  return enabled;
#else
  return false;
#endif
}

}  // namespace

bool winograd_gemm_usable(int64_t O) { return O % 16 == 0 && engine_enabled(); }

void winograd_gemm(const float* A, const float* B, float* C, int64_t points, int64_t T, int64_t K, int64_t O) {
#ifdef APNT_HAVE_AVX512_GEMM
  gemm_avx512(A, B, C, points, T, K, O);
#else
  (void)A, (void)B, (void)C, (void)points, (void)T, (void)K, (void)O;
#endif
}

void gemm_bias_rows(const float* A, int64_t lda, const float* B, const float* bias, float* C, int64_t T, int64_t K,
                    int64_t O) {
#ifdef APNT_HAVE_AVX512_GEMM
  // Blocks of 96 rows (16 register blocks): B (K x O) stays in L2 while each thread streams its rows of A.
  at::parallel_for(0, (T + 95) / 96, 1, [&](int64_t b0, int64_t b1) {
    const int64_t t0 = b0 * 96, t1 = std::min(T, b1 * 96);
    rows_avx512(A + t0 * lda, lda, B, C + t0 * O, t1 - t0, K, O, bias);
  });
#else
  (void)A, (void)lda, (void)B, (void)bias, (void)C, (void)T, (void)K, (void)O;
#endif
}

void winograd_gemm_tn_accumulate(const float* A, const float* B, float* C, int64_t points, int64_t T, int64_t K,
                                 int64_t O) {
#ifdef APNT_HAVE_AVX512_GEMM
  gemm_tn_avx512(A, B, C, points, T, K, O);
#else
  (void)A, (void)B, (void)C, (void)points, (void)T, (void)K, (void)O;
#endif
}

}  // namespace cpu
}  // namespace conv
}  // namespace apnt
