"""Inference: `apnt.fuse` runs any model on one or many brackets, whole or in feathered tiles (DESIGN §4, §6).

Tiling. A tile is a *core* (the pixels it contributes) plus a *halo* of `max(overlap, receptive_radius)`
context pixels on each side, clamped at the image borders. Neighbouring cores overlap by at least `overlap`
pixels and are blended with linear-ramp weights normalised to sum to 1 at every pixel. With a halo at least
the model's receptive radius every core pixel sees exactly the context it sees untiled (borders included,
where both pad with zeros), so tiled and untiled agree to float rounding (~1e-6), not just the 1e-3 in
μ-law that DESIGN §6 asks for.

Models with non-local parts or a pyramid (APNT-Fusion, DESIGN §4.2) say so through optional attributes:
`tile_multiple` (tile origins are aligned to it, so pooling grids coincide with the whole image's),
`tile_radius(height, width)` (the halo for an image of that size, replacing `receptive_radius`) and
`shared_context(ldr, exposure)` — computed once on the whole image, its `.crop(y0, y1, x0, x1)` passed to each
tile as `model(ldr, exposure, context=...)` (and to `explain`): APNT-Fusion's global texture search.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

DEFAULT_OVERLAP = 32
MIN_AUTO_TILE = 32  # `max_memory` never picks a core smaller than this (halo would dominate the work)

# Peak memory model for `max_memory`: IMPORT_OVERHEAD + image buffers + BYTES_PER_TILE_PIXEL * batch * the
# pixels of one tile with its halo. Measured for AHDRNet inference (fp32, 2 threads, torch 2.14.1 CPU) as the
# peak RSS (ru_maxrss) of a fresh `python` subprocess per size, on the 2-core / 23 GB development machine
# (throwaway script, not in the repo): square inputs of 128..1024 px, slope of peak RSS over pixel count
# between 384/512 and 768/1024 px:
#   native    3.36e3 .. 3.40e3 B/px   (1 thread: 3.34e3)
#   reference 5.02e3 .. 5.15e3 B/px   (1 thread: 4.64e3); 5.6e3 below: a tiled 1500x1000 run peaked 6% above
#             the estimate made with the slope.
# RSS after `import torch, apnt` and building the model (warm-up run included): 0.53 .. 0.60 GB.
# Checked on whole tiled runs of a 1500x1000 image (same machine; peak RSS vs budget): native 1G → 54 tiles,
# 0.99G; 1.5G → 12 tiles, 1.42G; 3G → 6 tiles, 2.80G; reference 2G → 12 tiles, 1.96G.
BYTES_PER_TILE_PIXEL = {"native": 3400, "reference": 5600}
IMPORT_OVERHEAD = 600 * 2**20
# Whole-image fp32 buffers held while tiling, per pixel and sample: the input (9 ch) and one converted copy
# of it (numpy → tensor, alignment), the blend accumulator that becomes the output (3 ch) and the caller's
# numpy copy of it (3 ch). Plus one weight plane shared by the batch (4 B/px).
IMAGE_BYTES_PER_PIXEL = 4 * (9 + 9 + 3 + 3)

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory(value) -> int:
    """A memory size in bytes: an int (bytes) or text like "512M", "2G", "1.5GB", "2GiB", "100000" (binary
    units: 1G = 2**30). Raises ValueError naming `max_memory` for anything else or a non-positive size."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        size = int(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(value).upper())
        if m is None or (m.group(3) and not m.group(2) and m.group(3) != "B"):
            raise ValueError(f"argument 'max_memory': cannot parse {value!r}; expected bytes or a size like "
                             "'512M' or '2G'")
        size = int(float(m.group(1)) * _UNITS[m.group(2)])
    if size <= 0:
        raise ValueError(f"argument 'max_memory': must be positive, got {value!r}")
    return size


def _format_bytes(n: float) -> str:
    return f"{n / 2**30:.2f}G" if n >= 2**30 else f"{n / 2**20:.0f}M"


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


# ---- tiling ---------------------------------------------------------------------------------------------------------

def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the cores along one axis: evenly spaced, the first at 0 and the last ending at
    `length`, consecutive cores overlapping by at least `overlap` pixels."""
    if length <= tile:
        return [0]
    count = 1 + math.ceil((length - tile) / (tile - overlap))
    step = (length - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def axis_split(length: int, count: int, overlap: int) -> tuple[int, list[int]]:
    """`count` equal cores covering `length` with consecutive ones overlapping by at least `overlap`: the
    smallest such core and its starts (first at 0, last ending at `length`)."""
    if count <= 1:
        return length, [0]
    core = min(length, math.ceil((length + (count - 1) * overlap) / count))
    # Floor division keeps every step <= core - overlap (an integer that is >= the exact step).
    return core, [i * (length - core) // (count - 1) for i in range(count)]


def axis_count(length: int, tile: int, overlap: int) -> int:
    """The fewest cores of at most `tile` pixels that cover `length` with the overlap."""
    return 1 if length <= tile else 1 + math.ceil((length - tile) / (tile - overlap))


def _ramp(size: int, ramp_lo: int, ramp_hi: int) -> torch.Tensor:
    """1-D feather of a core: rises linearly over `ramp_lo` pixels and falls over `ramp_hi` (0 = no ramp,
    at image borders). Strictly positive, so every pixel has weight after normalisation."""
    x = torch.arange(size, dtype=torch.float64) + 0.5
    w = torch.ones(size, dtype=torch.float64)
    if ramp_lo:
        w = torch.minimum(w, x / ramp_lo)
    if ramp_hi:
        w = torch.minimum(w, (size - x) / ramp_hi)
    return w


@dataclass
class TilePlan:
    """Where to cut: cores of `tile_h` x `tile_w` pixels (None = whole image) at `rows` x `cols`, `overlap`
    between cores and context `halo`. `tile` is the longer core side (None when untiled)."""
    tile: int | None
    overlap: int
    halo: int
    rows: list[int] = field(default_factory=list)
    cols: list[int] = field(default_factory=list)
    multiple: int = 1  # tile origins (core minus halo) are rounded down to a multiple of this
    tile_h: int | None = None
    tile_w: int | None = None

    def __post_init__(self):
        if self.tile is not None:
            self.tile_h = self.tile if self.tile_h is None else self.tile_h
            self.tile_w = self.tile if self.tile_w is None else self.tile_w

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols) if self.tile else 1

    def processed_pixels(self, height: int, width: int) -> int:
        """Pixels the model runs on, halos included (the image's own count when untiled)."""
        if self.tile is None:
            return height * width
        span = lambda starts, core, length: sum(min(length, s + core + self.halo) - max(0, s - self.halo)  # noqa: E731
                                                for s in starts)
        return span(self.rows, self.tile_h, height) * span(self.cols, self.tile_w, width)


def estimate_peak(height: int, width: int, batch: int, tile: int | None, halo: int, backend: str | None,
                  tile_w: int | None = None) -> int:
    """Estimated peak resident memory (bytes) of AHDRNet-like inference, per the measured constants above, for
    cores of `tile` x `tile_w` pixels (`tile_w` None: square; `tile` None: untiled). Unknown backends (`triton`,
    user modules) are charged at `reference`'s rate, the larger one."""
    per_px = BYTES_PER_TILE_PIXEL.get(backend, BYTES_PER_TILE_PIXEL["reference"])
    th = height if tile is None else min(height, tile + 2 * halo)
    tw = width if tile is None else min(width, (tile if tile_w is None else tile_w) + 2 * halo)
    image = IMAGE_BYTES_PER_PIXEL * batch * height * width + 4 * height * width
    return int(IMPORT_OVERHEAD + image + per_px * batch * th * tw)


def plan_tiles(height: int, width: int, batch: int, *, tile=None, overlap=None, max_memory=None,
               receptive_radius: int | None = None, backend: str | None = None, multiple: int = 1) -> TilePlan:
    """Validate the tiling arguments and choose the tiles. `tile`: the largest core side; the fewest such cores
    per axis, shrunk to equal sizes that just cover it. `max_memory`: the grid of equal (not necessarily square)
    cores whose estimated peak fits and that runs the model on the fewest pixels, halos included.
    Raises ValueError."""
    if overlap is None:
        overlap = DEFAULT_OVERLAP
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or overlap < 0:
        raise ValueError(f"argument 'overlap': expected a non-negative integer number of pixels, got {overlap!r}")
    overlap = int(overlap)
    halo = max(overlap, int(receptive_radius or 0))
    if tile is not None and max_memory is not None:
        raise ValueError("arguments 'tile' and 'max_memory': give one of them, not both")
    if tile is not None:
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile <= 0:
            raise ValueError(f"argument 'tile': expected a positive integer number of pixels, got {tile!r}")
        if tile < 2 * overlap:
            raise ValueError(f"argument 'tile': {tile} px is smaller than twice the overlap ({overlap} px)")
        counts = (axis_count(height, int(tile), overlap), axis_count(width, int(tile), overlap))
    elif max_memory is not None:
        counts = _grid_for_memory(height, width, batch, overlap, halo, backend, parse_memory(max_memory), max_memory)
    else:
        counts = None
    if counts is None or counts == (1, 1):
        return TilePlan(None, overlap, halo, multiple=multiple)
    (tile_h, rows), (tile_w, cols) = axis_split(height, counts[0], overlap), axis_split(width, counts[1], overlap)
    return TilePlan(max(tile_h, tile_w), overlap, halo, rows, cols, multiple, tile_h, tile_w)


def _grid_for_memory(height, width, batch, overlap, halo, backend, budget, text) -> tuple[int, int] | None:
    """Cores per axis (rows, columns) for `budget` (None: the whole image fits): of the grids whose equal cores
    fit, the one that runs the model on the fewest pixels (halos included), then the one with fewer tiles."""
    if estimate_peak(height, width, batch, None, halo, backend) <= budget:
        return None
    smallest = max(2 * overlap, MIN_AUTO_TILE, 1)
    best = None
    for ny in range(1, axis_count(height, smallest, overlap) + 1):
        core_h, rows = axis_split(height, ny, overlap)
        for nx in range(1, axis_count(width, smallest, overlap) + 1):
            core_w, cols = axis_split(width, nx, overlap)
            if estimate_peak(height, width, batch, core_h, halo, backend, core_w) > budget:
                continue   # more columns may fit: keep looking along this row count
            plan = TilePlan(max(core_h, core_w), overlap, halo, rows, cols, 1, core_h, core_w)
            key = (plan.processed_pixels(height, width), ny * nx)
            if best is None or key < best[0]:
                best = (key, (ny, nx))
            break   # the fewest columns that fit at this row count: more only add halo
    if best is None:
        need = estimate_peak(height, width, batch, smallest, halo, backend)
        raise ValueError(f"argument 'max_memory': {text} is too small for a {width}x{height} image (batch {batch}): "
                         f"the smallest tile ({smallest} px) needs about {_format_bytes(need)}, of which "
                         f"{_format_bytes(IMPORT_OVERHEAD)} is the process itself (import torch, model)")
    return best[1]


def _release_freed_memory() -> None:
    """Hand the previous tile's freed activations back to the OS (glibc only; elsewhere a no-op).

    glibc raises its mmap threshold each time a large mmapped block is freed, so after the first tile the
    activations come from the heap, whose freed pages stay resident: without this, 54 tiles of 208 px on a
    1500x1000 image peaked at 1.16 GB against 0.90 GB with a fixed threshold (native backend)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes
            _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


def run_tiled(fn, ldr: torch.Tensor, exposure: torch.Tensor, plan: TilePlan, progress: bool = False,
              context=None) -> dict[str, torch.Tensor]:
    """Apply `fn(ldr, exposure) -> {name: (N, C, h, w)}` tile by tile and blend each output over the image.
    With a `context` (a model's `shared_context`), `fn(ldr, exposure, context.crop(y0, y1, x0, x1))` instead."""
    if plan.tile is None:
        return fn(ldr, exposure)
    from tqdm import tqdm

    n, _, _, height, width = ldr.shape
    acc: dict[str, torch.Tensor] = {}
    weight = torch.zeros(height, width, dtype=ldr.dtype, device=ldr.device)
    boxes = [(y, x) for y in plan.rows for x in plan.cols]
    ramp = max(plan.overlap, 1)
    for y0, x0 in tqdm(boxes, desc="tiles", unit="tile", disable=not progress):
        y1, x1 = min(y0 + plan.tile_h, height), min(x0 + plan.tile_w, width)
        hy0, hx0 = (max(0, y0 - plan.halo) // plan.multiple * plan.multiple,
                    max(0, x0 - plan.halo) // plan.multiple * plan.multiple)
        hy1, hx1 = min(height, y1 + plan.halo), min(width, x1 + plan.halo)
        _release_freed_memory()
        part = ldr[..., hy0:hy1, hx0:hx1].contiguous()
        maps = fn(part, exposure) if context is None else fn(part, exposure, context.crop(hy0, hy1, hx0, hx1))
        # Ramps only on sides that face another core; none at image borders (nothing to blend with there).
        wy = _ramp(y1 - y0, ramp if y0 > 0 else 0, ramp if y1 < height else 0)
        wx = _ramp(x1 - x0, ramp if x0 > 0 else 0, ramp if x1 < width else 0)
        w = (wy[:, None] * wx[None, :]).to(device=ldr.device, dtype=ldr.dtype)
        weight[y0:y1, x0:x1] += w
        for name, m in maps.items():
            if name not in acc:
                acc[name] = torch.zeros(n, m.shape[1], height, width, dtype=m.dtype, device=m.device)
            acc[name][..., y0:y1, x0:x1] += m[..., y0 - hy0:y1 - hy0, x0 - hx0:x1 - hx0] * w.to(m.dtype)
    # In place: the normalised sums are the result (no second full-size buffer).
    return {name: a.div_(weight.to(a.dtype)) for name, a in acc.items()}


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
