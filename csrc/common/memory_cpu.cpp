#include "common/memory.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace apnt {

namespace {
bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("APNT_HUGE_PAGES");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return enabled;
}
}  // namespace

at::Tensor prefer_huge_pages(at::Tensor t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (!t.defined() || !t.is_cpu() || !huge_pages_enabled()) return t;
  const size_t bytes = t.storage().nbytes();
  if (bytes < 2 * kHuge) return t;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.storage().data());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + bytes) & ~(kHuge - 1);
  // Advice only: a kernel without THP (or with it off) answers EINVAL, and the buffer works as before.
  if (last > first) (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return t;
}

}  // namespace apnt
