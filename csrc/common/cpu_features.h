// Run-time CPU feature checks for the code paths written with target attributes (AVX-512 intrinsics).
#pragma once

namespace apnt {

#if defined(__x86_64__) && defined(__GNUC__)
#define APNT_HAVE_X86_AVX512 1
#define APNT_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,fma")))
inline bool cpu_has_avx512() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
  }();
  return has;
}
#else
inline bool cpu_has_avx512() { return false; }
#endif

}  // namespace apnt
