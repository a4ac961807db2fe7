"""Image files in and out. Inside apnt every image is an RGB float32 numpy array (H, W, 3).

Display-referred files (TIFF, PNG, JPEG) are returned as code values scaled to [0, 1] (no response curve is
undone here); `.hdr`, `.exr` and camera RAW files are linear radiance (`is_linear`). Every read failure raises
`ImageReadError` with one line naming the file and the problem; what the C libraries print about a bad file
(OpenCV's log, OpenEXR's error handler) is kept off stderr, so that one line is all the user sees.

Library choices (DESIGN §5): tifffile for TIFF (`cv2.imread` without IMREAD_UNCHANGED silently gives 8 bit,
Pillow drops 16-bit RGB to 8 bit); OpenCV for `.hdr` and PNG (its arrays are BGR); Pillow for JPEG (OpenCV
decodes a truncated JPEG without error); the `openexr` package for `.exr` (OpenCV 5 wheels have no EXR codec);
rawpy for RAW with a linear, unbrightened 16-bit demosaic.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import uuid
import warnings
from pathlib import Path

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")
DISPLAY_SUFFIXES = TIFF_SUFFIXES + (".png", ".jpg", ".jpeg")
RAW_SUFFIXES = (".dng", ".cr2", ".nef", ".arw", ".raf", ".orf", ".rw2")
LINEAR_SUFFIXES = (".hdr", ".exr") + RAW_SUFFIXES
READ_SUFFIXES = DISPLAY_SUFFIXES + LINEAR_SUFFIXES
WRITE_SUFFIXES = (".exr", ".hdr", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
EXIF_IFD = 0x8769
EXPOSURE_TIME_TAG = 33434


class ImageReadError(ValueError):
    """A file that could not be read as an image: missing, unsupported, truncated or corrupt."""


class InputWarning(UserWarning):
    """An input apnt accepts but that is probably not what was meant (an 8-bit frame where brackets are 16 bit).
    `apnt` commands print these as one line, `apnt <command>: warning: <file>: <problem>`."""


def is_linear(path) -> bool:
    """True for files that hold linear radiance (.hdr, .exr, camera RAW), False for display-referred ones."""
    suffix = Path(path).suffix.lower()
    if suffix not in READ_SUFFIXES:
        raise ImageReadError(f"{path}: unsupported image type '{suffix}' (supported: {' '.join(READ_SUFFIXES)})")
    return suffix in LINEAR_SUFFIXES


# ---- reading ------------------------------------------------------------------------------------------------

def read_image(path) -> np.ndarray:
    """Read an image file as RGB float32 (H, W, 3): grayscale is replicated to three channels, alpha dropped.

    16-bit TIFF/PNG are scaled by 1/65535, 8-bit files by 1/255 (an 8-bit TIFF warns: brackets are usually
    16 bit); .hdr/.exr values are returned as stored; RAW files are demosaiced linearly with the camera's white
    balance. Raises ImageReadError (also for NaN / Inf values in .hdr/.exr files)."""
    path = Path(path)
    suffix = path.suffix.lower()
    is_linear(path)  # rejects unknown extensions before touching the file system
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    kind = "TIFF" if suffix in TIFF_SUFFIXES else "RAW" if suffix in RAW_SUFFIXES else suffix[1:].upper()
    reader = {"TIFF": _read_tiff, "RAW": _read_raw, "HDR": _read_hdr, "EXR": _read_exr, "PNG": _read_png}
    try:
        rgb = reader.get(kind, _read_jpeg)(path)
    except ImageReadError:
        raise
    except Exception as e:  # library errors arrive as many types; the user needs the file and one line
        raise ImageReadError(f"{path}: cannot read {kind} file, corrupt or truncated? ({_one_line(e)})") from e
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageReadError(f"{path}: empty image {rgb.shape[:2]}")
    rgb = np.ascontiguousarray(rgb, dtype=np.float32)
    if kind in ("EXR", "HDR"):  # float formats can store NaN / Inf: they would poison a merge or a loss silently
        bad = int(np.count_nonzero(~np.isfinite(rgb)))
        if bad:
            raise ImageReadError(f"{path}: {bad} non-finite values (NaN or Inf) in the image")
    return rgb


def _one_line(e: BaseException) -> str:
    text = e.args[0].decode(errors="replace") if len(e.args) == 1 and isinstance(e.args[0], bytes) else str(e)
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def _to_rgb(a: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) / (H, W, 1|2|3|4) → (H, W, 3): replicate gray, drop alpha."""
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ImageReadError(f"{path}: unsupported pixel layout {a.shape}")
    if a.shape[2] <= 2:  # gray or gray + alpha
        return np.repeat(a[..., :1], 3, axis=2)
    return a[..., :3]


def _scale_codes(a: np.ndarray, path: Path) -> np.ndarray:
    """Integer code values → [0, 1] float32; float samples pass through."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255)
    if a.dtype == np.uint16:
        return a.astype(np.float32) / np.float32(65535)
    if a.dtype.kind == "f":
        return a.astype(np.float32)
    raise ImageReadError(f"{path}: unsupported sample type {a.dtype}")


class _Unusual(Exception):
    """A TIFF variant tifffile reads but does not convert to RGB."""


@contextlib.contextmanager
def _tifffile_log_held():
    """Hold back what tifffile logs (it reports a bad file through `logging`, e.g. "invalid offset to first page",
    which Python's last-resort handler prints to stderr as a second line). Yields [False]; the records are passed
    on only when the caller sets `keep[0] = True` (a good read), as `_c_stderr_captured` does for OpenEXR's prints."""
    import logging

    log = logging.getLogger("tifffile")
    records: list[logging.LogRecord] = []

    class _Hold(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler, propagate = _Hold(), log.propagate
    log.addHandler(handler)
    log.propagate = False
    keep = [False]
    try:
        yield keep
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
        if keep[0]:
            for record in records:
                log.handle(record)


def _read_tiff(path: Path) -> np.ndarray:
    with _tifffile_log_held() as keep:
        a = _read_tiff_codes(path)
        keep[0] = True
    if a.dtype == np.uint8:
        warnings.warn(f"{path}: 8-bit TIFF (16 bit is usual for exposure brackets); precision is 1/255",
                      InputWarning, stacklevel=3)
    return _scale_codes(_to_rgb(a, path), path)


def _read_tiff_codes(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if page.photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB):
                raise _Unusual(f"photometric {page.photometric.name}")
            a = page.asarray()
            if page.axes.startswith("S") and a.ndim == 3:  # planar configuration: samples first
                a = np.moveaxis(a, 0, -1)
    except _Unusual:
        a = _opencv_unchanged(path)  # OpenCV's libtiff converts palette, CMYK and YCbCr to BGR
    except Exception as first:
        # codecs tifffile lacks (it needs imagecodecs for JPEG-in-TIFF, ...): try OpenCV's libtiff
        try:
            a = _opencv_unchanged(path)
        except Exception:
            raise ImageReadError(f"{path}: cannot read TIFF file, corrupt or truncated? ({_one_line(first)})") \
                from first
    return a


def _opencv_unchanged(path: Path) -> np.ndarray:
    """cv2.imread with IMREAD_UNCHANGED (keeps 16 bit and float), as RGB(A) or gray."""
    import cv2

    # OpenCV logs libtiff's and its decoders' complaints to stderr (several lines per bad file), then returns None:
    # silence its log while it reads, the ImageReadError below says the same in one line
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if a is None:  # OpenCV returns None for every kind of failure
        raise ImageReadError(f"{path}: cannot decode (corrupt, truncated or an unsupported variant)")
    if a.ndim == 3 and a.shape[2] == 3:
        a = a[..., ::-1]
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., [2, 1, 0, 3]]
    return a


def _read_png(path: Path) -> np.ndarray:
    return _scale_codes(_to_rgb(_opencv_unchanged(path), path), path)  # OpenCV keeps 16-bit PNG


def _read_jpeg(path: Path) -> np.ndarray:
    """Pillow, not OpenCV: libjpeg in OpenCV decodes a truncated file without error (grey fill), Pillow raises.
    The EXIF orientation is applied, as photo viewers do."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    return _scale_codes(rgb, path)


def _read_hdr(path: Path) -> np.ndarray:
    a = _opencv_unchanged(path)
    return _to_rgb(a, path).astype(np.float32)


@contextlib.contextmanager
def _c_stderr_captured():
    """Redirect file descriptor 2 to a temporary file; yields a list that receives what was written.

    OpenEXR's C core prints every error to stderr itself (and its Python binding a warning), besides or instead of
    raising. Process-wide for the duration of one read (what another thread prints meanwhile is passed on after a
    good read, dropped after a failed one); without a usable fd 2 nothing is redirected."""
    printed: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield printed
        return
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield printed
            finally:
                os.dup2(saved, 2)
                tmp.seek(0)
                printed.append(tmp.read().decode(errors="replace"))
    finally:
        os.close(saved)


def _read_exr(path: Path) -> np.ndarray:
    error = None
    with _c_stderr_captured() as printed:
        try:
            rgb = _read_exr_channels(path)
        except ImageReadError:
            raise
        except Exception as e:  # noqa: BLE001 - reported below, with what the library printed
            error = e
    text = "".join(printed)
    if error is None:
        sys.stderr.write(text)  # a good file: pass on whatever the library had to say (usually nothing)
        return rgb
    # the binding's exception ("file has 0 parts") hides the cause the core printed: report that
    causes = [line.split(": ", 1)[-1].strip() for line in text.splitlines() if "EXR_ERR" in line]
    detail = causes[0] if causes else _one_line(error)
    raise ImageReadError(f"{path}: cannot read EXR file, corrupt or truncated? ({detail[:300]})") from error


def _read_exr_channels(path: Path) -> np.ndarray:
    import OpenEXR

    f = OpenEXR.File(str(path))
    channels = f.channels()
    for name in ("RGB", "RGBA"):  # R, G, B (A) are merged into one array by default
        if name in channels:
            return _to_rgb(np.asarray(channels[name].pixels), path).astype(np.float32)
    if all(c in channels for c in "RGB"):
        return np.stack([np.asarray(channels[c].pixels, dtype=np.float32) for c in "RGB"], axis=-1)
    if "Y" in channels:
        return _to_rgb(np.asarray(channels["Y"].pixels, dtype=np.float32), path)
    raise ImageReadError(f"{path}: no RGB or Y channels (found {', '.join(sorted(channels)) or 'none'})")


def _read_raw(path: Path) -> np.ndarray:
    import rawpy

    with rawpy.imread(str(path)) as raw:
        # gamma (1, 1) and no auto-brightening keep the demosaiced values proportional to sensor exposure;
        # adjust_maximum_thr=0 keeps the white level from the file: LibRaw's default (0.75) replaces it with the
        # frame's own maximum when that exceeds 75 % of it, scaling brighter frames of a bracket up by up to 33 %
        a = raw.postprocess(gamma=(1, 1), no_auto_bright=True, output_bps=16, use_camera_wb=True,
                            adjust_maximum_thr=0.0)
    return _scale_codes(_to_rgb(a, path), path)


# ---- writing ------------------------------------------------------------------------------------------------

def write_image(path, rgb: np.ndarray, *, half: bool = False) -> None:
    """Write an RGB (H, W, 3) image; the format follows the extension.

    .exr: float32 (or float16 with `half=True`), ZIP compression; .hdr: Radiance RGBE; .png/.jpg: 8 bit and
    .tif: 16 bit uncompressed, both clipped to [0, 1] and rounded. Parent folders are created; the file appears
    atomically (written under a temporary name in the same folder, then renamed). Raises ValueError for a bad
    array or extension, OSError when the file cannot be written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(f"{path}: cannot write '{suffix}' files (supported: {' '.join(WRITE_SUFFIXES)})")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"{path}: expected an RGB image of shape (H, W, 3), got {rgb.shape}")
    if not np.isfinite(rgb).all():
        raise ValueError(f"{path}: {int((~np.isfinite(rgb)).sum())} non-finite values in the image")
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name keeps the extension: OpenCV picks the codec from it
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        if suffix == ".exr":
            _write_exr(tmp, rgb, half)
        elif suffix == ".hdr":
            _write_opencv(tmp, _rgbe_rounding(np.maximum(rgb, 0).astype(np.float32)))  # RGBE: no negatives
        elif suffix in (".png", ".jpg", ".jpeg"):
            _write_opencv(tmp, _quantize(rgb, 255, np.uint8))
        else:
            import tifffile
            tifffile.imwrite(tmp, _quantize(rgb, 65535, np.uint16), photometric="rgb", compression=None)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _rgbe_rounding(rgb: np.ndarray) -> np.ndarray:
    """Add half an RGBE quantum per pixel: the Radiance encoder truncates its 8-bit mantissas (shared exponent of
    the largest channel), which would bias every value low by ~0.3 % of the pixel's maximum."""
    top = rgb.max(axis=2, keepdims=True)
    _, exponent = np.frexp(top)
    half = np.ldexp(np.float32(1), exponent - 9).astype(np.float32)  # quantum = 2^(exponent - 8)
    return np.where(top > 0, rgb + half, rgb)


def _quantize(rgb: np.ndarray, top: int, dtype) -> np.ndarray:
    return np.round(np.clip(rgb.astype(np.float32), 0, 1) * np.float32(top)).astype(dtype)


def _write_opencv(path: Path, rgb: np.ndarray) -> None:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), params):
        raise OSError(f"{path}: OpenCV could not write the file")


def _write_exr(path: Path, rgb: np.ndarray, half: bool) -> None:
    import OpenEXR

    if half:  # beyond ±65504 float16 is inf
        pixels = np.clip(rgb, -65504, 65504).astype(np.float16)
    else:
        pixels = rgb.astype(np.float32)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    # the binding reads the buffer directly: it must be C-contiguous
    OpenEXR.File(header, {"RGB": np.ascontiguousarray(pixels)}).write(str(path))


# ---- exposure times ---------------------------------------------------------------------------------------

def exposure_time(path) -> float | None:
    """The exposure time in seconds stored in the file (EXIF ExposureTime; RAW makernotes through LibRaw;
    the EXR `expTime` attribute), or None when the file does not record one. Raises ImageReadError when the
    file is missing or cannot be parsed at all."""
    path = Path(path)
    suffix = path.suffix.lower()
    is_linear(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        if suffix in RAW_SUFFIXES:
            import rawpy
            with rawpy.imread(str(path)) as raw:
                value = raw.other.shutter_speed
        elif suffix == ".exr":
            import OpenEXR
            value = OpenEXR.File(str(path), header_only=True).header().get("expTime")
        elif suffix == ".hdr":
            return None  # Radiance's EXPOSURE= is a pixel multiplier, not a shutter time
        else:
            value = _exif_exposure(path)
    except Exception as e:
        raise ImageReadError(f"{path}: cannot read metadata ({_one_line(e)})") from e
    return _positive_seconds(value)


def _exif_exposure(path: Path):
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        exif = im.getexif()
        value = exif.get_ifd(EXIF_IFD).get(EXPOSURE_TIME_TAG)
        return exif.get(EXPOSURE_TIME_TAG) if value is None else value


def _positive_seconds(value) -> float | None:
    if isinstance(value, tuple) and len(value) == 2:  # (numerator, denominator) rational
        value = value[0] / value[1] if value[1] else None
    try:
        seconds = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def parse_exposure(text) -> float:
    """An exposure time in seconds from text: "1/250", "0.004", "2", " 1/60 ". Raises ValueError for anything
    that is not a positive finite number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        parts = str(text).strip().split("/")
        try:
            values = [float(part) for part in parts]
        except ValueError:
            values = []
        if len(values) not in (1, 2):
            raise ValueError(f"invalid exposure time {text!r}: expected seconds, e.g. '1/250', '0.004' or '2'")
        if len(values) == 2 and values[1] == 0:
            raise ValueError(f"invalid exposure time {text!r}: the denominator is zero")
        seconds = values[0] / values[1] if len(values) == 2 else values[0]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"invalid exposure time {text!r}: must be a positive, finite number of seconds")
    return seconds
