"""Loading the compiled extension `apnt._C` (which registers the `apnt::` ops) and what it can serve."""
from __future__ import annotations

import contextlib

import torch


def _load() -> str | None:
    try:
        import apnt._C  # noqa: F401  (its import runs the TORCH_LIBRARY registrations)
    except ImportError as e:  # not built, or built against another torch
        return f"the C++ extension apnt._C is not importable ({e}); build it with `pip install -e .`"
    return None


_LOAD_ERROR = _load()  # once, at import: torch.compile then reads a plain module global


def load_error() -> str | None:
    """None when apnt._C imported, else the sentence saying why not."""
    return _LOAD_ERROR


def built_with_cuda() -> bool:
    return load_error() is None and bool(torch.ops.apnt._built_with_cuda())


def winograd_gemm_engine() -> str | None:
    """The GEMM behind the CPU Winograd 3x3 convolution: "apnt-avx512" (our kernel: AVX-512 CPUs, output
    channels a multiple of 16) or "aten-bmm" (MKL through at::bmm; also forced by APNT_WINOGRAD_GEMM=aten)."""
    return None if load_error() is not None else str(torch.ops.apnt._winograd_gemm_engine())


def empty_cache() -> int:
    """Free the CPU work buffers the native ops keep for their next call (256 MiB at most, or what the last
    `hold_workspaces()` block used, e.g. a native AHDRNet call: ~3 GB at 1500x1000; APNT_WORKSPACE_CACHE_MB=N caps
    it at N MiB). Returns the bytes released. Like torch.cuda.empty_cache: memory other code may then use; the next
    native call allocates afresh."""
    return 0 if load_error() is not None else int(torch.ops.apnt._empty_workspace_cache())


@contextlib.contextmanager
def hold_workspaces():
    """Within the block, the workspace cache keeps what native ops free whatever its size, so consecutive ops that
    need the same large buffer allocate it once (AHDRNet's three dense blocks: 1.5 GB each at 1500x1000), and every
    CPU tensor of 4 MB or more (PyTorch's own too: torch.cat, clone) is drawn from it: from freed maps' pages, already
    faulted in, instead of fresh ones the kernel must fault in and zero (smaller freed blocks are combined by moving
    their pages, larger ones split). The cache grows only when it is empty, so the peak does not rise. On exit it
    keeps what it holds for the next call, until `empty_cache()` (or within APNT_WORKSPACE_CACHE_MB MiB when that
    is set). Nests; a no-op without the extension or while torch.compile traces."""
    active = load_error() is None and not torch.compiler.is_compiling()
    if active:
        torch.ops.apnt._hold_workspaces(True)
    try:
        yield
    finally:
        if active:
            torch.ops.apnt._hold_workspaces(False)


def workspace_cache_bytes() -> int:
    """Bytes of CPU work buffers the native ops hold between calls now."""
    return 0 if load_error() is not None else int(torch.ops.apnt._workspace_cache_bytes())


def reasons(device: torch.device) -> list[str]:
    """Why `native` cannot run on `device` (empty when it can)."""
    err = load_error()
    if err is not None:
        return [err]
    if device.type == "cuda" and not built_with_cuda():
        return ["apnt._C was built without CUDA (APNT_CUDA=0, or no nvcc at build time)"]
    if device.type not in ("cpu", "cuda"):
        return [f"device type {device.type!r} is not supported (cpu, cuda)"]
    return []


@contextlib.contextmanager
def grid_emulation(on: bool = True):
    """Run the CUDA kernel bodies of the native CPU backend through the CPU grid emulator (DESIGN §2).

    Tests use this to execute every CUDA kernel body on a machine without a GPU."""
    if load_error() is not None:
        raise RuntimeError(load_error())
    previous = torch.ops.apnt._set_grid_emulation(on)
    try:
        yield
    finally:
        torch.ops.apnt._set_grid_emulation(previous)
