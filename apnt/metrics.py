"""Image-quality metrics of the Kalantari'17 protocol (DESIGN §5): PSNR-μ / PSNR-L and SSIM-μ / SSIM-L.

Conventions
- Inputs: torch tensors `(3, H, W)` or `(N, 3, H, W)`, or numpy arrays `(H, W, 3)` or `(N, H, W, 3)`, in linear
  HDR units (the ground truth is ~[0, 1], units of t_short = 1). `pred` and `target` may mix the two kinds.
- Every metric is computed per image and, for a batch, averaged over the images (the protocol's "per scene,
  averaged"). PSNR uses peak 1 and float64; SSIM runs in float64 too.
- μ-law: `apnt.tonemap.mu_law`, μ = 5000.
- No clipping by default: Kalantari's protocol scores the prediction as it is. Our predictors are already in
  [0, 1] (AHDRNet / APNT end in a sigmoid; the Debevec / Mertens baselines clip by definition), so this only
  matters for foreign predictions; `evaluate_pair(..., clip=True)` clips the prediction to [0, 1] first
  (values below -1/μ would otherwise make the μ-law NaN).
- Identical images give PSNR = `float("inf")`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from apnt.tonemap import mu_law

SSIM_WIN = 11  # Wang et al.: 11×11 Gaussian window, σ = 1.5, K = (0.01, 0.03), valid convolution


def _as_batch(x, name: str) -> torch.Tensor:
    """Any accepted layout → float64 tensor (N, 3, H, W) on the CPU or the input's device."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.ndim != 4 or t.shape[-1] != 3:
            raise ValueError(f"{name}: numpy input must be (H, W, 3) or (N, H, W, 3), got {x.shape}")
        return t.permute(0, 3, 1, 2)
    if isinstance(x, torch.Tensor):
        t = x.detach().to(torch.float64)
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"{name}: tensor input must be (3, H, W) or (N, 3, H, W), got {tuple(x.shape)}")
        return t
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _pair(pred, target):
    p, t = _as_batch(pred, "pred"), _as_batch(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(p.shape)} vs {tuple(t.shape)} (as N, 3, H, W)")
    return p, t.to(p.device)


def _psnr(p: torch.Tensor, t: torch.Tensor, peak: float) -> float:
    mse = ((p - t) ** 2).flatten(1).mean(1)  # per image
    # mse == 0 → +inf through log10(peak²/0); done explicitly to avoid the division warning.
    vals = [float("inf") if m == 0 else 10.0 * math.log10(peak * peak / m) for m in mse.tolist()]
    return float(np.mean(vals))


def psnr(pred, target, peak: float = 1.0) -> float:
    """PSNR in dB, `10 log10(peak² / MSE)`, MSE over all channels and pixels of each image; batch mean."""
    return _psnr(*_pair(pred, target), peak)


def psnr_l(pred, target) -> float:
    """PSNR of the linear HDR values, peak 1."""
    return psnr(pred, target, 1.0)


def psnr_mu(pred, target) -> float:
    """PSNR of the μ-law tonemapped images (μ = 5000), peak 1."""
    p, t = _pair(pred, target)
    return _psnr(mu_law(p), mu_law(t), 1.0)


def _ssim(p: torch.Tensor, t: torch.Tensor) -> float:
    from pytorch_msssim import ssim as _ms_ssim  # its defaults: win 11, σ 1.5, K (0.01, 0.03), valid conv

    if min(p.shape[-2:]) < SSIM_WIN:
        # pytorch_msssim would silently skip the blur along a short axis; Wang's SSIM is undefined there.
        raise ValueError(f"SSIM needs H, W ≥ {SSIM_WIN}, got {tuple(p.shape[-2:])}")
    per_image = _ms_ssim(p, t, data_range=1.0, size_average=False, win_size=SSIM_WIN, win_sigma=1.5,
                         K=(0.01, 0.03))  # mean over channels and the valid map, per image
    return float(per_image.mean())


def ssim(pred, target) -> float:
    """Wang's SSIM (11×11 Gaussian σ 1.5, valid, data range 1), mean over channels; batch mean."""
    return _ssim(*_pair(pred, target))


def ssim_l(pred, target) -> float:
    """SSIM of the linear HDR values."""
    return ssim(pred, target)


def ssim_mu(pred, target) -> float:
    """SSIM of the μ-law tonemapped images."""
    p, t = _pair(pred, target)
    return _ssim(mu_law(p), mu_law(t))


def evaluate_pair(pred, target, clip: bool = False) -> dict:
    """The four protocol scores as plain floats. `clip=True` clips `pred` to [0, 1] first (see module doc)."""
    p, t = _pair(pred, target)
    if clip:
        p = p.clamp(0.0, 1.0)
    mp, mt = mu_law(p), mu_law(t)
    return {"psnr_mu": _psnr(mp, mt, 1.0), "psnr_l": _psnr(p, t, 1.0),
            "ssim_mu": _ssim(mp, mt), "ssim_l": _ssim(p, t)}


def cvvdp(pred, target, display: str = "standard_hdr_linear", peak_luminance: float = 1000.0) -> float:
    """ColorVideoVDP quality in JOD (10 = no visible difference), per image, batch mean.

    cvvdp wants absolute linear luminance (cd/m²) for the `*_hdr_linear` displays, so HDR value 1 (the
    ground truth's peak) is mapped to `peak_luminance` cd/m² (default 1000, the standard HDR display peak).
    Optional dependency: `pip install cvvdp` (module `pycvvdp`).
    """
    try:
        import pycvvdp
    except ImportError as e:
        raise RuntimeError("apnt.metrics.cvvdp needs the optional ColorVideoVDP package: "
                           "`pip install cvvdp` (imported as `pycvvdp`)") from e
    p, t = _pair(pred, target)
    metric = pycvvdp.cvvdp(display_name=display)
    scores = []
    for pi, ti in zip(p, t):
        jod, _ = metric.predict((pi * peak_luminance).float(), (ti * peak_luminance).float(), dim_order="CHW")
        scores.append(float(jod))
    return float(np.mean(scores))
