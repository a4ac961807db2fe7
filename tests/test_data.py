"""apnt.data.io and apnt.data.kalantari on real files written to pytest's tmp_path."""
import shutil

import cv2
import numpy as np
import OpenEXR
import pytest
import tifffile
import torch
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from apnt.data import (ImageReadError, KalantariDataset, exposure_time, is_linear, list_scenes, load_scene,
                       parse_exposure, read_image, synth_scene, write_image, write_scene)
from apnt.data.synth import FRAME_FILES


def _random_rgb(shape=(17, 23), seed=0, top=1.0):
    return (np.random.default_rng(seed).random((*shape, 3)) * top).astype(np.float32)


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


# ---- reading and writing --------------------------------------------------------------------------------------

def test_tiff16_round_trip_is_exact_and_uncompressed(tmp_path):
    codes = np.random.default_rng(1).integers(0, 65536, (19, 31, 3), dtype=np.uint16)
    rgb = codes.astype(np.float32) / 65535
    write_image(tmp_path / "a.tif", rgb)
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        assert tif.pages[0].dtype == np.uint16 and tif.pages[0].compression == tifffile.COMPRESSION.NONE
        np.testing.assert_array_equal(tif.asarray(), codes)
    back = read_image(tmp_path / "a.tif")
    assert back.dtype == np.float32 and back.shape == (19, 31, 3)
    np.testing.assert_array_equal(back, rgb)
    assert not is_linear(tmp_path / "a.tif")


def test_tiff_planar_and_grayscale(tmp_path):
    codes = np.random.default_rng(2).integers(0, 65536, (3, 8, 9), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", codes, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), np.moveaxis(codes, 0, -1) / np.float32(65535))
    tifffile.imwrite(tmp_path / "gray.tif", codes[0], photometric="minisblack")
    gray = read_image(tmp_path / "gray.tif")
    assert gray.shape == (8, 9, 3)
    for c in range(3):
        np.testing.assert_array_equal(gray[..., c], codes[0] / np.float32(65535))


def test_tiff8_is_accepted_with_a_warning(tmp_path):
    codes = np.random.default_rng(3).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "eight.tif", codes, photometric="rgb")
    with pytest.warns(UserWarning, match="8-bit TIFF"):
        rgb = read_image(tmp_path / "eight.tif")
    np.testing.assert_array_equal(rgb, codes / np.float32(255))


def test_png_and_jpeg_are_8bit_rgb(tmp_path):
    rgb = _random_rgb()
    write_image(tmp_path / "a.png", rgb * 1.5 - 0.2)  # out of range: clipped
    expected = np.round(np.clip(rgb * 1.5 - 0.2, 0, 1) * 255) / 255
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), expected, atol=1e-7)
    red = np.zeros((16, 16, 3), np.float32)
    red[..., 0] = 1
    write_image(tmp_path / "red.jpg", red)
    back = read_image(tmp_path / "red.jpg")
    assert back[..., 0].mean() > 0.9 and back[..., 2].mean() < 0.1


def test_alpha_is_dropped(tmp_path):
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 2] = 200  # red in OpenCV's order
    bgra[..., 3] = 7
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    rgb = read_image(tmp_path / "rgba.png")
    assert rgb.shape == (4, 5, 3)
    np.testing.assert_allclose(rgb[0, 0], [200 / 255, 0, 0], atol=1e-7)


def test_hdr_round_trip_and_bgr_on_disk(tmp_path):
    rgb = _random_rgb(top=8.0)
    write_image(tmp_path / "a.hdr", rgb)
    # RGBE: one shared exponent and 8-bit mantissas, so the error scales with the pixel's largest channel
    error = np.abs(read_image(tmp_path / "a.hdr") - rgb)
    assert (error <= rgb.max(axis=2, keepdims=True) / 128).all()
    assert abs(float(np.mean(read_image(tmp_path / "a.hdr") - rgb))) < 1e-3  # rounded, not truncated
    assert is_linear(tmp_path / "a.hdr")
    red = np.zeros((5, 6, 3), np.float32)
    red[..., 0] = 2.5
    write_image(tmp_path / "red.hdr", red)
    on_disk = cv2.imread(str(tmp_path / "red.hdr"), cv2.IMREAD_UNCHANGED)
    assert on_disk[..., 2].min() == pytest.approx(2.5, rel=1e-2)  # OpenCV's channel 2 is red
    assert on_disk[..., 0].max() == 0
    np.testing.assert_allclose(read_image(tmp_path / "red.hdr"), red, rtol=1e-2)


def test_exr_round_trip_float_and_half(tmp_path):
    rgb = _random_rgb(top=100.0) - 1
    write_image(tmp_path / "a.exr", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "a.exr"), rgb)
    f = OpenEXR.File(str(tmp_path / "a.exr"))
    assert f.header()["compression"] == OpenEXR.ZIP_COMPRESSION
    write_image(tmp_path / "h.exr", rgb, half=True)
    np.testing.assert_array_equal(read_image(tmp_path / "h.exr"), rgb.astype(np.float16).astype(np.float32))
    write_image(tmp_path / "sliced.exr", np.asfortranarray(rgb)[::2])  # not C-contiguous
    np.testing.assert_array_equal(read_image(tmp_path / "sliced.exr"), rgb[::2])


def test_exr_with_separate_or_gray_channels(tmp_path):
    rgb = _random_rgb()
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    layered = {"R": rgb[..., 0].copy(), "G": rgb[..., 1].copy(), "B": rgb[..., 2].copy(),
               "Z": np.ones(rgb.shape[:2], np.float32)}  # an extra channel keeps R, G, B separate
    OpenEXR.File(header, layered).write(str(tmp_path / "sep.exr"))
    np.testing.assert_array_equal(read_image(tmp_path / "sep.exr"), rgb)
    OpenEXR.File(header, {"Y": rgb[..., 1].copy()}).write(str(tmp_path / "y.exr"))
    np.testing.assert_array_equal(read_image(tmp_path / "y.exr"), np.repeat(rgb[..., 1:2], 3, axis=2))
    OpenEXR.File(header, {"depth": rgb[..., 1].copy()}).write(str(tmp_path / "z.exr"))
    with pytest.raises(ImageReadError, match="no RGB or Y channels"):
        read_image(tmp_path / "z.exr")


def test_write_is_atomic_and_creates_folders(tmp_path):
    target = tmp_path / "a" / "b" / "out.png"
    write_image(target, _random_rgb())
    assert [p.name for p in target.parent.iterdir()] == ["out.png"]
    bad = _random_rgb()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        write_image(tmp_path / "nan.exr", bad)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        write_image(tmp_path / "gray.png", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="cannot write '.bmp'"):
        write_image(tmp_path / "x.bmp", _random_rgb())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


@pytest.mark.parametrize("suffix", [".tif", ".exr", ".hdr", ".png", ".jpg"])
def test_truncated_files_raise_image_read_error_naming_the_file(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    write_image(path, _random_rgb((64, 80), top=4.0 if suffix in (".exr", ".hdr") else 1.0))
    _truncate(path)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_missing_unknown_and_garbage_files(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(ImageReadError, match="unsupported image type '.bmp'"):
        read_image(tmp_path / "x.bmp")
    for name in ("garbage.dng", "garbage.jpg", "garbage.exr", "empty.tif"):
        (tmp_path / name).write_bytes(b"" if name.startswith("empty") else b"not an image at all" * 10)
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name)
    assert is_linear("x.NEF") and is_linear("y.exr") and not is_linear("z.jpeg")


# ---- exposure times ---------------------------------------------------------------------------------------

def _exif(seconds_num, seconds_den, *, sub_ifd=True):
    exif = Image.Exif()
    if sub_ifd:
        exif.get_ifd(0x8769)[33434] = IFDRational(seconds_num, seconds_den)
    else:
        exif[33434] = IFDRational(seconds_num, seconds_den)
    return exif.tobytes()  # Pillow's PNG writer drops an Exif object holding only a sub-IFD


def test_exposure_time_from_exif(tmp_path):
    im = Image.fromarray(np.zeros((4, 5, 3), np.uint8))
    im.save(tmp_path / "a.png", exif=_exif(1, 250))
    im.save(tmp_path / "a.jpg", exif=_exif(1, 60))
    im.save(tmp_path / "none.png")
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((4, 5, 3), np.uint16), photometric="rgb",
                     extratags=[(33434, 5, 1, (1, 8), True)])
    assert exposure_time(tmp_path / "a.png") == pytest.approx(1 / 250)
    assert exposure_time(tmp_path / "a.jpg") == pytest.approx(1 / 60)
    assert exposure_time(tmp_path / "a.tif") == pytest.approx(1 / 8)
    assert exposure_time(tmp_path / "none.png") is None
    write_image(tmp_path / "a.hdr", _random_rgb())
    assert exposure_time(tmp_path / "a.hdr") is None
    with pytest.raises(ImageReadError, match="no such file"):
        exposure_time(tmp_path / "missing.jpg")


@pytest.mark.parametrize("text, seconds", [("1/250", 0.004), ("0.004", 0.004), ("2", 2.0), (" 1/60 ", 1 / 60),
                                           ("1e-3", 1e-3), ("30/1", 30.0), (0.5, 0.5)])
def test_parse_exposure(text, seconds):
    assert parse_exposure(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, why", [("abc", "expected seconds"), ("0", "positive"), ("-1", "positive"),
                                       ("1/0", "denominator is zero"), ("", "expected seconds"),
                                       ("1/2/3", "expected seconds"), ("inf", "finite"), ("nan", "finite"),
                                       ("1/", "expected seconds"), (0, "positive")])
def test_parse_exposure_rejects(text, why):
    with pytest.raises(ValueError, match=why) as info:
        parse_exposure(text)
    assert repr(text) in str(info.value)


# ---- Kalantari layout -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_scene():
    return synth_scene(np.random.default_rng([7, 0]), 48, 64, name="s0")


@pytest.fixture
def scene_dir(tmp_path, small_scene):
    return write_scene(small_scene, tmp_path / "Training" / "s0")


def test_load_scene_reads_frames_in_order(scene_dir, small_scene):
    scene = load_scene(scene_dir)
    assert scene.name == "s0" and scene.ldr.shape == (3, 48, 64, 3) and scene.ldr.dtype == np.float32
    np.testing.assert_array_equal(scene.ldr, small_scene.ldr)  # 16-bit codes survive exactly, short first
    np.testing.assert_array_equal(scene.exposure, [1, 4, 16])
    assert scene.exposure.dtype == np.float32
    error = np.abs(scene.hdr - small_scene.hdr)
    assert (error <= small_scene.hdr.max(axis=2, keepdims=True) / 128).all()  # RGBE precision
    (scene_dir / "HDRImg.hdr").unlink()
    assert load_scene(scene_dir).hdr is None  # optional at inference


def test_exposure_file_is_evs_relative_to_the_shortest(scene_dir):
    (scene_dir / "exposure.txt").write_text("-1.5\r\n0.5\r\n\r\n2.5\r\n")
    np.testing.assert_array_equal(load_scene(scene_dir).exposure, [1, 4, 16])


@pytest.mark.parametrize("content, why", [("0\n2\n", "expected 3 EV lines .* found 2"),
                                          ("0\n2\n4\n6\n", "found 4"),
                                          ("0\ntwo\n4\n", "not a number"),
                                          ("0\n4\n2\n", "increase strictly"),
                                          ("0\n0\n2\n", "increase strictly"),
                                          (None, "missing")])
def test_malformed_exposure_file(scene_dir, content, why):
    path = scene_dir / "exposure.txt"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=why) as info:
        load_scene(scene_dir)
    assert "exposure.txt" in str(info.value)


def test_wrong_number_of_frames(scene_dir):
    (scene_dir / FRAME_FILES[2]).unlink()
    with pytest.raises(ValueError, match="expected 3 LDR .tif frames .* found 2"):
        load_scene(scene_dir)
    for name in (FRAME_FILES[2], "3_extra.tif"):
        shutil.copy(scene_dir / FRAME_FILES[0], scene_dir / name)
    with pytest.raises(ValueError, match="found 4"):
        load_scene(scene_dir)


def test_mismatched_sizes(scene_dir, small_scene):
    write_image(scene_dir / FRAME_FILES[2], small_scene.ldr[2][:40])
    with pytest.raises(ValueError, match=f"{FRAME_FILES[2]}: frame size 64x40 differs"):
        load_scene(scene_dir)
    write_image(scene_dir / FRAME_FILES[2], small_scene.ldr[2])
    write_image(scene_dir / "HDRImg.hdr", small_scene.hdr[:, :60])
    with pytest.raises(ValueError, match="HDRImg.hdr: size 60x48 differs"):
        load_scene(scene_dir)


def test_list_scenes(tmp_path, small_scene):
    with pytest.raises(ValueError, match="split folder not found"):
        list_scenes(tmp_path, "Training")
    (tmp_path / "Test").mkdir()
    with pytest.raises(ValueError, match="no scene folders"):
        list_scenes(tmp_path, "Test")
    for name in ("PAPER/b", "PAPER/a", "EXTRA/c"):  # the published Test split groups its scenes
        write_scene(small_scene, tmp_path / "Test" / name)
    assert [p.relative_to(tmp_path).as_posix() for p in list_scenes(tmp_path, "Test")] == \
        ["Test/EXTRA/c", "Test/PAPER/a", "Test/PAPER/b"]


# ---- dataset ----------------------------------------------------------------------------------------------------

@pytest.fixture
def dataset_root(tmp_path):
    for k in range(3):
        write_scene(synth_scene(np.random.default_rng([9, k]), 40, 56, name=f"s{k}"), tmp_path / "Training" / f"s{k}")
    return tmp_path


def test_dataset_items_shapes_and_dtypes(dataset_root):
    ds = KalantariDataset(dataset_root, crop=32)
    assert len(ds) == 3
    item = ds[1]
    assert item["ldr"].shape == (3, 3, 32, 32) and item["ldr"].dtype == torch.float32
    assert item["exposure"].tolist() == [1, 4, 16] and item["exposure"].dtype == torch.float32
    assert item["hdr"].shape == (3, 32, 32) and item["hdr"].dtype == torch.float32
    assert item["name"] == "s1" and (item["hdr"] >= 0).all()
    assert item["ldr"].is_contiguous() and item["hdr"].is_contiguous()
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["ldr"].shape == (2, 3, 3, 32, 32) and batch["name"] == ["s0", "s1"]


def test_dataset_full_images_without_crop(dataset_root):
    item = KalantariDataset(dataset_root, crop=None)[0]
    scene = load_scene(dataset_root / "Training" / "s0")
    np.testing.assert_array_equal(item["ldr"].numpy(), scene.ldr.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(item["hdr"].numpy(), np.maximum(scene.hdr, 0).transpose(2, 0, 1))


def test_dataset_randomness_depends_on_seed_epoch_index_only(dataset_root):
    a = KalantariDataset(dataset_root, crop=24, seed=5)
    b = KalantariDataset(dataset_root, crop=24, seed=5, cache=False)
    a.set_epoch(3)
    b.set_epoch(3)
    for i in (2, 0, 1, 2):  # order and caching do not matter
        x, y = a[i], b[i]
        assert torch.equal(x["ldr"], y["ldr"]) and torch.equal(x["hdr"], y["hdr"])
    first = [a[0]["hdr"]]
    for epoch in (4, 5, 6):
        a.set_epoch(epoch)
        first.append(a[0]["hdr"])
    assert not all(torch.equal(first[0], other) for other in first[1:])
    c = KalantariDataset(dataset_root, crop=24, seed=6)
    c.set_epoch(3)
    a.set_epoch(3)
    assert not all(torch.equal(a[i]["hdr"], c[i]["hdr"]) for i in range(3))


def _find_window(full, window):
    """(top, left, symmetry) such that `window` is that symmetry of full[top:top+c, left:left+c], or None."""
    c = window.shape[-2]
    candidates = [window, window.flip(-1), window.flip(-2), window.flip(-1, -2)]
    for top in range(full.shape[-2] - c + 1):
        for left in range(full.shape[-1] - c + 1):
            crop = full[..., top:top + c, left:left + c]
            for symmetry, undone in enumerate(candidates):
                if torch.equal(crop, undone):
                    return top, left, symmetry
    return None


def test_augmentation_is_the_same_for_every_frame_and_the_ground_truth(dataset_root):
    ds = KalantariDataset(dataset_root, crop=24, seed=1)
    full = KalantariDataset(dataset_root, crop=None)[2]
    symmetries = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        item = ds[2]
        where = _find_window(full["hdr"], item["hdr"])
        assert where is not None
        top, left, symmetry = where
        symmetries.add(symmetry)
        candidates = [item["ldr"], item["ldr"].flip(-1), item["ldr"].flip(-2), item["ldr"].flip(-1, -2)]
        assert torch.equal(full["ldr"][..., top:top + 24, left:left + 24], candidates[symmetry])
    assert len(symmetries) > 1
    plain = KalantariDataset(dataset_root, crop=24, augment=False)
    assert _find_window(full["hdr"], plain[2]["hdr"])[2] == 0


def test_dataset_errors(dataset_root):
    with pytest.raises(ValueError, match="scene 's0' .* smaller than the 48x48 crop"):
        KalantariDataset(dataset_root, crop=48)[0]
    with pytest.raises(ValueError, match="crop must be"):
        KalantariDataset(dataset_root, crop=0)
    with pytest.raises(ValueError, match="split folder not found"):
        KalantariDataset(dataset_root, split="Test")
    (dataset_root / "Training" / "s1" / "HDRImg.hdr").unlink()
    with pytest.raises(ValueError, match="no ground truth"):
        KalantariDataset(dataset_root)[1]
    with pytest.raises(IndexError):
        KalantariDataset(dataset_root)[3]
