#include "common/memory.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace apnt {

namespace {
// A transparent huge page; also the unit of the workspace cache's blocks.
constexpr int64_t kHugePage = int64_t(2) << 20;

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
  constexpr uintptr_t kHuge = uintptr_t(kHugePage);
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

// APNT_WORKSPACE_CACHE_MB, or -1 when unset.
int64_t configured_cap() {
  static const int64_t cap = [] {
    const char* v = std::getenv("APNT_WORKSPACE_CACHE_MB");
    return v && *v ? std::max<int64_t>(0, std::strtoll(v, nullptr, 10)) << 20 : int64_t(-1);
  }();
  return cap;
}
constexpr int64_t kDefaultCap = int64_t(256) << 20;

// > 0 while some caller holds workspaces (hold_workspaces): then the cap is lifted.
std::atomic<int64_t> hold_depth{0};
// Bytes the cache held when the last outermost hold ended (0 after release_workspaces): without
// APNT_WORKSPACE_CACHE_MB they stay cached for the next call. Blocks lent out then (the call's output, maps saved
// for backward) are freed when they come back unless they fit within 256 MB.
std::atomic<int64_t> retained{0};

int64_t effective_cap() {
  if (hold_depth.load() > 0) return std::numeric_limits<int64_t>::max();
  return configured_cap() >= 0 ? configured_cap() : std::max(kDefaultCap, retained.load());
}

struct Block {
  char* data;
  int64_t bytes;
};

// Cache blocks are whole 2 MB pages, 2 MB aligned: a huge page maps only at an aligned address, and a block then
// splits and moves (below) without breaking one up.
constexpr int64_t kGranule = kHugePage;
int64_t round_to_granule(int64_t bytes) { return (bytes + kGranule - 1) / kGranule * kGranule; }

#if defined(__linux__) && defined(MREMAP_FIXED)
constexpr bool kCanMovePages = true;

void* map_pages(int64_t bytes) {
  const size_t len = size_t(bytes + kGranule);  // room to align
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(p != MAP_FAILED, "apnt workspace cache: not enough memory: you tried to allocate ", bytes, " bytes");
  const uintptr_t begin = uintptr_t(p), first = (begin + kGranule - 1) & ~uintptr_t(kGranule - 1);
  if (first > begin) munmap(p, first - begin);
  if (begin + len > first + bytes) munmap(reinterpret_cast<void*>(first + bytes), begin + len - first - bytes);
  advise_huge_pages(reinterpret_cast<void*>(first), size_t(bytes));
  return reinterpret_cast<void*>(first);
}

void unmap_pages(void* p, int64_t bytes) { munmap(p, size_t(bytes)); }

// APNT_WORKSPACE_MOVE_PAGEWISE=1: one mremap per 2 MB page, as older kernels may need (tests of that path).
bool move_pagewise() {
  static const bool on = [] {
    const char* v = std::getenv("APNT_WORKSPACE_MOVE_PAGEWISE");
    return v && std::strcmp(v, "1") == 0;
  }();
  return on;
}

// The pages of [src, src + bytes) now appear at dst (what was mapped there goes): page-table entries move, the
// memory itself stays where it is, faulted in and huge. A block assembled from several cached ones spans several
// mappings, and Linux before 6.17 moves one mapping per call (EFAULT otherwise): then the range moves in halves.
void move_pages(char* src, int64_t bytes, char* dst) {
  const bool whole = bytes == kGranule || !move_pagewise();
  if (whole && mremap(src, size_t(bytes), size_t(bytes), MREMAP_MAYMOVE | MREMAP_FIXED, dst) != MAP_FAILED) return;
  TORCH_CHECK(bytes > kGranule && (!whole || errno == EFAULT), "apnt workspace cache: mremap failed: ",
              std::strerror(errno));
  const int64_t half = std::max(kGranule, bytes / 2 / kGranule * kGranule);
  move_pages(src, half, dst);
  move_pages(src + half, bytes - half, dst + half);
}
#else
// Elsewhere a block is one allocation: taken whole or freed whole.
constexpr bool kCanMovePages = false;
void* map_pages(int64_t bytes) {
  void* p = c10::alloc_cpu(size_t(bytes));
  advise_huge_pages(p, size_t(bytes));
  return p;
}
void unmap_pages(void* p, int64_t) { c10::free_cpu(p); }
void move_pages(char*, int64_t, char*) { TORCH_INTERNAL_ASSERT(false); }
#endif

// Never destroyed: a tensor freed during interpreter shutdown may still hand its block back.
struct WorkspaceCache {
  std::mutex mutex;
  std::vector<Block> blocks;  // oldest first
  int64_t held = 0;           // bytes in `blocks`

  // A block of `bytes` rounded up to whole 2 MB pages (its size in *got), built from as many cached pages as there
  // are: the head of the smallest cached block that is large enough (its tail stays cached); else cached blocks'
  // pages moved side by side into a new range, largest first, and fresh pages for the rest. Cached pages are
  // faulted in already; a fresh one costs a fault and the kernel's zeroing. Cached plus live bytes only grow when
  // the cache runs dry, so they never pass the most that the same calls have live without a cache.
  void* obtain(int64_t bytes, int64_t* got) {
    const int64_t need = round_to_granule(bytes);
    *got = need;
    std::vector<Block> unusable;  // without page moves: blocks too small for this request
    {
      std::lock_guard<std::mutex> lock(mutex);
      int best = -1;
      for (int i = 0; i < int(blocks.size()); ++i)
        if (blocks[i].bytes >= need && (best < 0 || blocks[i].bytes < blocks[best].bytes)) best = i;
      if (best >= 0 && (kCanMovePages || blocks[best].bytes == need)) {
        char* data = blocks[best].data;
        take_head(best, need);
        return data;
      }
      if (kCanMovePages) {
        char* data = static_cast<char*>(map_pages(need));
        for (int64_t filled = 0; filled < need && !blocks.empty();) {
          int largest = 0;
          for (int i = 1; i < int(blocks.size()); ++i)
            if (blocks[i].bytes > blocks[largest].bytes) largest = i;
          const int64_t n = std::min(blocks[largest].bytes, need - filled);
          move_pages(blocks[largest].data, n, data + filled);
          take_head(largest, n);
          filled += n;
        }
        return data;
      }
      unusable.swap(blocks);  // a miss frees the cache before allocating, as moves would have used it up
      held = 0;
    }
    for (const Block& b : unusable) unmap_pages(b.data, b.bytes);
    return map_pages(need);
  }

  // Keeps the block, or frees it when it does not fit within the cap: outside a hold the blocks already cached stay
  // (those of the last model call), and a training step's saved maps, which come back in backward, are not kept.
  void give_back(void* data, int64_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (held + bytes <= effective_cap()) {
        blocks.push_back({static_cast<char*>(data), bytes});
        held += bytes;
        return;
      }
    }
    unmap_pages(data, bytes);  // outside the lock: returning pages takes a while
  }

  // Frees the oldest blocks until the cache is within its cap (APNT_WORKSPACE_CACHE_MB after a hold).
  void trim() {
    std::vector<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex);
      while (held > effective_cap() && !blocks.empty()) {
        evicted.push_back(blocks.front());
        held -= blocks.front().bytes;
        blocks.erase(blocks.begin());
      }
    }
    for (const Block& b : evicted) unmap_pages(b.data, b.bytes);  // outside the lock: returning pages takes a while
  }

  int64_t release() {
    std::vector<Block> all;
    {
      std::lock_guard<std::mutex> lock(mutex);
      all.swap(blocks);
      held = 0;
      retained = 0;
    }
    int64_t bytes = 0;
    for (const Block& b : all) {
      bytes += b.bytes;
      unmap_pages(b.data, b.bytes);
    }
    return bytes;
  }

 private:
  // Takes the first n bytes of blocks[i] out of the cache (all of it when n is its size). mutex held.
  void take_head(int i, int64_t n) {
    held -= n;
    blocks[i].data += n;
    blocks[i].bytes -= n;
    if (blocks[i].bytes == 0) blocks.erase(blocks.begin() + i);
  }
};

WorkspaceCache& workspace_cache() {
  static WorkspaceCache* cache = new WorkspaceCache;
  return *cache;
}

}  // namespace

// While workspaces are held, every large CPU allocation (ATen's too: torch.cat, clone, op outputs) is a cache
// block: AHDRNet at 1500x1000 allocates ~14 GB of maps per call with a ~2.9 GB peak, and a fresh page
// costs a fault and the kernel's zeroing (clear_page: 18 % of the call's CPU time on the 2-core EPYC). Freed maps'
// pages serve the next maps instead. Installed as c10's CPU allocator at the first hold;
// outside a hold it hands every request to the allocator it replaced, untouched.
namespace {

constexpr size_t kHeldMinBytes = size_t(4) << 20;  // smaller ones: glibc reuses them already

struct HeldBlocks {
  std::mutex mutex;
  std::unordered_map<void*, int64_t> bytes;  // blocks handed out by the allocator below, by address
};
HeldBlocks& held_blocks() {
  static HeldBlocks* blocks = new HeldBlocks;
  return *blocks;
}

c10::Allocator* replaced_allocator = nullptr;

void free_held_or_replaced(void* p) {
  int64_t bytes = -1;
  {
    HeldBlocks& h = held_blocks();
    std::lock_guard<std::mutex> lock(h.mutex);
    auto it = h.bytes.find(p);
    if (it != h.bytes.end()) {
      bytes = it->second;
      h.bytes.erase(it);
    }
  }
  if (bytes >= 0) workspace_cache().give_back(p, bytes);
  else replaced_allocator->raw_deleter()(p);
}

struct HoldingCpuAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    if (hold_depth.load() == 0 || n < kHeldMinBytes) {
      return replaced_allocator->allocate(n);  // raw_deleter below frees its raw allocations as it would
    }
    int64_t got = 0;
    void* data = workspace_cache().obtain(int64_t(n), &got);
    {
      HeldBlocks& h = held_blocks();
      std::lock_guard<std::mutex> lock(h.mutex);
      h.bytes[data] = got;
    }
    return {data, data, &free_held_or_replaced, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_held_or_replaced; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

void install_holding_allocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    replaced_allocator = c10::GetCPUAllocator();
    // Never destroyed: c10 keeps the pointer, and tensors may be allocated during interpreter shutdown.
    c10::SetCPUAllocator(new HoldingCpuAllocator, /*priority=*/1);
  });
}

}  // namespace

at::Tensor empty_workspace(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat memory_format) {
  TORCH_INTERNAL_ASSERT(memory_format == at::MemoryFormat::Contiguous ||
                        memory_format == at::MemoryFormat::ChannelsLast);
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const int64_t bytes = numel * int64_t(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  const bool cacheable = options.device().is_cpu() && numel > 0 && round_to_granule(bytes) <= effective_cap() &&
                         (memory_format == at::MemoryFormat::Contiguous || sizes.size() == 4);
  if (!cacheable) return empty_large(sizes, options.memory_format(memory_format));
  int64_t block_bytes = 0;
  void* data = workspace_cache().obtain(bytes, &block_bytes);
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
    install_holding_allocator();
    ++hold_depth;
    return;
  }
  TORCH_CHECK(hold_depth.load() > 0, "hold_workspaces(false) without a matching hold_workspaces(true)");
  if (--hold_depth > 0) return;
  WorkspaceCache& cache = workspace_cache();
  {
    std::lock_guard<std::mutex> lock(cache.mutex);
    retained = cache.held;
  }
  cache.trim();  // within APNT_WORKSPACE_CACHE_MB when set
}

int64_t cached_workspace_bytes() {
  WorkspaceCache& c = workspace_cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.held;
}

}  // namespace apnt
