"""Synthetic bracketed scenes in the Kalantari layout (DESIGN §5), so tests and demos go through the real loader.

Convention (the models', DESIGN §4): exposure times t = (1, 4, 16); the medium frame (t = 4) is the reference.
Radiance R is in units where t_short = 1: frame i records the linear value clip(R_i * t_i, 0, 1), R_i being the
scene as frame i sees it (camera shake, moving objects), then L_i = value^(1/2.2). R is scaled so that the
99.8th percentile of the reference frame's max-channel background value, max_c(R_ref) * t_ref, is 1: the
reference saturates on its brightest ~0.2 % plus the deliberate highlights, i.e. where R > 1/4.
Ground truth (HDRImg.hdr) = clip(R_ref, 0, 1), noise-free and aligned to the reference. So for static
unsaturated content L_ref^2.2 / 4 ≈ GT up to noise and quantisation, matching `H_i = L_i^2.2 / t_i`; the GT
mostly lies in [0, 0.25] and reaches 1 only in highlights, where R >= 1 saturates the short frame too (nothing
there is recoverable, hence the clip, as DESIGN §5 asks).

Recipe per scene:
1. Background: a random crop (zoom, horizontal flip) of one shipped HDR photograph (assets/, CC0), negatives
   clamped to 0, multiplied in radiance by a procedural colour texture (probability 0.7), scaled as above.
2. Static regions: 1-2 dark textured patches at 0.001-0.02 of saturation in the reference (the short frame
   is noise there) and 1-3 textured highlights at 1.5-20x saturation (the first below 4x, so the short frame
   still records it).
3. Camera shake: non-reference frames see the background shifted by up to ±max_shake px and turned by up to
   ±0.3° about the image centre.
4. 1-3 moving objects: textured ellipses / rectangles with their own radiance (40 % of them bright) that move
   2-8 % of the image's short side per frame step (plus jitter) and turn up to 10° per step.
5. Sensor: shot noise (variance ∝ signal) + read noise with random strengths per frame, in linear values;
   clip to [0, 1]; γ 1/2.2; 16-bit quantisation.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np

from apnt.data.io import read_image, write_image
from apnt.data.kalantari import EXPOSURE_FILE, Scene
from apnt.data.procedural import colour_texture, composite, pattern, rotate_sprite, shape_alpha

EXPOSURES = (1.0, 4.0, 16.0)
REFERENCE = 1
GAMMA = 2.2
SATURATION_PERCENTILE = 99.8
FRAME_FILES = ("0_short.tif", "1_medium.tif", "2_long.tif")  # sorted by name = short, medium, long
HDR_FILE = "HDRImg.hdr"
PHOTOGRAPHS = ("city.exr", "forest.exr", "interior.exr", "sunrise.exr")
ASSETS = Path(__file__).resolve().parent / "assets"
MARGIN = 16  # background pixels beyond the frame on each side: room for the camera shake
MIN_SIZE = 32


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


@functools.lru_cache(maxsize=None)
def _photograph(name: str) -> np.ndarray:
    rgb = np.maximum(np.nan_to_num(read_image(ASSETS / name)), 0)  # the captures have tiny negatives
    rgb.flags.writeable = False  # shared by every scene
    return rgb


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Linear radiance (height, width, 3), arbitrary scale: a photograph crop, maybe textured."""
    src = _photograph(PHOTOGRAPHS[int(rng.integers(len(PHOTOGRAPHS)))])
    sh, sw = src.shape[:2]
    largest = min(sh, sw * height / width)  # the largest crop with the output's aspect ratio
    ch = max(2, round(largest * rng.uniform(0.3, 1.0)))
    cw = min(sw, max(2, round(ch * width / height)))
    y0, x0 = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    crop = src[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    interpolation = cv2.INTER_AREA if ch > height else cv2.INTER_LINEAR
    bg = cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=interpolation)
    if rng.random() < 0.7:
        mix = np.float32(rng.uniform(0.3, 1.0))
        bg *= (1 - mix) + mix * colour_texture(rng, height, width)
    return bg


def _static_regions(rng: np.random.Generator, bg: np.ndarray, height: int, width: int) -> None:
    """Dark patches and highlights painted into the padded background (they shake with it)."""
    short = min(height, width)
    t_ref = EXPOSURES[REFERENCE]

    def centre():
        return MARGIN + int(rng.integers(height)), MARGIN + int(rng.integers(width))

    for _ in range(int(rng.integers(1, 3))):
        alpha = shape_alpha(rng, max(4.0, short * rng.uniform(0.08, 0.2)), edge=rng.uniform(2, 8))
        n = alpha.shape[0]
        level = _log_uniform(rng, 0.001, 0.02) / t_ref
        composite(bg, alpha, level * colour_texture(rng, n, n, 0.4, 1.0), *centre())
    for j in range(int(rng.integers(1, 4))):
        alpha = shape_alpha(rng, max(3.0, short * rng.uniform(0.04, 0.12)), edge=rng.uniform(1, 4))
        n = alpha.shape[0]
        # texture modulation 0.7-1.3: the first highlight (1.5-3x) stays saturated in the reference, not in short
        level = _log_uniform(rng, 1.5, 3.0 if j == 0 else 20.0) / t_ref
        tint = rng.uniform(0.7, 1.0, 3).astype(np.float32)
        modulation = 0.7 + 0.6 * pattern(rng, n, n)[..., None]
        composite(bg, alpha, level / tint.max() * tint * modulation, *centre())


def _moving_objects(rng: np.random.Generator, count: int, height: int, width: int) -> list[list[tuple]]:
    """Per frame, the objects as (alpha, radiance, cy, cx) sprites, in painting order."""
    short = min(height, width)
    frames = [[] for _ in EXPOSURES]
    for _ in range(count):
        alpha = shape_alpha(rng, max(4.0, short * rng.uniform(0.06, 0.18)))
        n = alpha.shape[0]
        bright = rng.random() < 0.4
        level = (_log_uniform(rng, 1.5, 10.0) if bright else _log_uniform(rng, 0.02, 1.0)) / EXPOSURES[REFERENCE]
        sprite = np.dstack([level * colour_texture(rng, n, n, 0.15, 1.0), alpha])
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        speed, direction = short * rng.uniform(0.02, 0.08), rng.uniform(0, 2 * math.pi)
        spin = rng.uniform(-10, 10)  # degrees per frame step
        jitter = rng.normal(0, 0.01 * short, (len(EXPOSURES), 2))
        for i, objects in enumerate(frames):
            step = i - REFERENCE
            y = cy + step * speed * math.sin(direction) + (jitter[i, 0] if step else 0)
            x = cx + step * speed * math.cos(direction) + (jitter[i, 1] if step else 0)
            turned = rotate_sprite(sprite, spin * step)
            objects.append((turned[..., 3], turned[..., :3], round(y), round(x)))
    return frames


def _view(bg: np.ndarray, height: int, width: int, dx: float, dy: float, degrees: float) -> np.ndarray:
    """The frame's window onto the padded background: camera shifted by (dx, dy), turned about the centre."""
    if dx == 0 and dy == 0 and degrees == 0:
        return bg[MARGIN:MARGIN + height, MARGIN:MARGIN + width].copy()
    m = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0)  # frame → background
    m[:, 2] += (MARGIN + dx, MARGIN + dy)
    return cv2.warpAffine(bg, m, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def _expose(rng: np.random.Generator, radiance: np.ndarray, t: float) -> np.ndarray:
    """Sensor model: linear value R t, shot + read noise, clip, γ, 16-bit codes (as float32 / 65535)."""
    x = radiance * np.float32(t)
    shot, read = _log_uniform(rng, 2e-5, 5e-4), _log_uniform(rng, 2e-4, 2e-3)
    sd = np.sqrt(np.minimum(x, 2) * np.float32(shot) + np.float32(read * read))  # beyond 2 it clips anyway
    x += sd * rng.standard_normal(x.shape, dtype=np.float32)
    np.clip(x, 0, 1, out=x)
    codes = np.round(np.power(x, np.float32(1 / GAMMA)) * np.float32(65535)).astype(np.uint16)
    return codes.astype(np.float32) / np.float32(65535)


def synth_scene(rng: np.random.Generator, height: int, width: int, *, name: str = "synthetic",
                max_shake: float = 6.0, objects: int | tuple[int, int] = (1, 3)) -> Scene:
    """One synthetic scene (see the module docstring for the convention). `objects`: a count or an inclusive
    range to draw it from; `max_shake` 0 and `objects` 0 give a static scene."""
    if int(height) != height or int(width) != width or min(height, width) < MIN_SIZE:
        raise ValueError(f"synthetic scenes need integer height and width >= {MIN_SIZE}, got {height}x{width}")
    if not 0 <= max_shake <= MARGIN:
        raise ValueError(f"max_shake must be in [0, {MARGIN}] px, got {max_shake}")
    lo, hi = (objects, objects) if isinstance(objects, int) else objects
    if not 0 <= lo <= hi:
        raise ValueError(f"objects must be a count >= 0 or a range (lo, hi) with 0 <= lo <= hi, got {objects}")
    height, width = int(height), int(width)
    bg = _background(rng, height + 2 * MARGIN, width + 2 * MARGIN)
    reference = bg[MARGIN:MARGIN + height, MARGIN:MARGIN + width].max(axis=2)
    level = float(np.percentile(reference, SATURATION_PERCENTILE))
    bg *= np.float32(1 / (EXPOSURES[REFERENCE] * (level if level > 0 else 1.0)))
    _static_regions(rng, bg, height, width)
    sprites = _moving_objects(rng, int(rng.integers(lo, hi + 1)), height, width)
    ldr, truth = [], None
    for i, t in enumerate(EXPOSURES):
        if i == REFERENCE or max_shake == 0:
            shake = (0.0, 0.0, 0.0)
        else:
            shake = (*rng.uniform(-max_shake, max_shake, 2), rng.uniform(-0.3, 0.3))
        radiance = _view(bg, height, width, *shake)
        for alpha, content, cy, cx in sprites[i]:
            composite(radiance, alpha, content, cy, cx)
        if i == REFERENCE:
            truth = np.clip(radiance, 0, 1)
        ldr.append(_expose(rng, radiance, t))
    return Scene(name, np.stack(ldr), np.array(EXPOSURES, np.float32), truth)


def write_scene(scene: Scene, out_dir) -> Path:
    """Write a scene in the Kalantari layout: FRAME_FILES (16-bit TIFF), exposure.txt (EVs, t_short at 0),
    HDRImg.hdr. A new folder appears complete (built under a temporary name, then renamed); an existing one
    has these files replaced."""
    out_dir = Path(out_dir)
    if scene.ldr.shape[0] != len(FRAME_FILES) or scene.hdr is None:
        raise ValueError(f"scene {scene.name!r}: need {len(FRAME_FILES)} frames and a ground truth to write")
    evs = np.log2(scene.exposure.astype(np.float64) / float(scene.exposure.min()))
    target = out_dir
    if not out_dir.exists():
        target = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        for file, frame in zip(FRAME_FILES, scene.ldr):
            write_image(target / file, frame)
        (target / EXPOSURE_FILE).write_text("".join(f"{ev:g}\n" for ev in evs))
        write_image(target / HDR_FILE, scene.hdr)
        if target != out_dir:
            os.replace(target, out_dir)
    finally:
        if target != out_dir:
            shutil.rmtree(target, ignore_errors=True)
    return out_dir


def synthesize(out, split: str = "Training", scenes: int = 8, height: int = 256, width: int = 256,
               seed: int = 0, progress: bool = True) -> list[Path]:
    """Write `scenes` synthetic scenes to `<out>/<split>/scene_<seed>_<k:03d>/`. Scene k depends only on
    (seed, k): its generator is `default_rng([seed, k])`, so `--scenes` can grow without changing the others
    and different seeds never share a folder name."""
    from tqdm import tqdm

    if int(scenes) != scenes or scenes < 1:
        raise ValueError(f"scenes must be a positive integer, got {scenes!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not split or Path(split).name != split:
        raise ValueError(f"split must be a plain folder name such as Training or Test, got {split!r}")
    paths = []
    for k in tqdm(range(int(scenes)), desc=f"synth {split}", unit="scene", disable=not progress):
        name = f"scene_{int(seed)}_{k:03d}"
        scene = synth_scene(np.random.default_rng([int(seed), k]), height, width, name=name)
        paths.append(write_scene(scene, Path(out) / split / name))
    return paths


# ---- command line ---------------------------------------------------------------------------------------------

def _integer(minimum: int):
    """An argparse type: an integer >= minimum, with a message that says so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    return parse


def add_cli(subparsers):
    """Register `apnt synth` on an argparse subparsers object; the handler is stored as `fn` and returns 0."""
    p = subparsers.add_parser(
        "synth", help="write synthetic bracketed scenes in the Kalantari layout",
        description="Synthetic scenes (t = 1, 4, 16; medium frame = reference; ground truth in t_short = 1 "
                    "units, clipped to [0, 1]) from shipped HDR photographs, textures, camera shake and "
                    "moving objects, written as <out>/<split>/scene_<seed>_<k>/.")
    p.add_argument("--out", required=True, type=Path, help="dataset root folder")
    p.add_argument("--split", choices=("Training", "Test"), default="Training")
    p.add_argument("--scenes", type=_integer(1), default=8, help="number of scenes (default 8)")
    p.add_argument("--height", type=_integer(MIN_SIZE), default=256, help="image height in pixels (default 256)")
    p.add_argument("--width", type=_integer(MIN_SIZE), default=256, help="image width in pixels (default 256)")
    p.add_argument("--seed", type=_integer(0), default=0, help="scene k is generated from (seed, k) (default 0)")
    p.set_defaults(fn=_cmd_synth)
    return p


def _cmd_synth(args) -> int:
    paths = synthesize(args.out, args.split, args.scenes, args.height, args.width, args.seed, progress=True)
    print(f"wrote {len(paths)} scenes to {Path(args.out) / args.split}")
    return 0
