"""apnt.data.synth: synthetic scenes written in the Kalantari layout and read back through the real loader."""
import argparse
import filecmp
import inspect

import numpy as np
import pytest
import tifffile

from apnt.data import list_scenes, load_scene, synth_scene, synthesize
from apnt.data import synth
from apnt.data.synth import ASSETS, FRAME_FILES, PHOTOGRAPHS, add_cli


def _radiance(ldr, t):
    """The model's inverse: H = L^2.2 / t."""
    return ldr.astype(np.float64) ** 2.2 / t


def test_layout_on_disk(tmp_path):
    paths = synthesize(tmp_path, "Test", 2, 40, 56, seed=3, progress=False)
    assert [p.name for p in paths] == ["scene_3_000", "scene_3_001"]
    assert list_scenes(tmp_path, "Test") == paths
    for path in paths:
        assert sorted(p.name for p in path.iterdir()) == sorted([*FRAME_FILES, "exposure.txt", "HDRImg.hdr"])
        assert (path / "exposure.txt").read_text() == "0\n2\n4\n"
        with tifffile.TiffFile(path / FRAME_FILES[0]) as tif:
            page = tif.pages[0]
            assert page.dtype == np.uint16 and page.shape == (40, 56, 3)
            assert page.compression == tifffile.COMPRESSION.NONE
        scene = load_scene(path)
        np.testing.assert_array_equal(scene.exposure, [1, 4, 16])
        assert scene.hdr.shape == (40, 56, 3) and scene.hdr.min() >= 0 and scene.hdr.max() <= 1
    assert not [p for p in (tmp_path / "Test").iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_scene_k_depends_only_on_seed_and_k(tmp_path):
    synthesize(tmp_path / "a", "Training", 1, 40, 48, seed=4, progress=False)
    synthesize(tmp_path / "b", "Training", 2, 40, 48, seed=4, progress=False)
    for file in FRAME_FILES:
        assert filecmp.cmp(tmp_path / "a/Training/scene_4_000" / file, tmp_path / "b/Training/scene_4_000" / file,
                           shallow=False)
    one = synth_scene(np.random.default_rng([4, 1]), 40, 48)
    two = synth_scene(np.random.default_rng([4, 1]), 40, 48)
    np.testing.assert_array_equal(one.ldr, two.ldr)
    np.testing.assert_array_equal(one.hdr, two.hdr)
    np.testing.assert_array_equal(load_scene(tmp_path / "b/Training/scene_4_001").ldr, one.ldr)
    other = synth_scene(np.random.default_rng([5, 1]), 40, 48)
    assert not np.array_equal(one.ldr, other.ldr)


def test_frames_are_16bit_codes_and_exposures_are_1_4_16():
    scene = synth_scene(np.random.default_rng(0), 64, 48)
    assert scene.ldr.shape == (3, 64, 48, 3) and scene.ldr.dtype == np.float32 and scene.hdr.dtype == np.float32
    codes = scene.ldr * 65535
    np.testing.assert_array_equal(codes, np.round(codes))
    assert scene.ldr.min() >= 0 and scene.ldr.max() <= 1
    np.testing.assert_array_equal(scene.exposure, [1, 4, 16])


@pytest.mark.parametrize("k", range(4))
def test_reference_saturates_where_the_short_frame_does_not(k):
    scene = synth_scene(np.random.default_rng([0, k]), 96, 96)
    saturated = (scene.ldr[1] >= 0.99).any(axis=2)
    assert saturated.mean() > 0.002
    recoverable = saturated & (scene.ldr[0] < 0.99).all(axis=2)
    assert recoverable.sum() >= 20  # highlights the short frame still records
    # the reference's ground truth there lies above its saturation point 1/4, below the short frame's 1
    assert np.median(scene.hdr[recoverable].max(axis=1)) > 0.25


def test_ground_truth_matches_the_reference_frame_on_unsaturated_pixels():
    for k in range(3):
        scene = synth_scene(np.random.default_rng([1, k]), 96, 128)
        estimate = _radiance(scene.ldr[1], 4.0)
        usable = (scene.ldr[1] < 0.95) & (scene.hdr > 0.01)  # unsaturated, above the read-noise floor
        assert usable.sum() > 1000
        ratio = estimate[usable] / scene.hdr[usable]
        assert abs(np.median(ratio) - 1) < 0.01  # unbiased: same scale and convention
        assert np.percentile(np.abs(ratio - 1), 90) < 0.15  # within noise


def test_static_scene_is_consistent_across_exposures():
    scene = synth_scene(np.random.default_rng([2, 0]), 96, 96, max_shake=0, objects=0)
    short = _radiance(scene.ldr[0], 1.0)
    usable = (scene.ldr[0] < 0.95).all(axis=2) & (scene.ldr[1] < 0.95).all(axis=2) & (scene.hdr > 0.02).all(axis=2)
    assert usable.sum() > 500
    ratio = short[usable] / scene.hdr[usable]
    assert abs(np.median(ratio) - 1) < 0.02
    assert np.percentile(np.abs(ratio - 1), 90) < 0.3  # the short frame is the noisy one


def _mismatch(scene, frame):
    """Fraction of pixels where frame `frame` disagrees with the ground truth beyond noise (both unsaturated)."""
    t = scene.exposure[frame]
    other = _radiance(scene.ldr[frame], t)
    usable = (scene.ldr[frame] < 0.95) & (scene.hdr * t < 0.95) & (scene.hdr > 0.005)
    return np.mean(usable & (np.abs(other - scene.hdr) > 0.3 * scene.hdr + 0.01))


def test_objects_move_and_the_camera_shakes():
    def scene(**kw):
        return synth_scene(np.random.default_rng([3, 3]), 96, 96, **kw)

    static, moving, shaken = scene(max_shake=0, objects=0), scene(max_shake=0, objects=3), scene(objects=0)
    assert max(_mismatch(static, 0), _mismatch(static, 2)) < 0.002
    assert max(_mismatch(moving, 0), _mismatch(moving, 2)) > 0.01
    assert max(_mismatch(shaken, 0), _mismatch(shaken, 2)) > 0.01
    for aligned in (moving, shaken):  # the reference itself is aligned to the ground truth
        assert _mismatch(aligned, 1) < 0.002


def test_bad_arguments():
    with pytest.raises(ValueError, match="height and width >= 32"):
        synth_scene(np.random.default_rng(0), 16, 64)
    with pytest.raises(ValueError, match="max_shake"):
        synth_scene(np.random.default_rng(0), 64, 64, max_shake=-1)
    with pytest.raises(ValueError, match="objects"):
        synth_scene(np.random.default_rng(0), 64, 64, objects=(3, 1))
    with pytest.raises(ValueError, match="seed"):
        synthesize("unused", "Training", 1, 64, 64, seed=-1, progress=False)
    with pytest.raises(ValueError, match="split"):
        synthesize("unused", "../x", 1, 64, 64, progress=False)


def test_assets_are_shipped_with_their_license():
    for name in (*PHOTOGRAPHS, "LICENSE.txt"):
        assert (ASSETS / name).is_file()
    assert "CC0" in (ASSETS / "LICENSE.txt").read_text()
    source = inspect.getsource(synth)
    assert "/shared" not in source and "../" not in source  # nothing outside the package at run time


def _parser():
    parser = argparse.ArgumentParser(prog="apnt")
    add_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli(tmp_path, capsys):
    args = _parser().parse_args(["synth", "--out", str(tmp_path), "--scenes", "2", "--height", "40",
                                 "--width", "48", "--seed", "5"])
    assert args.fn(args) == 0
    assert [p.name for p in list_scenes(tmp_path, "Training")] == ["scene_5_000", "scene_5_001"]
    assert "wrote 2 scenes" in capsys.readouterr().out
    defaults = _parser().parse_args(["synth", "--out", "x"])
    assert (defaults.split, defaults.scenes, defaults.height, defaults.width, defaults.seed) == \
        ("Training", 8, 256, 256, 0)
    for bad in (["--scenes", "0"], ["--height", "8"], ["--seed", "-2"], ["--split", "Validation"], []):
        with pytest.raises(SystemExit):
            _parser().parse_args(["synth", *(["--out", "x"] if bad else []), *bad])
    capsys.readouterr()
