"""Backend choice (DESIGN §2): `reference`, `native`, `triton`, `auto`; errors that list every reason.

Each op family describes its implementations as `Backend` objects with `reasons(device, dtype)`; `select`
returns the one to run or raises `BackendUnavailableError` naming each backend and why it cannot serve the
inputs (xformers style). There is never a silent fallback to something slower.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from apnt.ops import _native

BACKENDS = ("reference", "native", "triton")
_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class BackendUnavailableError(RuntimeError):
    """No backend (or not the requested one) can serve these inputs; the message lists why, per backend."""


def triton_reasons(device: torch.device, dtype: torch.dtype) -> list[str]:
    try:
        import triton  # noqa: F401
    except ImportError:
        return ["the `triton` package is not installed"]
    out = []
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        out.append("CPU tensors run Triton only under TRITON_INTERPRET=1 (the interpreter, for tests)")
    elif device.type not in ("cpu", "cuda"):
        out.append(f"device type {device.type!r} is not supported")
    if dtype == torch.float64:
        out.append("float64 is not supported by the Triton kernels (use native or reference)")
    return out


def native_reasons(device: torch.device, dtype: torch.dtype) -> list[str]:
    out = _native.reasons(device)
    if dtype not in _FLOATING:
        out.append(f"dtype {dtype} is not supported")
    return out


@dataclass(frozen=True)
class Backend:
    name: str
    reasons: Callable[[torch.device, torch.dtype], list[str]]


REFERENCE = Backend("reference", lambda device, dtype: [])
NATIVE = Backend("native", native_reasons)
TRITON = Backend("triton", triton_reasons)
_BY_NAME = {b.name: b for b in (REFERENCE, NATIVE, TRITON)}


def _requested(backend: str) -> str:
    if backend == "auto":
        backend = os.environ.get("APNT_BACKEND", "auto") or "auto"
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"argument 'backend' (or APNT_BACKEND): expected one of auto, {', '.join(BACKENDS)}; "
                         f"got {backend!r}")
    return backend


def select(op: str, backend: str, device: torch.device, dtype: torch.dtype, gpu_default: str = "native") -> str:
    """Name of the backend that runs `op` for tensors on `device` of `dtype`.

    `auto` means `native` on the CPU and `gpu_default` on CUDA (DESIGN §2)."""
    name = _requested(backend)
    if name == "auto":
        name = gpu_default if device.type == "cuda" else "native"
        if device.type not in ("cpu", "cuda"):
            name = "reference"
    why = _BY_NAME[name].reasons(device, dtype)
    if not why:
        return name
    lines = [f"apnt.ops.{op}: backend {name!r} cannot run on {device.type} tensors of {dtype}:"]
    for b in BACKENDS:
        r = _BY_NAME[b].reasons(device, dtype)
        lines.append(f"  {b}: " + ("available" if not r else "; ".join(r)))
    lines.append("Pass backend=... or set APNT_BACKEND to one that is available.")
    raise BackendUnavailableError("\n".join(lines))


def availability(device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, list[str]]:
    """{backend: reasons it cannot run} for `apnt info`."""
    return {b: _BY_NAME[b].reasons(device, dtype) for b in BACKENDS}
