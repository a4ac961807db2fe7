// Every schema of the apnt namespace, in one place. Kernels register next to their code
// (TORCH_LIBRARY_IMPL in csrc/<family>/*_ops.cpp). `_fwd` ops return what their `_bwd` needs as extra
// outputs, since register_autograd's setup_context only sees inputs and outputs.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "common/grid.h"
#include "common/memory.h"
#include "conv/winograd_gemm.h"

TORCH_LIBRARY(apnt, m) {
  // conv (DESIGN §3.0)
  m.def("conv2d_fwd(Tensor x, Tensor w, Tensor? b, int dilation, str activation, float negative_slope) -> Tensor");
  m.def(
      "conv2d_bwd(Tensor grad_out, Tensor x, Tensor w, Tensor out, int dilation, str activation, "
      "float negative_slope, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // attention (DESIGN §3.1)
  m.def(
      "attention_gate_fwd(Tensor x, Tensor ref, Tensor w1, Tensor b1, Tensor w2, Tensor b2, float negative_slope)"
      " -> (Tensor out, Tensor attention, Tensor hidden)");
  m.def(
      "attention_gate_bwd(Tensor grad_out, Tensor? grad_attention, Tensor x, Tensor ref, Tensor w1, Tensor w2, "
      "Tensor attention, Tensor hidden, float negative_slope, bool[6] output_mask)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("attention_blend_fwd(Tensor x, Tensor y, Tensor w, Tensor b) -> (Tensor out, Tensor attention)");
  m.def(
      "attention_blend_bwd(Tensor grad_out, Tensor? grad_attention, Tensor x, Tensor y, Tensor w, Tensor attention, "
      "bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  // dense (DESIGN §3.2). `buffer` is the (N, C+L*G, H, W) activation buffer, empty when checkpoint=True.
  m.def(
      "dense_block_fwd(Tensor x, Tensor[] weights, Tensor[] biases, Tensor fuse_weight, Tensor fuse_bias, "
      "int dilation, bool checkpoint) -> (Tensor out, Tensor buffer)");
  m.def(
      "dense_block_bwd(Tensor grad_out, Tensor x, Tensor[] weights, Tensor[] biases, Tensor fuse_weight, "
      "Tensor buffer, int dilation, bool checkpoint) -> (Tensor, Tensor[], Tensor[], Tensor, Tensor)");
  // match (DESIGN §3.3-3.4). patch_match has no gradient; patch_transfer differentiates `value`.
  m.def(
      "patch_match(Tensor query, Tensor key, int patch_size, Tensor? key_mask, int? radius, str precision)"
      " -> (Tensor score, Tensor index)");
  m.def("patch_transfer_fwd(Tensor value, Tensor index, int patch_size, int scale) -> Tensor");
  m.def("patch_transfer_bwd(Tensor grad_out, Tensor index, int patch_size, int scale, int[] value_size) -> Tensor");
  // Run CUDA kernel bodies through the CPU grid emulator (tests). Returns the previous setting.
  m.def("_set_grid_emulation(bool on) -> bool", [](bool on) { return apnt::set_grid_emulation(on); });
  // Which GEMM the CPU Winograd convolution runs for output widths that are a multiple of 16 (apnt info, tests).
  m.def("_winograd_gemm_engine() -> str", []() {
    return std::string(apnt::conv::cpu::winograd_gemm_usable(16) ? "apnt-avx512" : "aten-bmm");
  });
  // The CPU workspace cache (common/memory.h): bytes it holds; empty it, returning the bytes released.
  m.def("_workspace_cache_bytes() -> int", []() { return apnt::cached_workspace_bytes(); });
  m.def("_empty_workspace_cache() -> int", []() { return apnt::release_workspaces(); });
  m.def("_hold_workspaces(bool on) -> ()", [](bool on) { apnt::hold_workspaces(on); });
  m.def("_built_with_cuda() -> bool", []() {
#ifdef APNT_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}

// Importing apnt._C runs the registrations above; the module itself has no Python API.
static struct PyModuleDef apnt_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr, nullptr, nullptr, nullptr, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&apnt_module); }
