"""Inference: `apnt.fuse` runs any model on one or many brackets, whole or in feathered tiles (DESIGN §4, §6).

Tiling (cores, halos, the memory model, the blend) lives in apnt/tiling.py; its names are re-exported here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from apnt.tiling import (BYTES_PER_TILE_PIXEL, DEFAULT_OVERLAP, IMAGE_BYTES_PER_PIXEL, IMPORT_OVERHEAD,  # noqa: F401
                         MIN_AUTO_TILE, TilePlan, axis_count, axis_split, estimate_peak, parse_memory, plan_tiles,
                         run_tiled, tile_starts)

# ---- alignment ------------------------------------------------------------------------------------------------

def align_bracket(ldr: np.ndarray) -> np.ndarray:
    """Translate the short and long frames onto the medium (reference) one with OpenCV's median threshold
    bitmap alignment (`cv2.createAlignMTB`, exposure-invariant). `ldr` (3, H, W, 3) in [0, 1]; returns a new
    array of the same shape. Uncovered borders repeat the edge pixels: black would read as under-exposure."""
    import cv2

    ldr = np.asarray(ldr, dtype=np.float32)
    if ldr.ndim != 4 or ldr.shape[0] != 3 or ldr.shape[-1] != 3:
        raise ValueError(f"argument 'ldr': expected (3, H, W, 3) for alignment, got {ldr.shape}")
    mtb = cv2.createAlignMTB()

    def gray8(frame):
        g = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        return np.ascontiguousarray(np.rint(np.clip(g, 0, 1) * 255).astype(np.uint8))

    ref = gray8(ldr[1])
    out = ldr.copy()
    h, w = ldr.shape[1:3]
    for i in (0, 2):
        dx, dy = mtb.calculateShift(ref, gray8(ldr[i]))  # how to move frame i onto the reference
        if dx or dy:
            shift = np.float32([[1, 0, dx], [0, 1, dy]])
            out[i] = cv2.warpAffine(ldr[i], shift, (w, h), flags=cv2.INTER_NEAREST,
                                    borderMode=cv2.BORDER_REPLICATE)
    return out


# ---- inputs -----------------------------------------------------------------------------------------------------

@dataclass
class _Batch:
    ldr: torch.Tensor       # (N, 3, 3, H, W)
    exposure: torch.Tensor  # (N, 3)
    kind: str               # "batch" | "single" | "numpy": the form to return


def _as_batch(ldr, exposure) -> _Batch:
    """Every accepted input form as an (N, 3, 3, H, W) tensor and (N, 3) exposures; ValueErrors name them."""
    if isinstance(ldr, torch.Tensor):
        if ldr.dim() not in (4, 5) or tuple(ldr.shape[-4:-2]) != (3, 3):
            raise ValueError(f"argument 'ldr': expected a tensor (N, 3 frames, 3 channels, H, W) or (3, 3, H, W), "
                             f"got {tuple(ldr.shape)}")
        if not ldr.is_floating_point():
            raise TypeError(f"argument 'ldr': expected floating values in [0, 1], got {ldr.dtype}")
        kind = "batch" if ldr.dim() == 5 else "single"
        exp = torch.as_tensor(exposure, dtype=torch.float64 if ldr.dtype == torch.float64 else torch.float32)
        exp = exp.to(ldr.device)
        n = ldr.shape[0] if kind == "batch" else None
        expected = (n, 3) if kind == "batch" else (3,)
        if tuple(exp.shape) != expected:
            raise ValueError(f"argument 'exposure': expected shape {expected} to match ldr {tuple(ldr.shape)}, "
                             f"got {tuple(exp.shape)}")
        if kind == "single":
            ldr, exp = ldr.unsqueeze(0), exp.unsqueeze(0)
    else:
        arr = np.asarray(ldr)
        if arr.ndim != 4 or arr.shape[0] != 3 or arr.shape[-1] != 3:
            raise ValueError(f"argument 'ldr': expected a numpy array (3 frames, H, W, 3), got {arr.shape}")
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"argument 'ldr': expected numbers in [0, 1], got {arr.dtype}")
        exp_np = np.asarray(exposure, dtype=np.float64).reshape(-1) if np.ndim(exposure) <= 1 else None
        if exp_np is None or exp_np.shape != (3,):
            raise ValueError(f"argument 'exposure': expected 3 exposure times for ldr {arr.shape}, got "
                             f"{np.shape(exposure)}")
        kind = "numpy"
        ldr = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(0, 3, 1, 2).unsqueeze(0)
        exp = torch.from_numpy(exp_np.astype(np.float32)).unsqueeze(0)
    if not bool(torch.isfinite(exp).all()) or not bool((exp > 0).all()):
        raise ValueError(f"argument 'exposure': exposure times must be positive and finite, got {exp.tolist()}")
    if ldr.shape[-1] == 0 or ldr.shape[-2] == 0:
        raise ValueError(f"argument 'ldr': empty image {tuple(ldr.shape[-2:])}")
    return _Batch(ldr, exp, kind)


def _restore_kind(out: torch.Tensor, kind: str):
    """(N, C, H, W) back to the caller's form: (N, C, H, W), (C, H, W) or numpy (H, W, C) float32."""
    if kind == "batch":
        return out
    if kind == "single":
        return out[0]
    return np.ascontiguousarray(out[0].permute(1, 2, 0).float().cpu().numpy())


# ---- models -------------------------------------------------------------------------------------------------------

def _resolve_model(model, weights, backend, crf, device, dtype):
    """(module or None, baseline function or None, name)."""
    from apnt import baselines, models

    if crf not in ("gamma2.2", "calibrate"):
        raise ValueError(f"argument 'crf': expected 'gamma2.2' or 'calibrate', got {crf!r}")
    if isinstance(model, nn.Module):
        return model, None, getattr(model, "name", type(model).__name__)
    if isinstance(model, str) and model in baselines.BASELINES:
        fn = baselines.BASELINES[model]
        if model == "debevec":
            return None, (lambda ldr, t: fn(ldr, t, crf=crf)), model
        return None, fn, model
    if not isinstance(model, str) or model not in models.MODELS:
        names = ", ".join(list(models.MODELS) + list(baselines.BASELINES))
        raise ValueError(f"argument 'model': unknown model {model!r}; expected one of {names} or an nn.Module")
    module = models.load(model, weights=weights, backend=backend)
    return module.to(device=device, dtype=dtype), None, model


def _backend_name(module) -> str | None:
    """The backend the module's ops will actually run (`auto` resolved), for reports and memory estimates."""
    requested = getattr(module, "backend", None)
    if requested is None:
        return None
    from apnt.ops import _backends

    p = next(module.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None else torch.float32
    try:
        return _backends.select("conv2d", requested, device, dtype)
    except Exception:  # noqa: BLE001 - the model call itself will report it properly
        return requested


# ---- the entry points ---------------------------------------------------------------------------------------------

@dataclass
class FuseResult:
    """What `_fuse` ran and produced: `hdr` and (explain) `maps` in the caller's input form."""
    hdr: object
    maps: dict | None
    model: str
    backend: str | None
    plan: TilePlan | None


def fuse(ldr, exposure, model="ahdrnet", *, weights="demo", backend="auto", tile=None, overlap=None,
         max_memory=None, crf="gamma2.2", align=False, progress=False, nft_radius=None):
    """Merge bracketed exposures into linear HDR.

    Args:
        ldr: tensor (N, 3, 3, H, W) or (3, 3, H, W) — frames short, medium (reference), long, RGB in [0, 1] —
            or a numpy array (3, H, W, 3) (one scene, like `apnt.data.Scene.ldr`).
        exposure: exposure times (N, 3) / (3,) in any unit.
        model: a name in `apnt.models.MODELS` (loaded with `weights`: "demo", a path, or None for random),
            "debevec" / "mertens" (classical baselines, per scene, `crf` applies to debevec), or an
            `nn.Module` following the calling convention (DESIGN §4); its train/eval mode is restored after.
        backend: op backend of a named model (and of a module with a `backend` attribute, restored after).
        tile: core side in pixels for tiled inference; `overlap` (default 32) px between cores; the halo is
            `max(overlap, model.receptive_radius)` (a module without `receptive_radius` gets `overlap` only, so
            give it an overlap that covers its context). `max_memory` ("512M", "2G", bytes) instead picks the
            largest tile whose estimated peak RSS fits (see BYTES_PER_TILE_PIXEL). Neither: untiled.
        align: translate the short and long frames onto the medium one first (`align_bracket`, OpenCV MTB).
        progress: a tqdm bar over tiles.
        nft_radius: APNT-Fusion's texture search radius in pixels for this call (None: the model's own setting,
            by default global up to 1500x1000 px; see `APNTFusion.search_radius`).

    Returns linear HDR in units of t_short = 1 in the input's form: tensor (N, 3, H, W) / (3, H, W), or numpy
    (H, W, 3) float32. Raises ValueError (naming the argument) for bad arguments."""
    return _fuse(ldr, exposure, model, weights=weights, backend=backend, tile=tile, overlap=overlap,
                 max_memory=max_memory, crf=crf, align=align, progress=progress, nft_radius=nft_radius).hdr


def explain(ldr, exposure, model="ahdrnet", **kwargs) -> dict:
    """Like `fuse` (same arguments) but returns the model's `explain` maps, tiled like the output:
    `output` (3 channels), maps of 1 or 2 channels as they are (masks; APNT-Fusion's `displacement`, a (dy, dx)
    field that must not be averaged) and every other map reduced to its channel mean (1 channel: e.g.
    `attention_short`, `attention_long` for AHDRNet) — the per-pixel picture, at 1/64 of the memory.
    Same input forms as `fuse`.
    Raises ValueError for a model without an `explain` method (the classical baselines)."""
    return _fuse(ldr, exposure, model, explain=True, **kwargs).maps


def _fuse(ldr, exposure, model="ahdrnet", *, weights="demo", backend="auto", tile=None, overlap=None,
          max_memory=None, crf="gamma2.2", align=False, progress=False, explain=False,
          nft_radius=None) -> FuseResult:
    batch = _as_batch(ldr, exposure)
    module, baseline, name = _resolve_model(model, weights, backend, crf, batch.ldr.device, batch.ldr.dtype)
    if baseline is not None:
        if tile is not None or max_memory is not None:
            raise ValueError(f"arguments 'tile' / 'max_memory': {name} merges whole images (no tiling)")
        if explain:
            raise ValueError(f"argument 'model': {name} has no intermediate maps to explain")
        if nft_radius is not None:
            raise ValueError(f"argument 'nft_radius': {name} has no texture search")
        plan_tiles(1, 1, 1, overlap=overlap)  # validates overlap
    if align:
        frames = batch.ldr.permute(0, 1, 3, 4, 2).float().cpu().numpy()
        aligned = np.stack([align_bracket(f) for f in frames])
        batch.ldr = torch.from_numpy(aligned).permute(0, 1, 4, 2, 3).to(batch.ldr)
    if baseline is not None:
        return FuseResult(_restore_kind(_run_baseline(baseline, batch), batch.kind), None, name, None, None)

    given = isinstance(model, nn.Module)
    was_training = module.training
    old_backend = getattr(module, "backend", None)
    if nft_radius is not None and not hasattr(module, "nft_radius"):
        raise ValueError(f"argument 'nft_radius': {name} has no texture search")
    old_radius = getattr(module, "nft_radius", None)
    if given and backend != "auto" and old_backend is not None:
        module.backend = backend
    try:
        if nft_radius is not None:
            module.nft_radius = nft_radius  # validates it
        module.eval()
        resolved = _backend_name(module)
        n, _, _, height, width = batch.ldr.shape
        radius = (module.tile_radius(height, width) if hasattr(module, "tile_radius")
                  else getattr(module, "receptive_radius", None))
        plan = plan_tiles(height, width, n, tile=tile, overlap=overlap, max_memory=max_memory,
                          receptive_radius=radius, backend=resolved, multiple=getattr(module, "tile_multiple", 1))
        if explain and not hasattr(module, "explain"):
            raise ValueError(f"argument 'model': {name} has no `explain` method")
        fn = _explain_fn(module) if explain else _forward_fn(module)
        with torch.inference_mode():
            context = None
            if plan.tile is not None and hasattr(module, "shared_context"):
                context = module.shared_context(batch.ldr, batch.exposure)
            maps = run_tiled(fn, batch.ldr, batch.exposure, plan, progress, context)
    finally:
        module.train(was_training)
        if given and backend != "auto" and old_backend is not None:
            module.backend = old_backend
        if nft_radius is not None:
            module.nft_radius = old_radius
    out = {k: _restore_kind(v, batch.kind) for k, v in maps.items()}
    return FuseResult(out["output"], out if explain else None, name, resolved, plan)


def _forward_fn(module):
    def fn(ldr, exposure, context=None):
        return {"output": module(ldr, exposure) if context is None else module(ldr, exposure, context=context)}
    return fn


def _explain_fn(module):
    def fn(ldr, exposure, context=None):
        maps = module.explain(ldr, exposure) if context is None else module.explain(ldr, exposure, context=context)
        # Gates become their channel mean; masks and 2-channel fields (a displacement's dy, dx) stay as they are.
        return {k: v if k == "output" or v.shape[1] <= 2 else v.mean(dim=1, keepdim=True) for k, v in maps.items()}
    return fn


def _run_baseline(fn, batch: _Batch) -> torch.Tensor:
    """A numpy baseline scene by scene: (N, 3, 3, H, W) → (N, 3, H, W) on the input's device and dtype."""
    outs = []
    for ldr, t in zip(batch.ldr, batch.exposure):
        hdr = fn(ldr.permute(0, 2, 3, 1).float().cpu().numpy(), t.double().cpu().numpy())
        outs.append(torch.from_numpy(np.ascontiguousarray(hdr)).permute(2, 0, 1))
    return torch.stack(outs).to(batch.ldr)
