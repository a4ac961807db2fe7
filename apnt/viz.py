"""Pictures for people: colour-mapped attention maps, displacement fields coloured like optical flow and labelled
side-by-side mosaics (float RGB in [0, 1])."""
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


def _color_wheel() -> np.ndarray:
    """The Middlebury optical-flow colour wheel (Baker et al. 2011): 55 hues, red → yellow → green → cyan →
    blue → magenta → red, (55, 3) in [0, 1]."""
    segments = ((15, (1, 0, 0), (1, 1, 0)), (6, (1, 1, 0), (0, 1, 0)), (4, (0, 1, 0), (0, 1, 1)),
                (11, (0, 1, 1), (0, 0, 1)), (13, (0, 0, 1), (1, 0, 1)), (6, (1, 0, 1), (1, 0, 0)))
    rows = []
    for n, a, b in segments:
        f = np.arange(n)[:, None] / n
        rows.append((1 - f) * np.array(a) + f * np.array(b))
    return np.concatenate(rows)


def flow_to_color(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """A displacement field (H, W, 2) as (dy, dx) in pixels, coloured like optical flow (Middlebury convention):
    hue is the direction, saturation the length relative to `max_magnitude` (default: the field's longest
    vector); zero displacement is white, vectors longer than `max_magnitude` are darkened. (H, W, 3) float32."""
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"argument 'flow': expected (H, W, 2) as (dy, dx), got {flow.shape}")
    dy, dx = flow[..., 0], flow[..., 1]
    magnitude = np.hypot(dx, dy)
    scale = float(magnitude.max()) if max_magnitude is None else float(max_magnitude)
    radius = magnitude / scale if scale > 0 else np.zeros_like(magnitude)
    wheel = _color_wheel()
    position = (np.arctan2(-dy, -dx) / np.pi + 1) / 2 * (len(wheel) - 1)
    k0 = np.floor(position).astype(int)
    k1 = (k0 + 1) % len(wheel)
    f = (position - k0)[..., None]
    color = (1 - f) * wheel[k0] + f * wheel[k1]
    r = radius[..., None]
    color = np.where(r <= 1, 1 - r * (1 - color), color * 0.75)
    return color.astype(np.float32)


def picture(name: str, m: np.ndarray) -> np.ndarray:
    """How an `explain` map is shown: `output` tonemapped like the previews; 2-channel displacement fields
    (dy, dx) coloured like optical flow; 1-channel maps (masks, channel means of gates, in [0, 1]) through
    viridis on a fixed 0..1 scale, so the colours of different scenes compare."""
    from apnt.tonemap import preview

    if name == "output":
        return preview(m)
    if m.shape[-1] == 2:
        return flow_to_color(m)
    return colorize(m)


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
    # The largest font (14 px down to 8) at which every label fits its tile; longer labels are cut with "…".
    size = 14
    while size > 8 and max(_font(size).getlength(label) for label, _ in tiles) > w - 8:
        size -= 1
    font = _font(size)
    for i, (label, img) in enumerate(tiles):
        r, c = divmod(i, columns)
        x, y = c * (w + GAP), r * (cell_h + GAP)
        canvas.paste(Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)), (x, y + LABEL_HEIGHT))
        while label and font.getlength(label) > w - 8:
            label = label[:-2] + "…"
        draw.text((x + 4, y + 3), label, fill=(235, 235, 235), font=font)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _font(size: int):
    """DejaVu Sans from matplotlib (it has μ and the other glyphs of our labels), else Pillow's default."""
    from matplotlib import font_manager
    from PIL import ImageFont

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except (OSError, ValueError):
        return ImageFont.load_default()
