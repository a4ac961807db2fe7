"""Family `match` (DESIGN §3.3-3.4): patch correspondence search and texture transfer.

    patch_match(query, key, *, patch_size=3, key_mask=None, radius=None, precision="ieee") -> (score, index)
    patch_transfer(value, index, *, patch_size=3, scale=1) -> Tensor

The descriptor of position p is the C*k*k vector of the k x k window centred at p (zero padded at the
borders, `F.unfold(.., k, padding=k//2)`), divided by max(||v||_2, 1e-12). For each query position,
patch_match returns the best key position by cosine similarity: `score` (N, Hq, Wq) float32 and `index`
(N, Hq, Wq) int64, flat into Hk*Wk. `key_mask` (N, 1, Hk, Wk) bool excludes False positions; `radius` r
(same-size maps only) searches |dy|, |dx| <= r around the query's own position. Ties (within 1e-6 of the
maximum) prefer the query's own position when it is a candidate, else the lowest flat index. NaN scores
are never chosen; no valid candidate gives index -1 and score 0. Outputs carry no gradient.

patch_transfer is SRNTT's texture swap: value (N, Cv, Hk*s, Wk*s), K = patch_size*s, pad = (K - s)//2;
out = fold(gather(unfold(value, K, padding=pad, stride=s), index)) / fold(count), with count 1 for every
element of a column whose index is valid, 0 where index is -1; 0 where nothing landed. Differentiable
with respect to `value`.

The `reference` backend materialises the Nq x Nk score matrix and the unfolded columns: it is the
definition and the tests' oracle, for small maps. `native` and `triton` (apnt.kernels.match: a flash-style
search over tiles of keys, a per-pixel gather for the transfer) share the fake kernels, autograd and autocast
below; their ops are apnt::<op> and apnt_triton::<op> with the same schemas.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from apnt.ops import _autocast, _backends, _native
from apnt.ops import _validate as V

TIE_TOLERANCE = 1e-6
NORM_EPS = 1e-12


# ---- reference ----------------------------------------------------------------------------------------------

def patch_descriptors(features: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C*k*k, H*W) unit-norm patch descriptors (zero padded; norms clamped at 1e-12)."""
    cols = F.unfold(features, patch_size, padding=patch_size // 2)
    return cols / cols.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)


def candidate_mask(n, hq, wq, hk, wk, key_mask, radius, device):
    """(N, Lq, Lk) bool: which keys each query may take (mask and radius; NaN is handled by the caller)."""
    valid = torch.ones(n, hq * wq, hk * wk, dtype=torch.bool, device=device)
    if key_mask is not None:
        valid &= key_mask.reshape(n, 1, hk * wk)
    if radius is not None:
        qy, qx = torch.meshgrid(torch.arange(hq, device=device), torch.arange(wq, device=device), indexing="ij")
        ky, kx = torch.meshgrid(torch.arange(hk, device=device), torch.arange(wk, device=device), indexing="ij")
        near = ((qy.reshape(-1, 1) - ky.reshape(1, -1)).abs() <= radius) & \
               ((qx.reshape(-1, 1) - kx.reshape(1, -1)).abs() <= radius)
        valid &= near.unsqueeze(0)
    return valid


def patch_match_reference(query, key, *, patch_size=3, key_mask=None, radius=None):
    n, _, hq, wq = query.shape
    hk, wk = key.shape[-2:]
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    scores = torch.bmm(patch_descriptors(query.to(dtype), patch_size).transpose(1, 2),
                       patch_descriptors(key.to(dtype), patch_size))                      # (N, Lq, Lk)
    valid = candidate_mask(n, hq, wq, hk, wk, key_mask, radius, query.device) & ~scores.isnan()
    masked = scores.masked_fill(~valid, float("-inf"))
    best = masked.max(dim=-1, keepdim=True).values
    ties = valid & (masked >= best - TIE_TOLERANCE)
    index = ties.to(torch.int8).argmax(dim=-1)                                             # lowest tied index
    if (hq, wq) == (hk, wk):
        own = torch.arange(hq * wq, device=query.device).expand(n, -1)
        own_tied = ties.gather(-1, own.unsqueeze(-1)).squeeze(-1)
        index = torch.where(own_tied, own, index)
    found = valid.any(dim=-1)
    score = scores.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    index = torch.where(found, index, torch.full_like(index, -1))
    score = torch.where(found, score, torch.zeros_like(score)).float()
    return score.reshape(n, hq, wq), index.reshape(n, hq, wq)


def patch_transfer_reference(value, index, *, patch_size=3, scale=1):
    n, cv = value.shape[:2]
    hq, wq = index.shape[-2:]
    s, big = scale, patch_size * scale
    pad = (big - s) // 2
    hk, wk = value.shape[2] // s, value.shape[3] // s
    # The kernels report out-of-range indices as this ValueError; gather would raise a RuntimeError naming no
    # argument. (A host sync: skipped under torch.compile, where gather still refuses to read out of bounds.)
    if not torch.compiler.is_compiling() and index.numel() and int(index.max()) >= hk * wk:
        raise ValueError(f"argument 'index': values must be negative (no match) or flat key positions in "
                         f"[0, {hk * wk}) of the ({hk}, {wk}) key map that value {tuple(value.shape[2:])} is the "
                         f"scale-{s} image of, got {int(index.max())}")
    cols = F.unfold(value, big, padding=pad, stride=s)                                      # (N, Cv*K*K, Lk)
    flat = index.reshape(n, 1, hq * wq)
    valid = flat >= 0
    ok = valid.to(value.dtype)
    # where, not `* ok`: an unmatched column gathers key 0 as a stand-in, and 0 * NaN (or Inf) there is NaN.
    picked = cols.gather(2, flat.clamp_min(0).expand(-1, cols.shape[1], -1))
    picked = torch.where(valid, picked, torch.zeros_like(picked))                          # (N, Cv*K*K, Lq)
    size = (hq * s, wq * s)
    out = F.fold(picked, size, big, padding=pad, stride=s)
    count = F.fold(ok.expand(-1, big * big, -1), size, big, padding=pad, stride=s)
    return torch.where(count > 0, out / count.clamp_min(1), torch.zeros_like(out))


# ---- validation ---------------------------------------------------------------------------------------------

def _odd_patch(patch_size, name="patch_size"):
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"argument '{name}': expected an odd int >= 1, got {patch_size!r}")


def validate_match(query, key, patch_size, key_mask, radius, precision):
    V.feature_map(query, "query", "(N, C, Hq, Wq)")
    V.feature_map(key, "key", "(N, C, Hk, Wk)")
    V.like(key, "key", query, "query")
    n, c = query.shape[:2]
    V.shape(key, "key", (n, c, None, None), f"(N={n}, C={c}, Hk, Wk)")
    _odd_patch(patch_size)
    if key_mask is not None:
        if not isinstance(key_mask, torch.Tensor) or key_mask.dtype != torch.bool:
            raise TypeError(f"argument 'key_mask': expected a bool tensor of shape (N, 1, Hk, Wk), got "
                            f"{getattr(key_mask, 'dtype', type(key_mask).__name__)}")
        V.shape(key_mask, "key_mask", (n, 1, key.shape[2], key.shape[3]), "(N, 1, Hk, Wk)")
        if key_mask.device != query.device:
            raise ValueError(f"argument 'key_mask': expected device {query.device}, got {key_mask.device}")
    if radius is not None:
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
            raise ValueError(f"argument 'radius': expected an int >= 0 or None, got {radius!r}")
        if query.shape[2:] != key.shape[2:]:
            raise ValueError(f"argument 'radius': needs query and key maps of the same size, got "
                             f"{tuple(query.shape[2:])} and {tuple(key.shape[2:])}")
    if precision not in ("ieee", "tf32"):
        raise ValueError(f"argument 'precision': expected 'ieee' or 'tf32', got {precision!r}")


def validate_transfer(value, index, patch_size, scale):
    V.feature_map(value, "value", "(N, Cv, Hk*s, Wk*s)")
    if not isinstance(index, torch.Tensor) or index.dtype != torch.int64:
        raise TypeError(f"argument 'index': expected an int64 tensor of shape (N, Hq, Wq) from patch_match, got "
                        f"{getattr(index, 'dtype', type(index).__name__)}")
    if index.dim() != 3 or index.shape[0] != value.shape[0] or index.numel() == 0:
        raise ValueError(f"argument 'index': expected a non-empty (N={value.shape[0]}, Hq, Wq) tensor, got shape "
                         f"{tuple(index.shape)}")
    if index.device != value.device:
        raise ValueError(f"argument 'index': expected device {value.device}, got {index.device}")
    _odd_patch(patch_size)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"argument 'scale': expected an int >= 1, got {scale!r}")
    if value.shape[2] % scale or value.shape[3] % scale:
        raise ValueError(f"argument 'value': expected (N, Cv, Hk*s, Wk*s) with s={scale}: height and width must be "
                         f"multiples of the scale, got {tuple(value.shape)}")


# ---- public API ---------------------------------------------------------------------------------------------

def _ns(name):
    return torch.ops.apnt if name == "native" else torch.ops.apnt_triton


def patch_match(query, key, *, patch_size=3, key_mask=None, radius=None, precision="ieee", backend="auto"):
    """Best key position for every query position by cosine similarity of k x k patch descriptors.

    Args:
        query: (N, C, Hq, Wq), key: (N, C, Hk, Wk) floating, same device and dtype.
        patch_size: odd k. key_mask: (N, 1, Hk, Wk) bool or None (False: never chosen).
        radius: None (global search) or r >= 0 (same-size maps: |dy|, |dx| <= r around the query position).
        precision: "ieee" or "tf32" (TF32 dot products allowed on GPUs).
    Returns: (score (N, Hq, Wq) float32, index (N, Hq, Wq) int64 flat into Hk*Wk; -1 where nothing was valid).
    Memory: native and triton use O(Nq + Nk); reference builds the Nq x Nk matrix.
    """
    validate_match(query, key, patch_size, key_mask, radius, precision)
    name = _backends.select("patch_match", backend, query.device, query.dtype, gpu_default="triton")
    query, key = query.detach(), key.detach()  # the outputs carry no gradient
    if name == "reference":
        return patch_match_reference(query, key, patch_size=patch_size, key_mask=key_mask, radius=radius)
    return _ns(name).patch_match(query, key, patch_size, key_mask, radius, precision)


def patch_transfer(value, index, *, patch_size=3, scale=1, backend="auto"):
    """SRNTT's texture swap: the K x K patches of `value` (K = patch_size * scale, stride scale) at the matched
    key positions, folded back to (N, Cv, Hq*s, Wq*s) and averaged where they overlap (0 where nothing landed).

    Args:
        value: (N, Cv, Hk*s, Wk*s) floating. index: (N, Hq, Wq) int64 from patch_match on the coarse maps
        (-1: no match). Differentiable with respect to value; the backward is deterministic.
    """
    validate_transfer(value, index, patch_size, scale)
    name = _backends.select("patch_transfer", backend, value.device, value.dtype)
    if name == "reference":
        return patch_transfer_reference(value, index, patch_size=patch_size, scale=scale)
    return _ns(name).patch_transfer_fwd(value, index, patch_size, scale)


# ---- fake kernels and autograd (shared by apnt:: and apnt_triton::) ------------------------------------------

def _fake_match(query, key, patch_size, key_mask, radius, precision):
    n, _, hq, wq = query.shape
    return (query.new_empty((n, hq, wq), dtype=torch.float32), query.new_empty((n, hq, wq), dtype=torch.int64))


def _fake_transfer_fwd(value, index, patch_size, scale):
    n, cv = value.shape[:2]
    shape = (n, cv, index.shape[1] * scale, index.shape[2] * scale)
    return torch.empty(shape, dtype=value.dtype, device=value.device, memory_format=torch.channels_last)


def _fake_transfer_bwd(grad_out, index, patch_size, scale, value_size):
    return torch.empty(value_size, dtype=grad_out.dtype, device=grad_out.device, memory_format=torch.channels_last)


def _transfer_setup(ctx, inputs, output):
    value, index, patch_size, scale = inputs
    ctx.save_for_backward(index)
    ctx.args = (patch_size, scale, list(value.shape))


def _make_transfer_backward(bwd_op):
    def backward(ctx, grad_out):
        (index,) = ctx.saved_tensors
        patch_size, scale, value_size = ctx.args
        return bwd_op(grad_out, index, patch_size, scale, value_size), None, None, None
    return backward


# ---- Triton ops (kernels in apnt.kernels.match, imported when an op runs) ----------------------------------------

@torch.library.custom_op("apnt_triton::patch_match", mutates_args=())
def _triton_patch_match(query: torch.Tensor, key: torch.Tensor, patch_size: int, key_mask: Optional[torch.Tensor],
                        radius: Optional[int], precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    from apnt.kernels import match as kernels
    return kernels.patch_match(query, key, patch_size, key_mask, radius, precision)


@torch.library.custom_op("apnt_triton::patch_transfer_fwd", mutates_args=())
def _triton_transfer_fwd(value: torch.Tensor, index: torch.Tensor, patch_size: int, scale: int) -> torch.Tensor:
    from apnt.kernels import match as kernels
    return kernels.patch_transfer_forward(value, index, patch_size, scale)


@torch.library.custom_op("apnt_triton::patch_transfer_bwd", mutates_args=())
def _triton_transfer_bwd(grad_out: torch.Tensor, index: torch.Tensor, patch_size: int, scale: int,
                         value_size: list[int]) -> torch.Tensor:
    from apnt.kernels import match as kernels
    return kernels.patch_transfer_backward(grad_out, index, patch_size, scale, value_size)


def _register(ns):
    torch.library.register_fake(f"{ns}::patch_match", _fake_match)
    torch.library.register_fake(f"{ns}::patch_transfer_fwd", _fake_transfer_fwd)
    torch.library.register_fake(f"{ns}::patch_transfer_bwd", _fake_transfer_bwd)
    torch.library.register_autograd(f"{ns}::patch_transfer_fwd",
                                    _make_transfer_backward(getattr(torch.ops, ns).patch_transfer_bwd),
                                    setup_context=_transfer_setup)
    _autocast.register(f"{ns}::patch_match", cast_outputs=False)  # score stays float32 (DESIGN §3.3)
    _autocast.register(f"{ns}::patch_transfer_fwd")


if _native.load_error() is None:
    _register("apnt")
_register("apnt_triton")
