"""Robustness to bad files (issue 8): truncated or corrupt images, 8-bit frames, frames of different sizes, missing
or malformed exposure.txt, 2 or 4 frames, crafted weights files.

Through the Python API each problem is an exception naming the file; through `apnt fuse` / `eval` / `train`
it is exit code 2 and exactly one line on stderr (captured at the file-descriptor level: what OpenCV, libtiff or
OpenEXR print themselves counts too), no traceback unless --debug.
"""
import json
import shutil
import struct

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import save_file

from apnt import models
from apnt.cli import main
from apnt.data import ImageReadError, KalantariDataset, load_scene, read_image, write_image
from apnt.data.io import InputWarning


def _scene(root):
    return next((root / "Test").iterdir())


def _truncate(path, keep=0.6):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _exr_ground_truth(scene):
    """Replace HDRImg.hdr by a truncated HDRImg.exr."""
    write_image(scene / "HDRImg.exr", read_image(scene / "HDRImg.hdr"))
    (scene / "HDRImg.hdr").unlink()
    _truncate(scene / "HDRImg.exr")


def _crop_frame(scene):
    tifffile.imwrite(scene / "2_long.tif", tifffile.imread(scene / "2_long.tif")[:30], photometric="rgb")


# name: (damage(scene dir), the file the message must name (relative to the scene; "" = the scene folder),
#        words of the problem)
DAMAGE = {
    "truncated tif": (lambda d: _truncate(d / "1_medium.tif"), "1_medium.tif", "truncated"),
    "garbage tif": (lambda d: (d / "0_short.tif").write_bytes(b"II*\x00" + b"\x17" * 200), "0_short.tif",
                    "cannot read TIFF"),
    "empty tif": (lambda d: (d / "2_long.tif").write_bytes(b""), "2_long.tif", "cannot read TIFF"),
    "frame sizes": (_crop_frame, "2_long.tif", "40x30 differs"),
    "two frames": (lambda d: (d / "2_long.tif").unlink(), "", "found 2"),
    "four frames": (lambda d: shutil.copy(d / "2_long.tif", d / "3_longer.tif"), "", "found 4"),
    "no exposure.txt": (lambda d: (d / "exposure.txt").unlink(), "exposure.txt", "missing"),
    "exposure not numbers": (lambda d: (d / "exposure.txt").write_text("0\ntwo\n4\n"), "exposure.txt",
                             "not a number"),
    "exposure two lines": (lambda d: (d / "exposure.txt").write_text("0\n2\n"), "exposure.txt", "expected 3 EV"),
    "exposure binary": (lambda d: (d / "exposure.txt").write_bytes(b"\x00\xff\xfe\x81" * 8), "exposure.txt",
                        "expected 3 EV"),
    "exposure descending": (lambda d: (d / "exposure.txt").write_text("4\n2\n0\n"), "exposure.txt",
                            "must increase"),
    "exposure overflow": (lambda d: (d / "exposure.txt").write_text("0\n200\n400\n"), "exposure.txt", "stops"),
}
# Ground-truth damage: eval and train need HDRImg, fuse does not read it.
GROUND_TRUTH_DAMAGE = {
    "truncated hdr": (lambda d: _truncate(d / "HDRImg.hdr"), "HDRImg.hdr", "corrupt"),
    "garbage hdr": (lambda d: (d / "HDRImg.hdr").write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 9"),
                    "HDRImg.hdr", "corrupt"),
    "truncated exr": (_exr_ground_truth, "HDRImg.exr", "cannot read EXR"),
}

UNREADABLE = ("truncated tif", "garbage tif", "empty tif", "truncated hdr", "garbage hdr", "truncated exr")


def _argv(command, root, tmp_path):
    scene = _scene(root)
    return {"fuse": ["fuse", str(scene), "--model", "mertens", "--out", str(tmp_path / "out.exr")],
            "eval": ["eval", "--model", "mertens", "--data", str(root), "--no-progress"],
            "train": ["train", "--data", str(root), "--split", "Test", "--out", str(tmp_path / "run"), "--steps", "1",
                      "--batch", "1", "--crop", "16", "--no-progress", "--config", "features=8",
                      "--config", "growth=8", "--config", "dense_layers=1"]}[command]


def _one_error_line(capfd, command, path, words):
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    line = lines[0]
    assert line.startswith(f"apnt {command}: error: ") and "Traceback" not in err, line
    assert str(path) in line and words in line, line
    return line


def _damaged(root, table, name):
    damage, file, words = table[name]
    scene = _scene(root)
    damage(scene)
    return scene / file if file else scene, words


@pytest.mark.parametrize("command", ["fuse", "eval", "train"])
@pytest.mark.parametrize("name", list(DAMAGE))
def test_cli_one_line_exit_2(root, tmp_path, capfd, command, name):
    path, words = _damaged(root, DAMAGE, name)
    assert main(_argv(command, root, tmp_path)) == 2
    _one_error_line(capfd, command, path, words)
    assert not (tmp_path / "out.exr").exists()


@pytest.mark.parametrize("command", ["eval", "train"])
@pytest.mark.parametrize("name", list(GROUND_TRUTH_DAMAGE))
def test_cli_broken_ground_truth(root, tmp_path, capfd, command, name):
    path, words = _damaged(root, GROUND_TRUTH_DAMAGE, name)
    assert main(_argv(command, root, tmp_path)) == 2
    _one_error_line(capfd, command, path, words)


def test_fuse_does_not_read_the_ground_truth(root, tmp_path, capfd):
    _damaged(root, GROUND_TRUTH_DAMAGE, "truncated hdr")
    assert main(_argv("fuse", root, tmp_path)) == 0
    assert capfd.readouterr().err == "" and (tmp_path / "out.exr").is_file()


@pytest.mark.parametrize("name", list(DAMAGE) + list(GROUND_TRUTH_DAMAGE))
def test_api_raises_naming_the_file(root, name):
    table = DAMAGE if name in DAMAGE else GROUND_TRUTH_DAMAGE
    path, words = _damaged(root, table, name)
    for load in (lambda: load_scene(_scene(root)), lambda: KalantariDataset(root, "Test", crop=16)[0]):
        with pytest.raises(ValueError) as info:  # ImageReadError is a ValueError
            load()
        assert str(path) in str(info.value) and words in str(info.value) and "\n" not in str(info.value)
    if name in UNREADABLE:
        with pytest.raises(ImageReadError, match=path.name):
            read_image(path)


@pytest.mark.parametrize("command", ["fuse", "eval", "train"])
def test_debug_shows_the_traceback(root, tmp_path, capfd, command):
    path, _ = _damaged(root, DAMAGE, "truncated tif")
    argv = _argv(command, root, tmp_path) + ["--debug"]
    if command == "fuse":  # fuse reports itself: the traceback, then the same one line
        assert main(argv) == 2
        err = capfd.readouterr().err
        assert "Traceback" in err and err.strip().splitlines()[-1].startswith("apnt fuse: error: ")
    else:  # main() re-raises
        with pytest.raises(ImageReadError, match="1_medium.tif"):
            main(argv)


def test_synth_accepts_debug(tmp_path):
    assert main(["synth", "--out", str(tmp_path), "--scenes", "1", "--height", "32", "--width", "32",
                 "--debug"]) == 0


def _to_8bit(path):
    tifffile.imwrite(path, (tifffile.imread(path) >> 8).astype(np.uint8), photometric="rgb")


@pytest.mark.parametrize("command", ["fuse", "eval", "train"])
def test_8bit_frame_is_accepted_with_a_one_line_warning(root, tmp_path, capfd, command):
    frame = _scene(root) / "1_medium.tif"
    _to_8bit(frame)
    assert main(_argv(command, root, tmp_path)) == 0
    err = capfd.readouterr().err
    assert err.strip().splitlines() == [f"apnt {command}: warning: {frame}: 8-bit TIFF (16 bit is usual for "
                                        "exposure brackets); precision is 1/255"], err


def test_8bit_frame_through_the_api(root):
    frame = _scene(root) / "1_medium.tif"
    codes = tifffile.imread(frame) >> 8
    _to_8bit(frame)
    with pytest.warns(InputWarning, match="1_medium.tif: 8-bit TIFF"):
        scene = load_scene(_scene(root))
    np.testing.assert_array_equal(scene.ldr[1], codes / np.float32(255))


def test_exposure_file_with_byte_order_mark_and_crlf(root):
    exposure = _scene(root) / "exposure.txt"
    evs = exposure.read_text().split()
    exposure.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(evs).encode() + b"\r\n")  # as Windows Notepad saves it
    np.testing.assert_array_equal(load_scene(_scene(root)).exposure, [1, 4, 16])


def test_three_file_inputs(root, tmp_path, capfd):
    scene = _scene(root)
    frames = sorted(str(p) for p in scene.glob("*.tif"))
    fuse = ["fuse", "--model", "mertens", "--exposures", "1", "4", "16", "--out", str(tmp_path / "o.exr")]
    for paths, words in ((frames[:2], "expected one scene folder or three images"),
                         (frames + [frames[0]], "expected one scene folder or three images")):
        assert main(fuse + paths) == 2
        _one_error_line(capfd, "fuse", paths[0], words)
    exr = [tmp_path / f"{i}.exr" for i in range(3)]
    for p, f in zip(exr, frames):
        write_image(p, read_image(f) ** 2.2)
    _truncate(exr[2], 0.8)
    assert main(fuse + [str(p) for p in exr]) == 2
    _one_error_line(capfd, "fuse", exr[2], "cannot read EXR")
    _crop_frame(scene)
    assert main(fuse + frames) == 2
    _one_error_line(capfd, "fuse", frames[2], "differs")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_exr_is_refused(root, tmp_path, capfd, value):
    import OpenEXR

    frames = sorted(str(p) for p in _scene(root).glob("*.tif"))
    exr = [tmp_path / f"{i}.exr" for i in range(3)]
    for p, f in zip(exr, frames):
        write_image(p, read_image(f) ** 2.2)
    rgb = read_image(exr[1])
    rgb[3, 5, 1] = value   # write_image refuses this: write through the binding
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {"RGB": np.ascontiguousarray(rgb)}).write(str(exr[1]))
    with pytest.raises(ImageReadError, match="1 non-finite values"):
        read_image(exr[1])
    fuse = ["fuse", "--model", "mertens", "--exposures", "1", "4", "16", "--out", str(tmp_path / "o.exr")]
    assert main(fuse + [str(p) for p in exr]) == 2
    _one_error_line(capfd, "fuse", exr[1], "non-finite")


# ---- crafted weights files --------------------------------------------------------------------------------------

TINY = {"features": 8, "growth": 8, "dense_layers": 1}


def _weights(tmp_path, name, state=None, **meta):
    net = models.create("ahdrnet", **TINY)
    state = {k: v.contiguous() for k, v in net.state_dict().items()} if state is None else state
    header = {"model": "ahdrnet", "config": json.dumps(net.config)}
    header.update(meta)
    path = tmp_path / f"{name}.safetensors"
    save_file(state(net.state_dict()) if callable(state) else state, str(path), metadata=header)
    return path


def _non_string_metadata(tmp_path):
    """A header whose metadata value is a JSON object (the format allows strings only)."""
    raw = _weights(tmp_path, "ok").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header["__metadata__"]["config"] = TINY
    text = json.dumps(header).encode()
    path = tmp_path / "object_metadata.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return path


def _garbage(path):
    path.write_bytes(b"\xff" * 64)  # reads as a 2^64-byte header length
    return path


CRAFTED = {
    "wrong shape": (lambda t: _weights(t, "shape", lambda s: dict(s, **{"conv1.weight": torch.zeros(3, 3)})),
                    "size mismatch for conv1.weight"),
    "missing tensor": (lambda t: _weights(t, "missing", lambda s: {k: v for k, v in s.items() if k != "conv1.bias"}),
                       "Missing key(s)"),
    "extra tensor": (lambda t: _weights(t, "extra", lambda s: dict(s, payload=torch.zeros(4))), "Unexpected key(s)"),
    "wrong model": (lambda t: _weights(t, "other", model="apnt"), "holds a 'apnt' model, not 'ahdrnet'"),
    "config not json": (lambda t: _weights(t, "cfg", config="features=8"), "metadata 'config' is not JSON"),
    "config a list": (lambda t: _weights(t, "cfglist", config="[8, 8]"), "must be a JSON object, got list"),
    "config unknown key": (lambda t: _weights(t, "cfgkey", config='{"exec": "rm -rf /"}'),
                           "does not make a 'ahdrnet' model"),
    "config bad value": (lambda t: _weights(t, "cfgval", config='{"features": -3}'), "does not make a 'ahdrnet'"),
    "non-string metadata": (_non_string_metadata, "not a readable safetensors file"),
    "garbage": (lambda t: _garbage(t / "garbage.safetensors"), "not a readable safetensors file"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_weights_are_a_clear_error(root, tmp_path, capfd, name):
    make, words = CRAFTED[name]
    path = make(tmp_path)
    with pytest.raises(ValueError) as info:
        models.load("ahdrnet", path)
    assert str(path) in str(info.value) and words in str(info.value) and "\n" not in str(info.value)
    out = tmp_path / "out.exr"
    assert main(["fuse", str(_scene(root)), "--weights", str(path), "--out", str(out)]) == 2
    _one_error_line(capfd, "fuse", path, words)
    assert not out.exists()


def test_checkpoint_dir_with_a_crafted_state_json(tmp_path, capfd):
    step = tmp_path / "step_7"
    step.mkdir()
    shutil.copy(_weights(tmp_path, "ok"), step / "model.safetensors")
    (step / "state.json").write_text('["not", "an", "object"]')
    with pytest.raises(ValueError, match="state.json: expected a JSON object, got list"):
        models.load("ahdrnet", step)
    (step / "state.json").write_text("{truncated")
    with pytest.raises(ValueError, match="state.json: not JSON"):
        models.load("ahdrnet", step)
