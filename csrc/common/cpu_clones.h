// Hot CPU loops compiled for several x86 levels and picked at load time (GCC/Clang ifunc), so a portable
// build still runs them with AVX-512 or AVX2 where the CPU has it. Put it on small non-template functions.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(APNT_SANITIZE) && !defined(__CUDACC__)
#define APNT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define APNT_CPU_CLONES
#endif
