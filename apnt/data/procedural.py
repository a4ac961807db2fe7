"""Procedural textures and shapes for the synthetic scenes (numpy + OpenCV only, fast at full resolution).

Patterns are scalar fields in [0, 1]; `colour_texture` turns one into RGB between two random colours. Shapes
are antialiased alpha sprites composited into radiance images with `composite`.
"""
from __future__ import annotations

import math

import cv2
import numpy as np


def _grid(height: int, width: int, angle: float):
    """Pixel coordinates (u, v), each (H, W), of axes rotated by `angle`."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    c, s = math.cos(angle), math.sin(angle)
    return c * x + s * y, -s * x + c * y


def value_noise(rng: np.random.Generator, height: int, width: int, cell: float, octaves: int = 4) -> np.ndarray:
    """Multi-octave value noise: random lattices of spacing cell, cell/2, ... upsampled bicubically, amplitudes
    halving per octave, normalised to [0, 1]."""
    out = np.zeros((height, width), np.float32)
    amplitude = 1.0
    for _ in range(octaves):
        lattice = rng.random((max(2, math.ceil(height / cell) + 1), max(2, math.ceil(width / cell) + 1)),
                             dtype=np.float32)
        out += amplitude * cv2.resize(lattice, (width, height), interpolation=cv2.INTER_CUBIC)
        amplitude, cell = amplitude / 2, max(cell / 2, 1.0)
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)


def stripes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Sinusoidal stripes at a random angle and period (4-40 px), sharpened at random."""
    u, _ = _grid(height, width, rng.uniform(0, math.pi))
    f = 0.5 + 0.5 * np.sin(u * np.float32(2 * math.pi / rng.uniform(4, 40)) + np.float32(rng.uniform(0, 6.3)))
    return f ** np.float32(rng.uniform(0.5, 2.0))


def checker(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A rotated checkerboard (cells 6-48 px), slightly blurred so its edges are not aliased."""
    u, v = _grid(height, width, rng.uniform(0, math.pi / 2))
    cell = rng.uniform(6, 48)
    f = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    return cv2.GaussianBlur(f, (0, 0), 0.7)


def pattern(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One of the patterns above, chosen at random: (H, W) float32 in [0, 1]."""
    kind = int(rng.integers(3))
    if kind == 0:
        return value_noise(rng, height, width, cell=rng.uniform(8, 64))
    return stripes(rng, height, width) if kind == 1 else checker(rng, height, width)


def colour_texture(rng: np.random.Generator, height: int, width: int, lo: float = 0.1,
                   hi: float = 1.0) -> np.ndarray:
    """(H, W, 3) float32: a random pattern mapping 0 → one random colour and 1 → another (channels in
    [lo, hi])."""
    f = pattern(rng, height, width)[..., None]
    c0, c1 = (rng.uniform(lo, hi, 3).astype(np.float32) for _ in range(2))
    return c0 + f * (c1 - c0)


def shape_alpha(rng: np.random.Generator, radius: float, edge: float = 1.0) -> np.ndarray:
    """A square sprite with a random ellipse or rotated rectangle of about `radius` px, centred; alpha in
    [0, 1] with a transition `edge` px wide (1: antialiased; larger: soft). The sprite leaves room to rotate."""
    half = math.ceil(radius * 1.5 + edge) + 1
    a = radius * rng.uniform(0.6, 1.0)
    b = radius * rng.uniform(0.4, 1.0)
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    t = rng.uniform(0, math.pi)
    u, v = math.cos(t) * x + math.sin(t) * y, -math.sin(t) * x + math.cos(t) * y
    if rng.random() < 0.5:  # ellipse: distance to the boundary ~ (normalised radius - 1) * minor axis
        d = (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1) * min(a, b)
    else:  # rectangle: the max-norm distance
        d = np.maximum(np.abs(u) - a, np.abs(v) - b)
    return np.clip(0.5 - d / edge, 0, 1).astype(np.float32)


def rotate_sprite(sprite: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate a square sprite about its centre (bilinear, zeros outside)."""
    if degrees == 0:
        return sprite
    n = sprite.shape[0]
    m = cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(sprite, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def composite(canvas: np.ndarray, alpha: np.ndarray, content, cy: int, cx: int) -> None:
    """In place: canvas = canvas * (1 - alpha) + alpha * content over the sprite centred at (cy, cx), clipped to
    the canvas. `content` is (n, n, 3) or anything broadcastable to it."""
    n = alpha.shape[0]
    top, left = cy - n // 2, cx - n // 2
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + n, canvas.shape[0]), min(left + n, canvas.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    a = alpha[y0 - top:y1 - top, x0 - left:x1 - left, None]
    c = np.broadcast_to(content, (n, n, 3))[y0 - top:y1 - top, x0 - left:x1 - left]
    region = canvas[y0:y1, x0:x1]
    region += a * (c - region)
