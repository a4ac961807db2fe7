// Large CPU work buffers backed by transparent huge pages.
// The dense block's buffer (N, C+L*G, H, W) is tens of MB and every layer gathers 6x6 windows from it with
// a pixel stride of 1 KB: with 4 KB pages nearly every window row is a TLB miss, and a fresh buffer takes a page
// fault per 4 KB. Where the kernel's THP mode is `madvise` (the common default) a 2 MB page needs asking for.
// Measured on the 2-core AMD EPYC: the 256^2 dense block 130 -> 110 ms. APNT_HUGE_PAGES=0 turns it off.
#pragma once
#include <ATen/ATen.h>

namespace apnt {

// Marks the 2 MB-aligned interior of t's storage for huge pages (madvise MADV_HUGEPAGE) when t is a CPU tensor
// of at least 4 MB whose pages are not yet touched (a fresh at::empty), and returns t. A no-op elsewhere
// (CUDA tensors, small tensors, systems without THP).
at::Tensor prefer_huge_pages(at::Tensor t);

// at::empty(sizes, options) through prefer_huge_pages.
inline at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return prefer_huge_pages(at::empty(sizes, options));
}

// at::empty_like(like, format) through prefer_huge_pages.
inline at::Tensor empty_large_like(const at::Tensor& like, at::MemoryFormat format) {
  return prefer_huge_pages(at::empty_like(like, format));
}

// A CPU work buffer that the op frees before returning (or autograd frees after backward), drawn from a small
// cache of earlier ones: a block goes back to the cache when its tensor dies, and the next request of a similar
// size reuses it, pages already faulted in (and huge). A fresh 64 MB buffer costs ~7 % of a 256^2 dense block in
// page faults and zeroing, and with THP on, an occasional compaction stall doubles a call. Blocks are whole 2 MB
// pages. Between calls the cache keeps 256 MB, or what the last hold left (below); APNT_WORKSPACE_CACHE_MB=N
// makes it N MB (0: off). Larger requests and CUDA tensors are plain empty_large. `memory_format` may be
// Contiguous or ChannelsLast.
at::Tensor empty_workspace(at::IntArrayRef sizes, const at::TensorOptions& options,
                           at::MemoryFormat memory_format = at::MemoryFormat::Contiguous);

// While held (calls nest), the cache keeps blocks of any size: a model whose consecutive blocks need the same large
// buffer (AHDRNet's three dense blocks, 1.5 GB each at 1500x1000) allocates it once. Held, every CPU allocation of
// 4 MB or more, ATen's included, is a cache block too (the first hold wraps c10's CPU allocator). A request takes the
// head of a large enough cached block, or else the pages of smaller ones moved side by side (mremap) plus fresh ones
// for the rest: cached plus live bytes grow only when the cache is empty, so holding never raises a peak. When the
// outermost hold ends, what the cache then holds stays cached for the next call (like torch.cuda's caching
// allocator: AHDRNet at 1500x1000 then faults no fresh page from its second call on) until release_workspaces();
// APNT_WORKSPACE_CACHE_MB, when set, caps it instead. Blocks still lent out then are freed when they come back,
// unless the cache stays within 256 MB with them.
void hold_workspaces(bool on);

// Frees every cached workspace block; returns the bytes released (apnt.empty_cache()).
int64_t release_workspaces();

// Bytes held by the cache now (tests).
int64_t cached_workspace_bytes();

}  // namespace apnt
