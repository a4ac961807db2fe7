// The GPU side of grid.h: one generic __global__ wrapper runs any kernel body.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "common/grid.h"

namespace apnt {

template <typename Body>
__global__ void run_body_kernel(Body body) {
  extern __shared__ __align__(16) char shared_mem[];
  ThreadCtx ctx;
  ctx.block_idx = {int(blockIdx.x), int(blockIdx.y), int(blockIdx.z)};
  ctx.thread_idx = {int(threadIdx.x), int(threadIdx.y), int(threadIdx.z)};
  ctx.block_dim = {int(blockDim.x), int(blockDim.y), int(blockDim.z)};
  ctx.grid_dim = {int(gridDim.x), int(gridDim.y), int(gridDim.z)};
  ctx.shared = shared_mem;
#pragma unroll 1
  for (int phase = 0; phase < Body::kPhases; ++phase) {
    body(ctx, phase);
    if (phase + 1 < Body::kPhases) __syncthreads();
  }
}

template <typename Body>
void launch_body_cuda(const Body& body, const LaunchConfig& cfg) {
  dim3 grid(cfg.grid.x, cfg.grid.y, cfg.grid.z), block(cfg.block.x, cfg.block.y, cfg.block.z);
  run_body_kernel<Body><<<grid, block, cfg.shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(body);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace apnt

namespace apnt {
struct CudaLauncher {
  template <typename Body>
  void operator()(const Body& body, int64_t n) const {
    if (n > 0) launch_body_cuda(body, elementwise_config(n));
  }
};
}  // namespace apnt
