"""Input checks shared by every op: each error names the argument and the expected shape or type."""
from __future__ import annotations

import math

import torch

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(t, name: str, dims: int, shape_doc: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"argument '{name}': expected a torch.Tensor of shape {shape_doc}, got {type(t).__name__}")
    if t.dim() != dims:
        raise ValueError(f"argument '{name}': expected a {dims}-D tensor of shape {shape_doc}, got shape {tuple(t.shape)}")
    if t.dtype not in FLOATING:
        raise TypeError(f"argument '{name}': expected a floating tensor (float16, bfloat16, float32, float64), "
                        f"got {t.dtype}")


def not_empty(t: torch.Tensor, name: str, shape_doc: str) -> None:
    if t.numel() == 0:
        raise ValueError(f"argument '{name}': expected a non-empty tensor of shape {shape_doc}, got shape {tuple(t.shape)}")


def like(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"argument '{name}': expected device {ref.device} (that of '{ref_name}'), got {t.device}")
    # Under autocast, mixed floating dtypes are expected (bf16 activations, fp32 parameters): the
    # Autocast kernels registered in _autocast.py cast them all before any backend sees them.
    if t.dtype != ref.dtype and not torch.is_autocast_enabled(ref.device.type):
        raise TypeError(f"argument '{name}': expected dtype {ref.dtype} (that of '{ref_name}'), got {t.dtype}")


def shape(t: torch.Tensor, name: str, expected: tuple, doc: str) -> None:
    """`expected` holds ints, or None where any size is accepted."""
    ok = t.dim() == len(expected) and all(e is None or s == e for s, e in zip(t.shape, expected))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"argument '{name}': expected shape {doc} = {want}, got {tuple(t.shape)}")


def feature_map(t, name: str, doc: str = "(N, C, H, W)") -> None:
    tensor(t, name, 4, doc)
    not_empty(t, name, doc)


def odd_kernel(w: torch.Tensor, name: str, doc: str) -> int:
    k = w.shape[-1]
    if w.shape[-2] != k or k % 2 == 0:
        raise ValueError(f"argument '{name}': expected a square kernel of odd size k in {doc}, got shape {tuple(w.shape)}")
    return k


def positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"argument '{name}': expected an int >= 1, got {v!r}")
    return v


def slope(v, name: str = "negative_slope") -> float:
    # Written with comparisons only: under torch.compile a varying slope is a SymFloat, where math.isfinite
    # would break the graph.
    if isinstance(v, bool) or not isinstance(v, (int, float, torch.SymFloat)) or not (0 <= v < math.inf):
        raise ValueError(f"argument '{name}': expected a finite number >= 0 (the backward reads the activation's "
                         f"derivative from its output, which needs a monotonic activation), got {v!r}")
    return v if isinstance(v, torch.SymFloat) else float(v)
