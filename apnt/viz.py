"""Pictures for people: colour-mapped attention maps and labelled side-by-side mosaics (float RGB in [0, 1])."""
from __future__ import annotations

import numpy as np

LABEL_HEIGHT = 22
GAP = 4


def colorize(m: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """A 1-channel map (H, W) or (H, W, 1) through viridis on the fixed range [lo, hi], so the colours of
    different scenes and frames compare. Returns (H, W, 3) float32."""
    import matplotlib

    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 3:
        m = m[..., 0]
    x = np.clip((m - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return matplotlib.colormaps["viridis"](x)[..., :3].astype(np.float32)


def mosaic(tiles: list[tuple[str, np.ndarray]], columns: int) -> np.ndarray:
    """Tiles (label, (H, W, 3) image in [0, 1]) of one size in a grid, each with its label above it on a dark
    bar. Returns (rows*(LABEL_HEIGHT+H)+gaps, columns*W+gaps, 3) float32."""
    from PIL import Image, ImageDraw

    if not tiles:
        raise ValueError("mosaic needs at least one tile")
    h, w = tiles[0][1].shape[:2]
    if any(t.shape[:2] != (h, w) for _, t in tiles):
        raise ValueError("mosaic tiles must share one size")
    rows = -(-len(tiles) // columns)
    cell_h = LABEL_HEIGHT + h
    canvas = Image.new("RGB", (columns * w + (columns - 1) * GAP, rows * cell_h + (rows - 1) * GAP), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    for i, (label, img) in enumerate(tiles):
        r, c = divmod(i, columns)
        x, y = c * (w + GAP), r * (cell_h + GAP)
        canvas.paste(Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)), (x, y + LABEL_HEIGHT))
        draw.text((x + 6, y + 3), label, fill=(235, 235, 235), font=font)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _font(size: int):
    """DejaVu Sans from matplotlib (it has μ and the other glyphs of our labels), else Pillow's default."""
    from matplotlib import font_manager
    from PIL import ImageFont

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except (OSError, ValueError):
        return ImageFont.load_default()
