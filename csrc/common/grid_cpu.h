// The CPU side of grid.h: run an elementwise body either as a parallel loop (fast path) or, when grid
// emulation is on, as the CUDA launch would run it (tests use this to execute every CUDA kernel body).
#pragma once
#include <ATen/Parallel.h>

#include "common/grid.h"

namespace apnt {

// Elementwise bodies expose `element(i)`; their operator() is the grid-stride loop over it.
template <typename Body>
void run_elementwise_cpu(const Body& body, int64_t n) {
  if (n == 0) return;
  if (grid_emulation_enabled()) {
    emulate_grid(body, elementwise_config(n));
    return;
  }
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body.element(i);
  });
}

}  // namespace apnt

namespace apnt {
struct CpuLauncher {
  template <typename Body>
  void operator()(const Body& body, int64_t n) const { run_elementwise_cpu(body, n); }
};
}  // namespace apnt
