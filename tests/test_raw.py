"""Camera RAW through real files: minimal DNGs (16-bit RGGB mosaic) written with tifffile, read by rawpy/LibRaw.

`write_dng` makes a valid DNG 1.4 file: IFD0 holds the CFA data (PhotometricInterpretation 32803) and the DNG
tags LibRaw needs (DNGVersion, UniqueCameraModel, CFARepeatPatternDim, CFAPattern, BlackLevel, WhiteLevel,
ColorMatrix1, CalibrationIlluminant1, AsShotNeutral), plus EXIF ExposureTime, which DNG allows in IFD0 and
LibRaw reports as `raw.other.shutter_speed`, so `apnt fuse` finds RAW exposure times without --exposures.
"""
from fractions import Fraction

import numpy as np
import OpenEXR
import pytest
import tifffile

from apnt.cli import main
from apnt.data import exposure_time, read_image
from apnt.data.io import ImageReadError

BLACK, WHITE = 512, 16383  # a 14-bit sensor with a black pedestal
NEUTRAL = (0.5, 1.0, 0.8)  # camera RGB of a grey surface: the white balance scales R by 2 and B by 1.25
# XYZ (D65) -> linear sRGB: with this as ColorMatrix1 the camera's primaries are sRGB's and LibRaw's colour
# conversion to sRGB output is the identity, so scene RGB comes back as written
XYZ_TO_SRGB = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))
TIMES = ("1/100", "1/25", "4/25")  # relative 1, 4, 16


def _rationals(values, denominator=10000):
    return tuple(v for x in values for v in (round(x * denominator), denominator))


def write_dng(path, rgb, *, exposure=None, orientation=1):
    """Write the linear scene `rgb` (H, W, 3), in units of the sensor range (0 = black level, 1 = white level),
    as a DNG with an RGGB Bayer mosaic: each photosite keeps its own channel of the grey-balanced camera signal
    (scene RGB times NEUTRAL), clipped to the white level. `exposure` (a string like "1/25") is stored as EXIF
    ExposureTime; `orientation` as the TIFF Orientation tag."""
    h, w, _ = rgb.shape
    channel = np.zeros((h, w), np.intp)  # RGGB: R at (even, even), G at (even, odd) and (odd, even), B at (odd, odd)
    channel[0::2, 1::2] = channel[1::2, 0::2] = 1
    channel[1::2, 1::2] = 2
    camera = rgb * np.asarray(NEUTRAL)
    signal = np.take_along_axis(camera, channel[..., None], axis=2)[..., 0]
    mosaic = np.round(BLACK + np.clip(signal, 0, 1) * (WHITE - BLACK)).astype(np.uint16)
    tags = [
        (271, "s", 0, "apnt", True),  # Make
        (272, "s", 0, "test DNG", True),  # Model
        (274, "H", 1, orientation, True),  # Orientation
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, "apnt test DNG", True),  # UniqueCameraModel
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: R G / G B
        (50710, "B", 3, (0, 1, 2), True),  # CFAPlaneColor
        (50711, "H", 1, 1, True),  # CFALayout: rectangular
        (50714, "H", 1, BLACK, True),  # BlackLevel
        (50717, "H", 1, WHITE, True),  # WhiteLevel
        (50721, "2i", 9, _rationals(np.ravel(XYZ_TO_SRGB)), True),  # ColorMatrix1 (SRATIONAL)
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
        (50728, "2I", 3, _rationals(NEUTRAL), True),  # AsShotNeutral
    ]
    if exposure is not None:
        t = Fraction(exposure)
        tags.append((33434, "2I", 1, (t.numerator, t.denominator), True))  # ExposureTime
    tifffile.imwrite(path, mosaic, photometric=32803, subfiletype=0, compression=None, extratags=tags)
    return path


def _scene(h, w, top):
    """A smooth grey scene: a horizontal ramp times a vertical one, from 0.05 * top to top."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    grey = top * (0.05 + 0.95 * (x / (w - 1)) * (0.6 + 0.4 * y / (h - 1)))
    return np.repeat(grey[..., None], 3, axis=2)


def _read_exr(path):
    return np.asarray(OpenEXR.File(str(path)).channels()["RGB"].pixels, dtype=np.float32)


# ---- read_image -----------------------------------------------------------------------------------------------

def test_dng_reads_as_linear_white_balanced_rgb(tmp_path):
    scene = _scene(32, 48, 0.42)
    one = read_image(write_dng(tmp_path / "one.dng", scene, exposure="1/50"))
    two = read_image(write_dng(tmp_path / "two.dng", 2 * scene, exposure="1/25"))
    assert one.dtype == np.float32 and one.shape == (32, 48, 3)
    inner = np.s_[4:-4, 4:-4]  # the demosaic guesses at the borders
    # black level subtracted, white level = 1, grey stays grey after the camera white balance, no gamma
    np.testing.assert_allclose(one[inner], scene[inner], rtol=0.01, atol=2e-3)
    np.testing.assert_allclose(two[inner], 2 * scene[inner], rtol=0.01, atol=2e-3)
    # doubling the exposure doubles the values; `two` peaks at 84 % of the white level, where LibRaw's default
    # adjust_maximum_thr (0.75) would have rescaled it to its own maximum (values ~20 % too high)
    assert two.max() < 1
    np.testing.assert_allclose(two[inner] / one[inner], 2, rtol=0.01)
    assert exposure_time(tmp_path / "one.dng") == pytest.approx(1 / 50)
    assert exposure_time(tmp_path / "two.dng") == pytest.approx(1 / 25)


def test_dng_orientation_is_applied(tmp_path):
    scene = _scene(24, 32, 0.5)
    upright = read_image(write_dng(tmp_path / "upright.dng", scene))
    # Orientation 3: the stored rows and columns are reversed; LibRaw turns the image back
    turned = read_image(write_dng(tmp_path / "turned.dng", scene[::-1, ::-1], orientation=3))
    np.testing.assert_allclose(turned[4:-4, 4:-4], upright[4:-4, 4:-4], atol=2e-3)


# ---- apnt fuse ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def raw_bracket(tmp_path_factory):
    """Three DNGs of one scene at 1/100, 1/25 and 4/25 s (EXIF exposure times recorded), and the scene's
    radiance in units of the short frame's sensor range (what `apnt fuse` returns: t_short = 1)."""
    folder = tmp_path_factory.mktemp("raw_bracket")
    radiance = _scene(40, 56, 0.9)
    radiance[8:20, 30:46] *= 0.02  # a dark patch only the long frame sees well
    paths = [write_dng(folder / f"{name}.dng", radiance * float(Fraction(t) / Fraction(TIMES[0])), exposure=t)
             for name, t in zip(("short", "medium", "long"), TIMES)]
    return paths, radiance


def test_cli_fuses_dng_bracket_with_debevec(raw_bracket, tmp_path, capsys):
    paths, radiance = raw_bracket
    out = tmp_path / "debevec.exr"
    assert main(["fuse", *map(str, paths), "--exposures", *TIMES, "--model", "debevec", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("medium: 56x40, debevec")
    hdr = _read_exr(out)
    assert hdr.shape == (40, 56, 3) and np.isfinite(hdr).all()
    # the RAW frames' linear values became LDRs the γ-2.2 response inverts: the merge recovers the radiance
    inner = np.s_[4:-4, 4:-4]
    rel = np.abs(hdr[inner] - radiance[inner]) / radiance[inner]
    # (the demosaic smears the dark patch's sharp edges: a few pixels there are far off)
    assert np.median(rel) < 0.01 and np.percentile(rel, 95) < 0.03
    # without --exposures the times come from the DNGs' EXIF ExposureTime: the same merge
    exif = tmp_path / "exif.exr"
    assert main(["fuse", *map(str, paths), "--model", "debevec", "--out", str(exif)]) == 0
    np.testing.assert_allclose(_read_exr(exif), hdr, rtol=1e-5, atol=1e-6)


def test_cli_fuses_dng_bracket_with_ahdrnet(raw_bracket, tmp_path):
    paths, _ = raw_bracket
    out = tmp_path / "ahdrnet.exr"
    assert main(["fuse", *map(str, paths), "--exposures", *TIMES, "--model", "ahdrnet", "--weights", "none",
                 "--backend", "reference", "--out", str(out)]) == 0
    hdr = _read_exr(out)
    assert hdr.shape == (40, 56, 3) and np.isfinite(hdr).all()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_cli_corrupt_dng_is_one_line_exit_2(raw_bracket, tmp_path, capsys, damage):
    paths, _ = raw_bracket
    bad = tmp_path / "medium.dng"
    data = paths[1].read_bytes()
    bad.write_bytes(b"not a raw file\n" * 40 if damage == "garbage" else data[:200])
    with pytest.raises(ImageReadError, match="cannot read RAW file"):
        read_image(bad)
    out = tmp_path / "x.exr"
    assert main(["fuse", str(paths[0]), str(bad), str(paths[2]), "--exposures", *TIMES, "--model", "debevec",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("apnt fuse: error: ") and str(bad) in err
    assert not out.exists()
