// Launch geometry shared by CUDA launches and the CPU grid emulator.
//
// A kernel body is a functor `body(const ThreadCtx&, int phase)` with `static constexpr int kPhases`.
// Phases are separated by block-wide barriers; `ctx.shared` is the block's shared buffer. On a GPU the
// generic __global__ wrapper (grid_cuda.cuh) runs every phase with __syncthreads() between them; on the
// CPU, `emulate_grid` runs each phase for every thread of a block in turn, which is exactly what a barrier
// guarantees. Bodies must not use warp intrinsics (no lock-step between emulated threads).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/apnt_hd.h"

namespace apnt {

struct Dim3 {
  int x = 1, y = 1, z = 1;
};

struct ThreadCtx {
  Dim3 block_idx, thread_idx, block_dim, grid_dim;
  char* shared = nullptr;

  APNT_HD int64_t global_x() const { return int64_t(block_idx.x) * block_dim.x + thread_idx.x; }
  APNT_HD int64_t stride_x() const { return int64_t(grid_dim.x) * block_dim.x; }
  APNT_HD int linear_thread() const {
    return (thread_idx.z * block_dim.y + thread_idx.y) * block_dim.x + thread_idx.x;
  }
};

struct LaunchConfig {
  Dim3 grid, block;
  int64_t shared_bytes = 0;
};

// Grid-stride 1-D launch: enough blocks to cover n, capped so huge tensors loop instead of overflowing.
inline LaunchConfig elementwise_config(int64_t n, int threads = 256, int64_t max_blocks = 65535) {
  LaunchConfig c;
  c.block.x = threads;
  c.grid.x = int(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, max_blocks)));
  return c;
}

// True when the CPU launchers should run the CUDA kernel bodies through the grid emulator.
bool grid_emulation_enabled();
bool set_grid_emulation(bool on);  // returns the previous value

template <typename Body>
void emulate_grid(const Body& body, const LaunchConfig& cfg) {
  std::vector<char> shared(size_t(std::max<int64_t>(cfg.shared_bytes, 1)));
  ThreadCtx ctx;
  ctx.grid_dim = cfg.grid;
  ctx.block_dim = cfg.block;
  ctx.shared = shared.data();
  for (int bz = 0; bz < cfg.grid.z; ++bz)
    for (int by = 0; by < cfg.grid.y; ++by)
      for (int bx = 0; bx < cfg.grid.x; ++bx) {
        ctx.block_idx = {bx, by, bz};
        std::fill(shared.begin(), shared.end(), char(0x5a));  // garbage, like real shared memory
        for (int phase = 0; phase < Body::kPhases; ++phase)
          for (int tz = 0; tz < cfg.block.z; ++tz)
            for (int ty = 0; ty < cfg.block.y; ++ty)
              for (int tx = 0; tx < cfg.block.x; ++tx) {
                ctx.thread_idx = {tx, ty, tz};
                body(ctx, phase);
              }
      }
}

}  // namespace apnt
