#include "common/memory.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <algorithm>
#include <atomic>
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
  int64_t held = 0;           // bytes in `blocks`
  int64_t live = 0;           // bytes of blocks handed out and not yet given back
  int64_t high_water = 0;     // the most `live` has been (since the last release(): apnt.ops.empty_cache())

  // A block of at least `bytes` (its size in *got): a cached one if any fits, else a new one.
  void* obtain(int64_t bytes, int64_t* got) {
    if (void* data = take(bytes, got)) return data;
    *got = bytes;
    return allocate(bytes);
  }

 private:
  // The smallest cached block of bytes..2*bytes (a much larger one would waste what it holds), or null. While
  // held, a block larger than the request only when its slack does not lift `live` past the high-water mark.
  void* take(int64_t bytes, int64_t* got) {
    std::lock_guard<std::mutex> lock(mutex);
    const int64_t room = hold_depth.load() > 0 ? std::max(high_water, live + bytes) : -1;
    int best = -1;
    for (int i = 0; i < int(blocks.size()); ++i) {
      const int64_t size = blocks[i].bytes;
      if (size >= bytes && size <= 2 * bytes && (room < 0 || live + size <= room) &&
          (best < 0 || size < blocks[best].bytes))
        best = i;
    }
    if (best < 0) return nullptr;
    const Block b = blocks[best];
    blocks.erase(blocks.begin() + best);
    held -= b.bytes;
    note_live(b.bytes);
    *got = b.bytes;
    return b.data;
  }

  // A new block of `bytes`. While held (no cap), first evicts what it must so that cached + live bytes stay
  // within the larger of the high-water mark and what this request itself needs: the cache never raises the
  // peak above one that the same calls without it reach. Outside a hold the cap bounds the cache.
  void* allocate(int64_t bytes) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex);
      const int64_t bound = std::max(high_water, live + bytes);
      while (hold_depth.load() > 0 && held > 0 && live + bytes + held > bound) evict_oldest(evicted);
      note_live(bytes);
    }
    for (void* p : evicted) c10::free_cpu(p);
    void* data = c10::alloc_cpu(size_t(bytes));
    advise_huge_pages(data, size_t(bytes));
    return data;
  }

 public:
  // Keeps the block, then trims.
  void give_back(void* data, int64_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      blocks.push_back({data, bytes});
      held += bytes;
      live -= bytes;
    }
    trim();
  }

  // Frees the oldest blocks until the cache is within its cap.
  void trim() {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex);
      while (held > effective_cap() && !blocks.empty()) evict_oldest(evicted);
    }
    for (void* p : evicted) c10::free_cpu(p);  // outside the lock: returning pages to the kernel takes a while
  }

  int64_t release() {
    std::vector<Block> all;
    {
      std::lock_guard<std::mutex> lock(mutex);
      all.swap(blocks);
      held = 0;
      high_water = live;
    }
    int64_t bytes = 0;
    for (const Block& b : all) {
      bytes += b.bytes;
      c10::free_cpu(b.data);
    }
    return bytes;
  }

 private:
  void evict_oldest(std::vector<void*>& evicted) {  // mutex held; the caller frees them outside the lock
    evicted.push_back(blocks.front().data);
    held -= blocks.front().bytes;
    blocks.erase(blocks.begin());
  }

  void note_live(int64_t bytes) {  // mutex held
    live += bytes;
    high_water = std::max(high_water, live);
  }
};

WorkspaceCache& workspace_cache() {
  static WorkspaceCache* cache = new WorkspaceCache;
  return *cache;
}

}  // namespace

// While workspaces are held, every large CPU allocation (ATen's too: torch.cat, clone, op outputs) is a cache
// block: AHDRNet at 1500x1000 allocates ~14 GB of maps per call with a ~2.9 GB peak, and a fresh page
// costs a fault and the kernel's zeroing (clear_page: 18 % of the call's CPU time on the 2-core EPYC). A freed map's
// block serves the next map of up to its size instead. Installed as c10's CPU allocator at the first hold;
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
  const bool cacheable = options.device().is_cpu() && numel > 0 && bytes <= effective_cap() &&
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
  if (--hold_depth == 0) workspace_cache().trim();  // back within the cap
}

int64_t cached_workspace_bytes() {
  WorkspaceCache& c = workspace_cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.held;
}

}  // namespace apnt
