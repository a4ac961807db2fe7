"""`apnt selftest`: every op × every backend available on this machine's devices against `reference`.

What a GPU user runs first (DESIGN §2). Each case draws random inputs, runs the op forward and backward
with the backend and with `reference` in float64 (or float32 where the backend has no float64 path),
and reports the largest relative error of the output and of every gradient."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from apnt import ops
from apnt.ops import _backends


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    make: Callable[[torch.Generator, torch.device, torch.dtype], tuple]
    call: Callable[..., torch.Tensor]


def _randn(g, device, dtype, *shape, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def _conv_inputs(g, device, dtype):
    return (_randn(g, device, dtype, 2, 8, 13, 11), _randn(g, device, dtype, 6, 8, 3, 3, scale=0.2),
            _randn(g, device, dtype, 6))


def _gate_inputs(g, device, dtype):
    return (_randn(g, device, dtype, 2, 6, 9, 14), _randn(g, device, dtype, 2, 5, 9, 14),
            _randn(g, device, dtype, 12, 11, 3, 3, scale=0.2), _randn(g, device, dtype, 12),
            _randn(g, device, dtype, 6, 12, 3, 3, scale=0.2), _randn(g, device, dtype, 6))


def _blend_inputs(g, device, dtype):
    return (_randn(g, device, dtype, 2, 6, 9, 14), _randn(g, device, dtype, 2, 6, 9, 14),
            _randn(g, device, dtype, 6, 12, 3, 3, scale=0.2), _randn(g, device, dtype, 6))


def _dense_inputs(g, device, dtype):
    c, growth, layers = 5, 3, 3
    weights = [_randn(g, device, dtype, growth, c + i * growth, 3, 3, scale=0.2) for i in range(layers)]
    biases = [_randn(g, device, dtype, growth, scale=0.1) for _ in range(layers)]
    return (_randn(g, device, dtype, 2, c, 9, 14), *weights, *biases,
            _randn(g, device, dtype, c, c + layers * growth, 1, 1, scale=0.2), _randn(g, device, dtype, c))


def _dense_call(x, *rest, backend):
    layers = (len(rest) - 2) // 2
    return ops.dilated_dense_block(x, list(rest[:layers]), list(rest[layers:2 * layers]), rest[-2], rest[-1],
                                   dilation=2, backend=backend)


CASES = [
    Case("conv2d", _conv_inputs,
         lambda x, w, b, backend: ops.conv2d(x, w, b, dilation=2, activation="leaky_relu", backend=backend)),
    Case("attention_gate", _gate_inputs, lambda *a, backend: ops.attention_gate(*a, backend=backend)),
    Case("attention_blend", _blend_inputs, lambda *a, backend: ops.attention_blend(*a, backend=backend)),
    Case("dilated_dense_block", _dense_inputs, _dense_call),
]

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_case(case: Case, backend: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    inputs = case.make(g, device, dtype)
    results = []
    for name in (backend, "reference"):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        out = case.call(*leaves, backend=name)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        out.backward(grad_out.to(device=device, dtype=dtype))
        results.append((out.detach(), [t.grad for t in leaves]))
    (out, grads), (ref_out, ref_grads) = results
    errors = [_rel(out, ref_out)] + [_rel(a, b) for a, b in zip(grads, ref_grads)]
    return {"forward": errors[0], "backward": max(errors[1:]), "ok": max(errors) <= TOLERANCE[dtype]}


def devices() -> list[torch.device]:
    out = [torch.device("cpu")]
    if torch.cuda.is_available():
        out.append(torch.device("cuda"))
    return out


def run(print_fn=print) -> bool:
    """Runs every case; prints a table; True when everything that could run passed."""
    rows, all_ok = [], True
    for device in devices():
        for case in CASES:
            for backend in ("native", "triton"):
                usable = [dt for dt in (torch.float64, torch.float32)
                          if not _backends.availability(device, dt)[backend]]
                if not usable:
                    why = _backends.availability(device, torch.float32)[backend]
                    rows.append((case.op, backend, device.type, "-", "-", "-", "skipped: " + "; ".join(why)))
                for dtype in usable:  # float64 checks the exact paths, float32 the fast ones
                    r = run_case(case, backend, device, dtype)
                    all_ok &= r["ok"]
                    rows.append((case.op, backend, device.type, str(dtype).replace("torch.", ""),
                                 f"{r['forward']:.1e}", f"{r['backward']:.1e}",
                                 "PASS" if r["ok"] else f"FAIL (tolerance {TOLERANCE[dtype]:.0e})"))
    header = ("op", "backend", "device", "dtype", "fwd rel err", "grad rel err", "result")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths)] + rows:
        print_fn("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    print_fn("selftest: " + ("all available backends agree with reference" if all_ok else "FAILURES above"))
    return all_ok
