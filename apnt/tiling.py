"""Tiling for `apnt.fuse` (DESIGN §6): where to cut an image, what a tile costs in memory, and the blend.

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
