// The 36 per-point GEMMs of the Winograd convolution, M[p] = V[p] (T x K) * U[p] (K x O), for the shapes
// it has: T = one chunk of tiles (tens of rows), K and O a few dozen to a few hundred channels.
// MKL's batched GEMM runs these at 50-70 fp32 GFLOP/s per core on this package's AVX-512 CI machine (AMD
// EPYC); a 6 x 64 register-blocked kernel with the filter panel in L1 reaches ~90-100, so on AVX-512 CPUs
// we run our own, and at::bmm elsewhere (on AVX2-only CPUs a 16-lane accumulator block would spill).
#pragma once
#include <cstdint>

namespace apnt {
namespace conv {
namespace cpu {

// True when winograd_gemm() may be called for this output width: the CPU has AVX-512, O is a multiple
// of 16, and APNT_WINOGRAD_GEMM is not "aten" (the switch that lets benchmarks compare both engines).
bool winograd_gemm_usable(int64_t O);

// For p in [0, points): C[p] = A[p] B[p] with A[p] (T x K, row stride K), B[p] (K x O), C[p] (T x O), all
// dense row-major, consecutive p `T*K`, `K*O`, `T*O` floats apart. Only when winograd_gemm_usable(O).
void winograd_gemm(const float* A, const float* B, float* C, int64_t points, int64_t T, int64_t K, int64_t O);

// C (T x O, dense) = bias + A B for A (T x K, rows `lda` floats apart) and B (K x O, dense): a 1x1 convolution
// over channels_last pixels with its bias (the dense block's fusion), rows split over threads. bias: O floats.
// Only when winograd_gemm_usable(O).
void gemm_bias_rows(const float* A, int64_t lda, const float* B, const float* bias, float* C, int64_t T, int64_t K,
                    int64_t O);

// For p in [0, points): C[p] += A[p]^T B[p] with A[p] (T x K), B[p] (T x O), C[p] (K x O), laid out as above:
// the weight gradient's reduction over tiles. Only when winograd_gemm_usable(O).
void winograd_gemm_tn_accumulate(const float* A, const float* B, float* C, int64_t points, int64_t T, int64_t K,
                                 int64_t O);

}  // namespace cpu
}  // namespace conv
}  // namespace apnt
