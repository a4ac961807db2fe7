"""Robustness to bad files (issue 8), the cases tests/test_robust_files.py leaves out.

- Corrupt .hdr / .exr / .tif given to `apnt fuse` as three files (there the .hdr/.exr cases are ground truths).
- A scene folder with `--exposures` (frames read without exposure.txt, a separate code path): 2 or 4 frames,
  frames of different sizes, a corrupt frame, an 8-bit frame.
- More malformed exposure.txt: empty, NaN, equal EVs, four lines, a folder of that name.
- Real `python -m apnt ...` processes: in-process tests cannot see what a library prints through `logging`
  (pytest's log capture takes it), and tifffile reports a garbage TIFF that way ("invalid offset to first page"),
  which used to reach stderr as a second line before apnt's one.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from apnt.cli import main
from apnt.data import read_image, write_image


def _scene(root):
    return next((root / "Test").iterdir())


def _frames(root):
    return sorted(_scene(root).glob("*.tif"))


def _truncate(path, keep=0.6):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _one_line(err, command, path, words):
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"apnt {command}: error: ") and "Traceback" not in err, lines[0]
    assert str(path) in lines[0] and words in lines[0], lines[0]


def _fuse(*inputs, out, extra=()):
    return main(["fuse", *map(str, inputs), "--model", "mertens", "--out", str(out), *extra])


EXPOSURES = ("--exposures", "1", "4", "16")


# ---- three files: linear .hdr / .exr and TIFF frames -------------------------------------------------------------

def _linear(root, tmp_path, suffix):
    paths = [tmp_path / f"{i}{suffix}" for i in range(3)]
    for p, f in zip(paths, _frames(root)):
        write_image(p, read_image(f) ** 2.2)
    return paths


def _garbage_hdr(p):
    p.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 9")


THREE_FILE_DAMAGE = {
    # name: (suffix, index of the damaged file, damage, words)
    "truncated hdr": (".hdr", 2, lambda p: _truncate(p, 0.3), "cannot decode"),
    "garbage hdr": (".hdr", 1, _garbage_hdr, "cannot decode"),
    "empty hdr": (".hdr", 0, lambda p: p.write_bytes(b""), "cannot decode"),
    "garbage exr": (".exr", 1, lambda p: p.write_bytes(b"v/1\x01" + b"\x00" * 100), "cannot read EXR"),
    "empty exr": (".exr", 0, lambda p: p.write_bytes(b""), "cannot read EXR"),
    "truncated tif": (".tif", 1, lambda p: _truncate(p, 0.3), "cannot read TIFF"),
    "garbage tif": (".tif", 2, lambda p: p.write_bytes(b"II*\x00" + b"\x17" * 200), "cannot read TIFF"),
    "missing tif": (".tif", 2, lambda p: p.unlink(), "no such file"),
}


@pytest.mark.parametrize("name", list(THREE_FILE_DAMAGE))
def test_three_damaged_files(root, tmp_path, capfd, name):
    suffix, index, damage, words = THREE_FILE_DAMAGE[name]
    paths = _frames(root) if suffix == ".tif" else _linear(root, tmp_path, suffix)
    damage(paths[index])
    assert _fuse(*paths, out=tmp_path / "o.exr", extra=EXPOSURES) == 2
    _one_line(capfd.readouterr().err, "fuse", paths[index], words)
    assert not (tmp_path / "o.exr").exists()


def test_three_files_8bit_tif_is_accepted_with_a_warning(root, tmp_path, capfd):
    frames = _frames(root)
    tifffile.imwrite(frames[0], (tifffile.imread(frames[0]) >> 8).astype(np.uint8), photometric="rgb")
    assert _fuse(*frames, out=tmp_path / "o.exr", extra=EXPOSURES) == 0
    assert capfd.readouterr().err.strip().splitlines() == [
        f"apnt fuse: warning: {frames[0]}: 8-bit TIFF (16 bit is usual for exposure brackets); precision is 1/255"]
    assert read_image(tmp_path / "o.exr").shape == (32, 40, 3)


@pytest.mark.parametrize("exposures, words", [
    (("1", "x", "16"), "--exposures: invalid exposure time 'x'"),
    (("1", "0", "16"), "--exposures: invalid exposure time '0'"),
    (("1", "1/0", "16"), "--exposures: invalid exposure time '1/0'"),
    (("16", "4", "1"), "must increase"),
])
def test_malformed_exposures_option(root, tmp_path, capfd, exposures, words):
    assert _fuse(*_frames(root), out=tmp_path / "o.exr", extra=("--exposures", *exposures)) == 2
    _one_line(capfd.readouterr().err, "fuse", "", words)


def test_three_files_without_exposure_times(root, tmp_path, capfd):
    frames = _frames(root)  # 16-bit TIFFs without EXIF
    assert _fuse(*frames, out=tmp_path / "o.exr") == 2
    _one_line(capfd.readouterr().err, "fuse", frames[0], "no exposure time")


# ---- a scene folder with --exposures (exposure.txt not read) ------------------------------------------------------

def _crop(p):
    tifffile.imwrite(p, tifffile.imread(p)[:30], photometric="rgb")


FOLDER_DAMAGE = {
    "two frames": (lambda d: (d / "2_long.tif").unlink(), "", "found 2"),
    "four frames": (lambda d: shutil.copy(d / "2_long.tif", d / "3_longer.tif"), "", "found 4"),
    "frame sizes": (lambda d: _crop(d / "2_long.tif"), "2_long.tif", "40x30 differs"),
    "garbage tif": (lambda d: (d / "1_medium.tif").write_bytes(b"II*\x00" + b"\x17" * 200), "1_medium.tif",
                    "cannot read TIFF"),
    "truncated tif": (lambda d: _truncate(d / "0_short.tif"), "0_short.tif", "truncated"),
}


@pytest.mark.parametrize("name", list(FOLDER_DAMAGE))
def test_folder_with_exposures_option(root, tmp_path, capfd, name):
    damage, file, words = FOLDER_DAMAGE[name]
    scene = _scene(root)
    damage(scene)
    (scene / "exposure.txt").unlink()  # --exposures replaces it
    assert _fuse(scene, out=tmp_path / "o.exr", extra=EXPOSURES) == 2
    _one_line(capfd.readouterr().err, "fuse", scene / file if file else scene, words)


def test_folder_with_exposures_option_8bit_frame(root, tmp_path, capfd):
    frame = _scene(root) / "2_long.tif"
    tifffile.imwrite(frame, (tifffile.imread(frame) >> 8).astype(np.uint8), photometric="rgb")
    assert _fuse(_scene(root), out=tmp_path / "o.exr", extra=EXPOSURES) == 0
    assert capfd.readouterr().err.strip().splitlines() == [
        f"apnt fuse: warning: {frame}: 8-bit TIFF (16 bit is usual for exposure brackets); precision is 1/255"]


# ---- more malformed exposure.txt --------------------------------------------------------------------------------

def _exposure_dir(d):
    (d / "exposure.txt").unlink()
    (d / "exposure.txt").mkdir()


EXPOSURE_DAMAGE = {
    "empty": (lambda d: (d / "exposure.txt").write_text(""), "found 0"),
    "blank lines": (lambda d: (d / "exposure.txt").write_text("\n \n\t\n"), "found 0"),
    "nan": (lambda d: (d / "exposure.txt").write_text("0\nnan\n4\n"), "non-finite"),
    "inf": (lambda d: (d / "exposure.txt").write_text("0\n2\ninf\n"), "non-finite"),
    "equal": (lambda d: (d / "exposure.txt").write_text("0\n0\n4\n"), "must increase"),
    "four lines": (lambda d: (d / "exposure.txt").write_text("0\n2\n4\n6\n"), "found 4"),
    "a folder": (_exposure_dir, "missing"),
}


def _argv(command, root, tmp_path):
    return {"fuse": ["fuse", str(_scene(root)), "--model", "mertens", "--out", str(tmp_path / "o.exr")],
            "eval": ["eval", "--model", "mertens", "--data", str(root), "--no-progress"],
            "train": ["train", "--data", str(root), "--split", "Test", "--out", str(tmp_path / "run"), "--steps", "1",
                      "--batch", "1", "--crop", "16", "--no-progress", "--config", "features=8",
                      "--config", "growth=8", "--config", "dense_layers=1"]}[command]


@pytest.mark.parametrize("command", ["fuse", "eval", "train"])
@pytest.mark.parametrize("name", list(EXPOSURE_DAMAGE))
def test_malformed_exposure_file(root, tmp_path, capfd, command, name):
    damage, words = EXPOSURE_DAMAGE[name]
    damage(_scene(root))
    assert main(_argv(command, root, tmp_path)) == 2
    _one_line(capfd.readouterr().err, command, _scene(root) / "exposure.txt", words)


# ---- real processes: what libraries print or log reaches the terminal ---------------------------------------------

def _run(argv):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run([sys.executable, "-m", "apnt", *argv], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("command", ["fuse", "eval", "train"])
def test_garbage_tif_one_line_in_a_real_process(root, tmp_path, command):
    frame = _scene(root) / "0_short.tif"
    frame.write_bytes(b"II*\x00" + b"\x17" * 200)  # tifffile logs "invalid offset to first page"
    proc = _run(_argv(command, root, tmp_path))
    assert proc.returncode == 2, proc.stderr
    _one_line(proc.stderr, command, frame, "cannot read TIFF")


def test_damaged_files_one_line_in_a_real_process(root, tmp_path):
    """One process, several problems: each file through `apnt fuse` SHORT MEDIUM LONG."""
    frames = _frames(root)
    hdr, exr = _linear(root, tmp_path, ".hdr"), _linear(root, tmp_path, ".exr")
    _truncate(frames[1], 0.3)
    _garbage_hdr(hdr[2])
    _truncate(exr[0], 0.5)
    for paths, bad, words in ((frames, frames[1], "cannot read TIFF"), (hdr, hdr[2], "cannot decode"),
                              (exr, exr[0], "cannot read EXR")):
        proc = _run(["fuse", *map(str, paths), *EXPOSURES, "--model", "mertens", "--out", str(tmp_path / "o.exr")])
        assert proc.returncode == 2, proc.stderr
        _one_line(proc.stderr, "fuse", bad, words)
    proc = _run(["fuse", *map(str, frames), *EXPOSURES, "--model", "mertens", "--out", str(tmp_path / "o.exr"),
                 "--debug"])
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"apnt fuse: error: {frames[1]}: ")


def test_8bit_frame_one_warning_line_in_a_real_process(root, tmp_path):
    frame = _scene(root) / "1_medium.tif"
    tifffile.imwrite(frame, (tifffile.imread(frame) >> 8).astype(np.uint8), photometric="rgb")
    proc = _run(_argv("fuse", root, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"apnt fuse: warning: {frame}: 8-bit TIFF (16 bit is usual for exposure brackets); precision is 1/255"]
