"""The Kalantari'17 dataset layout and a training dataset over it.

    <root>/<split>/<scene>/   three 16-bit .tif frames (sorted by name: short, medium, long),
                              exposure.txt (one EV per line, in file order), HDRImg.hdr (linear ground truth)

Exposure times are `t_i = 2^(EV_i - min EV)`, so the short frame has t = 1 (the model convention, DESIGN §4).
A split folder may group scenes one level deeper (the published Test split has PAPER/ and EXTRA/).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from apnt.data.io import TIFF_SUFFIXES, read_image

EXPOSURE_FILE = "exposure.txt"
HDR_FILES = ("HDRImg.hdr", "HDRImg.exr")
FRAMES = 3
MAX_EV_SPAN = 64


@dataclass
class Scene:
    """One bracketed scene. `ldr` (3, H, W, 3) float32 in [0, 1], frames short/medium/long; `exposure` (3,)
    float32 with t_short = 1; `hdr` (H, W, 3) linear ground truth aligned to the medium frame, or None."""
    name: str
    ldr: np.ndarray
    exposure: np.ndarray
    hdr: np.ndarray | None = None


def read_exposures(path, frames: int = FRAMES) -> np.ndarray:
    """exposure.txt → exposure times (frames,) float32 with the shortest = 1. EVs must increase strictly
    (the frames are sorted short to long by name). Raises ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: missing (one EV per line, one line per frame)")
    # utf-8-sig: a file saved by Windows Notepad starts with a byte-order mark that float() rejects
    lines = [s.strip() for s in path.read_text(encoding="utf-8-sig", errors="replace").splitlines() if s.strip()]
    if len(lines) != frames:
        raise ValueError(f"{path}: expected {frames} EV lines (one per frame), found {len(lines)}")
    try:
        ev = np.array([float(s) for s in lines], dtype=np.float64)
    except ValueError:
        raise ValueError(f"{path}: not a number on every line: {lines}") from None
    if not np.isfinite(ev).all():
        raise ValueError(f"{path}: non-finite EV in {lines}")
    if not (np.diff(ev) > 0).all():
        raise ValueError(f"{path}: EVs {lines} must increase strictly, matching the frames sorted by name "
                         "(short, medium, long)")
    if ev[-1] - ev[0] > MAX_EV_SPAN:  # t = 2^span is inf in float32 beyond 128; real brackets span < 30
        raise ValueError(f"{path}: EVs {lines} span more than {MAX_EV_SPAN} stops; not an exposure bracket")
    return (2.0 ** (ev - ev.min())).astype(np.float32)


def frame_paths(scene_dir) -> list[Path]:
    """The scene's LDR frames (.tif/.tiff), sorted by name."""
    return sorted(p for p in Path(scene_dir).iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES)


def load_scene(scene_dir, ground_truth: bool = True) -> Scene:
    """Read one scene folder. The ground truth is optional (None when no HDRImg.hdr/.exr, and not read at all with
    `ground_truth=False`). Raises ValueError (ImageReadError for unreadable files) naming the file or folder and
    the problem."""
    scene_dir = Path(scene_dir)
    if not scene_dir.is_dir():
        raise ValueError(f"{scene_dir}: not a scene folder")
    paths = frame_paths(scene_dir)
    if len(paths) != FRAMES:
        raise ValueError(f"{scene_dir}: expected {FRAMES} LDR .tif frames (short, medium, long), found "
                         f"{len(paths)}" + (f": {', '.join(p.name for p in paths)}" if paths else ""))
    exposure = read_exposures(scene_dir / EXPOSURE_FILE)
    frames = [read_image(p) for p in paths]
    for p, f in zip(paths[1:], frames[1:]):
        if f.shape != frames[0].shape:
            raise ValueError(f"{p}: frame size {f.shape[1]}x{f.shape[0]} differs from {paths[0].name}'s "
                             f"{frames[0].shape[1]}x{frames[0].shape[0]}")
    hdr = None
    for name in HDR_FILES if ground_truth else ():
        if (scene_dir / name).is_file():
            hdr = read_image(scene_dir / name)
            if hdr.shape != frames[0].shape:
                raise ValueError(f"{scene_dir / name}: size {hdr.shape[1]}x{hdr.shape[0]} differs from the "
                                 f"frames' {frames[0].shape[1]}x{frames[0].shape[0]}")
            break
    return Scene(scene_dir.name, np.stack(frames), exposure, hdr)


def _is_scene(d: Path) -> bool:
    return (d / EXPOSURE_FILE).exists() or any(p.suffix.lower() in TIFF_SUFFIXES for p in d.iterdir())


def _scene_dirs(d: Path) -> list[Path]:
    found = []
    for child in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += [child] if _is_scene(child) else _scene_dirs(child)
    return found


def list_scenes(root, split: str) -> list[Path]:
    """Scene folders of `<root>/<split>`, sorted (grouping folders without frames are searched one level
    down and deeper). Raises ValueError when the split folder is missing or holds no scene."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise ValueError(f"{split_dir}: split folder not found (expected <root>/{split}/<scene>/)")
    scenes = _scene_dirs(split_dir)
    if not scenes:
        raise ValueError(f"{split_dir}: no scene folders (each needs 3 .tif frames and {EXPOSURE_FILE})")
    return scenes


@dataclass
class _Cached:
    """A decoded scene held compactly: 8- and 16-bit frames are exactly representable as uint16 codes, which
    halves the memory of float32 (a 1500x1000 Kalantari scene: 27 MB instead of 54 MB, plus the HDR)."""
    name: str
    ldr: np.ndarray
    exposure: np.ndarray
    hdr: np.ndarray | None

    @classmethod
    def pack(cls, scene: Scene) -> "_Cached":
        codes = np.round(scene.ldr * np.float32(65535)).astype(np.uint16)
        exact = np.array_equal(_decode(codes), scene.ldr)
        return cls(scene.name, codes if exact else scene.ldr, scene.exposure, scene.hdr)

    def unpack(self) -> Scene:
        return Scene(self.name, _decode(self.ldr), self.exposure, self.hdr)


def _decode(ldr: np.ndarray) -> np.ndarray:
    """uint16 codes → float32 exactly as read_image scales them; float frames pass through."""
    return ldr.astype(np.float32) / np.float32(65535) if ldr.dtype == np.uint16 else ldr


class KalantariDataset(torch.utils.data.Dataset):
    """Training samples from a Kalantari-layout split.

    Item: {"ldr": (3 frames, 3 channels, h, w) float32, "exposure": (3,) float32 (t_short = 1),
           "hdr": (3, h, w) float32 >= 0, "name": str}.
    `crop=None` gives whole images without augmentation. Otherwise a random `crop` x `crop` window and, with
    `augment`, one of the four shape-preserving symmetries (identity, horizontal flip, vertical flip,
    180° rotation), the same for every frame and the ground truth. The randomness of item `i` comes from
    SeedSequence([seed, epoch, i]) only: call `set_epoch` each epoch, and a resumed run (any number of
    workers) sees exactly the same samples. `cache` keeps decoded scenes in memory (per worker process)."""

    def __init__(self, root, split: str = "Training", crop: int | None = 256, augment: bool = True,
                 seed: int = 0, cache: bool = True):
        if crop is not None and (int(crop) != crop or crop < 1):
            raise ValueError(f"crop must be a positive integer or None, got {crop!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.root, self.split = Path(root), split
        self.scenes = list_scenes(root, split)
        self.crop = None if crop is None else int(crop)
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.cache = cache
        self._cached: dict[int, _Cached] = {}

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.scenes)

    def scene(self, index: int) -> Scene:
        """The whole decoded scene `index` (from the cache when enabled)."""
        return self._entry(index).unpack()

    def _entry(self, index: int) -> _Cached:
        entry = self._cached.get(index)
        if entry is None:
            scene = load_scene(self.scenes[index])
            if not self.cache:
                return _Cached(scene.name, scene.ldr, scene.exposure, scene.hdr)
            entry = self._cached[index] = _Cached.pack(scene)
        return entry

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} scenes")
        entry = self._entry(index)
        if entry.hdr is None:
            raise ValueError(f"{self.scenes[index]}: no ground truth ({' or '.join(HDR_FILES)}) for training")
        ldr, hdr = entry.ldr, entry.hdr  # (3, H, W, 3), (H, W, 3)
        if self.crop is not None:  # crop before decoding: the cached codes of a whole scene are large
            ldr, hdr = self._random_window(index, entry.name, ldr, hdr)
        ldr = np.ascontiguousarray(_decode(ldr).transpose(0, 3, 1, 2), dtype=np.float32)
        hdr = np.ascontiguousarray(np.maximum(np.nan_to_num(hdr.transpose(2, 0, 1)), 0), dtype=np.float32)
        return {"ldr": torch.from_numpy(ldr), "exposure": torch.from_numpy(entry.exposure.copy()),
                "hdr": torch.from_numpy(hdr), "name": entry.name}

    def _random_window(self, index, name, ldr, hdr):
        height, width = hdr.shape[:2]
        c = self.crop
        if height < c or width < c:
            raise ValueError(f"scene {name!r} ({self.scenes[index]}): image {width}x{height} is smaller than "
                             f"the {c}x{c} crop")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, self.epoch, index])))
        top = int(rng.integers(0, height - c + 1))
        left = int(rng.integers(0, width - c + 1))
        symmetry = int(rng.integers(0, 4)) if self.augment else 0
        ldr, hdr = ldr[:, top:top + c, left:left + c], hdr[top:top + c, left:left + c]
        if symmetry in (1, 3):  # horizontal flip (3: both flips = 180° rotation)
            ldr, hdr = ldr[:, :, ::-1], hdr[:, ::-1]
        if symmetry in (2, 3):  # vertical flip
            ldr, hdr = ldr[:, ::-1], hdr[::-1]
        return ldr, hdr
