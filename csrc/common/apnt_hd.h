// APNT_HD marks arithmetic shared by the CUDA kernels and the CPU launchers: one body, several launchers.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define APNT_HD __host__ __device__ __forceinline__
#else
#define APNT_HD inline
#endif

namespace apnt {

template <typename T>
APNT_HD T sigmoid(T z) {
  return T(1) / (T(1) + exp(-z));
}

template <typename T>
APNT_HD T leaky_relu(T z, T slope) {
  return z < T(0) ? z * slope : z;  // NaN stays NaN
}

}  // namespace apnt
