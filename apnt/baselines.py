"""Classical exposure merges (DESIGN §5), numpy in/out for one scene.

Both take `ldr (3, H, W, 3)` float RGB in [0, 1], frame-major (short, medium = reference, long), and
`exposure (3,)` in any unit, normalised here so t_short = 1. Both return `(H, W, 3)` float32 linear HDR in
units of t_short = 1, clipped to [0, 1] like the ground truth. Neither looks at the ground truth, and
neither aligns anything: on moving content they ghost, which is what they are there to show.

Channel order: OpenCV's MergeDebevec / CalibrateDebevec treat the channels alike (per-channel response,
weights averaged over channels), so RGB goes in unchanged. MergeMertens converts its input with
COLOR_RGB2GRAY for the contrast weight, so it gets RGB (not BGR) to weight the channels as intended.

OpenCV 5 facts these functions rely on (checked by tests/test_baselines.py):
- MergeDebevec returns `exp(Σ w(z_i)(log response[z_i] − log t_i) / Σ w(z_i))`: `response[z]` is the
  exposure E·t that gives code z, in any unit, and the result is E in the unit of `times`. So the γ curve
  `(z/255)^2.2` with t_short = 1 gives H in t_short = 1 units with no further constant. The hat weight is
  `w(z) = min(z, 255 − z)` averaged over the channels, so codes 0 and 255 carry no weight.
- Where every frame is 0 or 255 in every channel the weights sum to 0 and OpenCV falls back to an
  unweighted mean, e.g. 1/4 for a pixel saturated in all frames with t = 1, 4, 16. Those pixels get the
  physical bound instead, per channel: response[255]/t_short (= 1) where the short frame clips, else the
  long frame's response[z]/t_long.
- MergeMertens divides its input by 255 whatever its dtype, so float frames are passed scaled to [0, 255].
"""
from __future__ import annotations

import cv2
import numpy as np

from apnt.tonemap import GAMMA

REFERENCE = 1  # frame index of the medium exposure


def _check(ldr, exposure):
    ldr = np.asarray(ldr)
    t = np.asarray(exposure, dtype=np.float64).reshape(-1)
    if ldr.ndim != 4 or ldr.shape[0] != 3 or ldr.shape[-1] != 3:
        raise ValueError(f"ldr must be (3, H, W, 3) frame-major RGB (short, medium, long), got {ldr.shape}")
    if t.shape != (3,):
        raise ValueError(f"exposure must hold 3 exposure times (one per frame), got {t.size}")
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError(f"exposure times must be positive and finite, got {t.tolist()}")
    ldr = np.clip(np.nan_to_num(ldr.astype(np.float32), nan=0.0), 0.0, 1.0)
    return ldr, t / t.min()  # unit-free: the shortest exposure has t = 1


def _finish(h: np.ndarray) -> np.ndarray:
    h = np.nan_to_num(h.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(h, 0.0, 1.0)


def gamma_response(gamma: float = GAMMA) -> np.ndarray:
    """The known camera curve as OpenCV's CRF: (256, 1, 3) float32, response[z] = (z/255)^γ.

    response[0] would be 0 and log(0) = −inf, and 0·(−inf) = NaN even at zero weight, so it takes
    response[1] (OpenCV's own choice for its default linear curve)."""
    r = (np.arange(256, dtype=np.float64) / 255.0) ** gamma
    r[0] = r[1]
    return np.repeat(r.astype(np.float32)[:, None, None], 3, axis=2)


def calibrated_response(frames8: list, times: np.ndarray, gamma: float = GAMMA) -> np.ndarray:
    """`CalibrateDebevec` curve, rescaled so its mid-grey code 128 matches the γ curve per channel.

    Debevec's solver fixes its curve only up to a factor (it pins g(128) = 0, i.e. response[128] = 1);
    pinning 128 to (128/255)^γ puts the result in the same units as the γ baseline using nothing but
    the assumed camera curve."""
    r = cv2.createCalibrateDebevec().process(frames8, times=times.astype(np.float32)).astype(np.float64)
    r = np.maximum(np.nan_to_num(r, nan=0.0), 0.0)
    r *= (128.0 / 255.0) ** gamma / np.maximum(r[128:129], 1e-30)
    r = np.maximum(r, 1e-12)  # log(0) guard, as in gamma_response
    return r.astype(np.float32)


def debevec(ldr, exposure, crf: str = "gamma2.2") -> np.ndarray:
    """Debevec & Malik merge via `cv2.createMergeDebevec` on the 8-bit quantised frames.

    crf="gamma2.2": the known response `(z/255)^2.2`; crf="calibrate": `cv2.createCalibrateDebevec`
    from these frames, scaled as `calibrated_response` says."""
    ldr, t = _check(ldr, exposure)
    frames8 = [np.ascontiguousarray(np.rint(f * 255.0).astype(np.uint8)) for f in ldr]
    if crf == "gamma2.2":
        response = gamma_response()
    elif crf == "calibrate":
        response = calibrated_response(frames8, t)
    else:
        raise ValueError(f"crf must be 'gamma2.2' or 'calibrate', got {crf!r}")
    h = cv2.createMergeDebevec().process(frames8, times=t.astype(np.float32), response=response)

    # Pixels OpenCV leaves undefined (all weights zero; see module doc) get the physical bound.
    z = np.stack(frames8)
    undefined = np.all((z == 0) | (z == 255), axis=(0, 3))
    if undefined.any():
        resp = response[:, 0, :].astype(np.float64)  # (256, 3)
        from_short = resp[z[0], np.arange(3)] / t[0]  # lower bound where the short frame clips
        from_long = resp[z[2], np.arange(3)] / t[2]   # upper bound where the long frame is black
        bound = np.where(z[0] == 255, from_short, from_long)
        h = np.where(undefined[..., None], bound, h)
    return _finish(h)


def mertens(ldr, exposure) -> np.ndarray:
    """Mertens exposure fusion via `cv2.createMergeMertens`, read as an LDR at the reference exposure.

    The fused image M is display-referred; clipped to [0, 1] and linearised like a frame of the
    reference exposure: `H = M^2.2 / t_2` (t_short = 1)."""
    ldr, t = _check(ldr, exposure)
    frames = [np.ascontiguousarray(f * 255.0) for f in ldr]  # OpenCV scales by 1/255 for every dtype
    fused = cv2.createMergeMertens().process(frames)
    fused = np.clip(np.nan_to_num(fused, nan=0.0), 0.0, 1.0)
    return _finish(fused.astype(np.float64) ** GAMMA / t[REFERENCE])


BASELINES = {"debevec": debevec, "mertens": mertens}
