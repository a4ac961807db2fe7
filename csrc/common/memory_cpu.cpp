#include "common/memory.h"

#include <c10/core/impl/alloc_cpu.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

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

// madvise(MADV_HUGEPAGE) on the 2 MB-aligned interior of [data, data + bytes) when it holds a whole huge page.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (!huge_pages_enabled() || bytes < 2 * kHuge) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + bytes) & ~(kHuge - 1);
  // Advice only: a kernel without THP (or with it off) answers EINVAL, and the buffer works as before.
  if (last > first) (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}
}  // namespace

at::Tensor prefer_huge_pages(at::Tensor t) {
  if (t.defined() && t.is_cpu()) advise_huge_pages(t.storage().mutable_data(), t.storage().nbytes());
  return t;
}

namespace {

int64_t workspace_cache_cap() {
  static const int64_t cap = [] {
    const char* v = std::getenv("APNT_WORKSPACE_CACHE_MB");
    const int64_t mb = v && *v ? int64_t(std::strtoll(v, nullptr, 10)) : 256;
    return std::max<int64_t>(0, mb) << 20;
  }();
  return cap;
}

// > 0 while some caller holds workspaces (hold_workspaces): then the cap is lifted.
std::atomic<int64_t> hold_depth{0};

int64_t effective_cap() {
  return hold_depth.load() > 0 ? std::numeric_limits<int64_t>::max() : workspace_cache_cap();
}

struct Block {
  void* data;
  int64_t bytes;
};

// Never destroyed: a tensor freed during interpreter shutdown may still hand its block back.
struct WorkspaceCache {
  std::mutex mutex;
  std::vector<Block> blocks;  // oldest first
  int64_t held = 0;

  // The smallest cached block of bytes..2*bytes (a much larger one would waste what it holds), or null.
  void* take(int64_t bytes, int64_t* got) {
    std::lock_guard<std::mutex> lock(mutex);
    int best = -1;
    for (int i = 0; i < int(blocks.size()); ++i) {
      const int64_t size = blocks[i].bytes;
      if (size >= bytes && size <= 2 * bytes && (best < 0 || size < blocks[best].bytes)) best = i;
    }
    if (best < 0) return nullptr;
    const Block b = blocks[best];
    blocks.erase(blocks.begin() + best);
    held -= b.bytes;
    *got = b.bytes;
    return b.data;
  }

  // Keeps the block, then trims.
  void give_back(void* data, int64_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      blocks.push_back({data, bytes});
      held += bytes;
    }
    trim();
  }

  // Frees the oldest blocks until the cache is within its cap.
  void trim() {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex);
      while (held > effective_cap() && !blocks.empty()) {
        evicted.push_back(blocks.front().data);
        held -= blocks.front().bytes;
        blocks.erase(blocks.begin());
      }
    }
    for (void* p : evicted) c10::free_cpu(p);  // outside the lock: returning pages to the kernel takes a while
  }

  int64_t release() {
    std::vector<Block> all;
    {
      std::lock_guard<std::mutex> lock(mutex);
      all.swap(blocks);
      held = 0;
    }
    int64_t bytes = 0;
    for (const Block& b : all) {
      bytes += b.bytes;
      c10::free_cpu(b.data);
    }
    return bytes;
  }
};

WorkspaceCache& workspace_cache() {
  static WorkspaceCache* cache = new WorkspaceCache;
  return *cache;
}

}  // namespace

at::Tensor empty_workspace(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat memory_format) {
  TORCH_INTERNAL_ASSERT(memory_format == at::MemoryFormat::Contiguous ||
                        memory_format == at::MemoryFormat::ChannelsLast);
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const int64_t bytes = numel * int64_t(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  const bool cacheable = options.device().is_cpu() && numel > 0 && bytes <= effective_cap() &&
                         (memory_format == at::MemoryFormat::Contiguous || sizes.size() == 4);
  if (!cacheable) return empty_large(sizes, options.memory_format(memory_format));
  int64_t block_bytes = 0;
  void* data = workspace_cache().take(bytes, &block_bytes);
  if (!data) {
    block_bytes = bytes;
    data = c10::alloc_cpu(size_t(bytes));
    advise_huge_pages(data, size_t(bytes));
  }
  at::Tensor flat = at::from_blob(
      data, {numel}, [block_bytes](void* p) { workspace_cache().give_back(p, block_bytes); },
      options.memory_format(c10::nullopt));
  if (memory_format == at::MemoryFormat::Contiguous) return flat.view(sizes);
  // (N, C, H, W) sizes over (N, H, W, C) memory.
  return flat.view({sizes[0], sizes[2], sizes[3], sizes[1]}).permute({0, 3, 1, 2});
}

int64_t release_workspaces() { return workspace_cache().release(); }

void hold_workspaces(bool on) {
  if (on) {
    ++hold_depth;
    return;
  }
  TORCH_CHECK(hold_depth.load() > 0, "hold_workspaces(false) without a matching hold_workspaces(true)");
  if (--hold_depth == 0) workspace_cache().trim();  // back within the cap
}

int64_t cached_workspace_bytes() {
  WorkspaceCache& c = workspace_cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.held;
}

}  // namespace apnt
