"""`apnt fuse`: a scene folder or three images → linear HDR (.exr/.hdr), a preview PNG and explanation maps."""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import numpy as np

from apnt.tonemap import GAMMA

OUT_SUFFIXES = (".exr", ".hdr")
PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg")


class FuseError(Exception):
    """A problem to report as one line: `<file>: <problem>`."""


def add_cli(subparsers):
    """Register `apnt fuse` on an argparse subparsers object; the handler is `args.fn(args)` → exit code."""
    from apnt.baselines import BASELINES
    from apnt.models import MODELS

    p = subparsers.add_parser(
        "fuse", help="merge a bracket (scene folder or three images) into linear HDR",
        description="Merge short / medium / long exposures into linear HDR aligned to the medium frame, in "
                    "units of the short exposure (t_short = 1). Inputs: a Kalantari-layout scene folder "
                    "(three 16-bit .tif frames + exposure.txt), or three images SHORT MEDIUM LONG. "
                    "8/16-bit TIFF/PNG/JPEG are read as display-referred LDRs; linear files (camera RAW via "
                    "rawpy, .hdr, .exr) are converted to LDRs as clip(x, 0, 1)^(1/2.2), the inverse of the "
                    "γ-2.2 response the models assume. Exposure times: --exposures, else exposure.txt, else "
                    "each file's EXIF.")
    p.add_argument("inputs", nargs="+", metavar="SCENE_DIR | SHORT MEDIUM LONG",
                   help="a scene folder, or three image files from shortest to longest exposure")
    p.add_argument("--exposures", nargs=3, metavar=("SHORT", "MEDIUM", "LONG"),
                   help="exposure times in seconds, fractions accepted (e.g. 1/250 1/60 1/15)")
    p.add_argument("--model", default="ahdrnet", choices=list(MODELS) + list(BASELINES),
                   help="network or classical baseline (default ahdrnet)")
    p.add_argument("--weights", default="demo",
                   help="'demo' (shipped), a .safetensors file or training checkpoint, or the authors' .pt")
    p.add_argument("--backend", default="auto", help="op backend: auto | reference | native | triton")
    p.add_argument("--out", required=True, type=Path, help="output HDR image (.exr or .hdr)")
    p.add_argument("--preview", type=Path, help="tonemapped preview image (.png)")
    p.add_argument("--explain", type=Path, metavar="DIR",
                   help="write the model's intermediate maps (attention, colour-mapped) and output as PNGs")
    p.add_argument("--align", action="store_true", help="pre-align the frames (OpenCV MTB translation)")
    p.add_argument("--crf", default="gamma2.2", choices=("gamma2.2", "calibrate"),
                   help="camera response for debevec (default gamma2.2)")
    p.add_argument("--tile", type=int, metavar="PIXELS", help="tiled inference with this core size")
    p.add_argument("--overlap", type=int, metavar="PIXELS", help="overlap between tiles (default 32)")
    p.add_argument("--max-memory", metavar="SIZE", help="pick the tile size to fit this memory, e.g. 2G")
    p.add_argument("--nft-radius", type=int, metavar="PIXELS",
                   help="apnt: search the short frame's texture within this many pixels (default: the whole "
                        "frame up to 1500x1000 px, beyond that 5%% of the longer side, at least 64 px)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(fn=_cmd_fuse)
    return p


def _cmd_fuse(args) -> int:
    try:
        return _run(args)
    except Exception as e:  # noqa: BLE001 - users get one line; --debug shows where it came from
        if args.debug:
            traceback.print_exc()
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, FileNotFoundError) and args.weights == "demo":
            message += "; pass --weights PATH (a .safetensors file or training checkpoint)"
        if not isinstance(e, (FuseError, ValueError, TypeError, OSError)):
            message = f"{type(e).__name__}: {message} (run with --debug for the traceback)"
        print(f"apnt fuse: error: {message}", file=sys.stderr)
        return 2


def _check_outputs(args) -> None:
    """Reject bad output paths before any work is done."""
    if args.out.suffix.lower() not in OUT_SUFFIXES:
        raise FuseError(f"{args.out}: output must be .exr or .hdr (linear HDR), not '{args.out.suffix}'")
    if args.preview is not None and args.preview.suffix.lower() not in PREVIEW_SUFFIXES:
        raise FuseError(f"{args.preview}: preview must be .png or .jpg, not '{args.preview.suffix}'")
    if args.explain is not None and args.explain.exists() and not args.explain.is_dir():
        raise FuseError(f"{args.explain}: --explain needs a folder, and this is a file")


def _run(args) -> int:
    from apnt.data import write_image
    from apnt.infer import _fuse
    from apnt.tonemap import preview

    _check_outputs(args)
    ldr, exposure, label = _read_bracket(args.inputs, args.exposures)
    from apnt.baselines import BASELINES

    is_baseline = args.model in BASELINES
    start = time.perf_counter()
    result = _fuse(ldr, exposure, args.model, weights=args.weights, backend=args.backend, tile=args.tile,
                   overlap=args.overlap, max_memory=args.max_memory, crf=args.crf, align=args.align,
                   progress=sys.stderr.isatty(), explain=args.explain is not None and not is_baseline,
                   nft_radius=args.nft_radius)
    seconds = time.perf_counter() - start
    hdr = result.hdr
    write_image(args.out, hdr)
    if args.preview is not None:
        write_image(args.preview, preview(hdr))
    if args.explain is not None:
        if is_baseline:
            print(f"apnt fuse: note: {args.model} is a classical merge without intermediate maps; "
                  f"nothing written to {args.explain}")
        else:
            _write_explain(args.explain, result.maps)
    plan = result.plan
    tiles = ("untiled" if plan is None or plan.tile is None else
             f"{plan.count} tiles of {plan.tile_w}x{plan.tile_h} px (overlap {plan.overlap}, halo {plan.halo})")
    backend = f" ({result.backend})" if result.backend else ""
    print(f"{label}: {hdr.shape[1]}x{hdr.shape[0]}, {result.model}{backend}, {seconds:.2f} s, {tiles} -> {args.out}")
    return 0


def _write_explain(folder: Path, maps: dict) -> None:
    """Every map as a PNG, drawn as `apnt.viz.picture` shows it."""
    from apnt.data import write_image
    from apnt.viz import picture

    for name, m in maps.items():
        write_image(folder / f"{name}.png", picture(name, m))


# ---- inputs ---------------------------------------------------------------------------------------------------------

def _read_bracket(inputs, exposures):
    """(ldr (3, H, W, 3), exposure (3,) seconds or relative, label for the summary line)."""
    from apnt.data import load_scene

    times = None if exposures is None else _parse_times(exposures)
    if len(inputs) == 1:
        folder = Path(inputs[0])
        if not folder.is_dir():
            raise FuseError(f"{folder}: not a scene folder (give a folder, or three images SHORT MEDIUM LONG)")
        if times is not None:
            return _read_folder_frames(folder, times), times, folder.name
        if not (folder / "exposure.txt").is_file():
            raise FuseError(f"{folder / 'exposure.txt'}: missing; pass --exposures SHORT MEDIUM LONG "
                            "(seconds, e.g. --exposures 1/250 1/60 1/15)")
        scene = load_scene(folder, ground_truth=False)  # fusing needs no ground truth: a broken one is no error
        return scene.ldr, scene.exposure, folder.name
    if len(inputs) != 3:
        raise FuseError(f"{' '.join(inputs)}: expected one scene folder or three images (short, medium, long), "
                        f"got {len(inputs)} paths")
    paths = [Path(p) for p in inputs]
    frames = [_read_ldr(p) for p in paths]
    for p, f in zip(paths[1:], frames[1:]):
        if f.shape != frames[0].shape:
            raise FuseError(f"{p}: size {f.shape[1]}x{f.shape[0]} differs from {paths[0]}'s "
                            f"{frames[0].shape[1]}x{frames[0].shape[0]}")
    if times is None:
        times = _exif_times(paths)
    if not (np.diff(times) > 0).all():
        raise FuseError(f"{paths[0]}: exposure times {times.tolist()} s must increase (give SHORT MEDIUM LONG)")
    return np.stack(frames), times, paths[1].stem


def _read_folder_frames(folder: Path, times):
    """A scene folder's three frames without its exposure.txt (--exposures overrides or replaces it)."""
    from apnt.data.kalantari import frame_paths

    paths = frame_paths(folder)
    if len(paths) != 3:
        raise FuseError(f"{folder}: expected 3 .tif frames (short, medium, long), found {len(paths)}")
    frames = [_read_ldr(p) for p in paths]
    for p, f in zip(paths[1:], frames[1:]):
        if f.shape != frames[0].shape:
            raise FuseError(f"{p}: frame size {f.shape[1]}x{f.shape[0]} differs from {paths[0].name}'s "
                            f"{frames[0].shape[1]}x{frames[0].shape[0]}")
    return np.stack(frames)


def _parse_times(exposures) -> np.ndarray:
    from apnt.data import parse_exposure

    try:
        times = np.array([parse_exposure(t) for t in exposures])
    except ValueError as e:
        raise FuseError(f"--exposures: {e}") from None
    if not (np.diff(times) > 0).all():
        raise FuseError(f"--exposures: {' '.join(exposures)} must increase (SHORT MEDIUM LONG)")
    return times


def _read_ldr(path: Path) -> np.ndarray:
    """An LDR frame in [0, 1]; linear files become display-referred with the γ the models invert."""
    from apnt.data import is_linear, read_image

    rgb = read_image(path)
    if is_linear(path):
        rgb = np.clip(rgb, 0, 1) ** (1 / GAMMA)
    return rgb.astype(np.float32)


def _exif_times(paths) -> np.ndarray:
    from apnt.data import exposure_time

    times = []
    for p in paths:
        t = exposure_time(p)
        if t is None:
            raise FuseError(f"{p}: no exposure time in the file's metadata; pass --exposures SHORT MEDIUM LONG "
                            "(seconds, e.g. --exposures 1/250 1/60 1/15)")
        times.append(t)
    return np.array(times)
