"""Tone curves used by the loss, the metrics and the previews."""
from __future__ import annotations

import math

import numpy as np
import torch

MU = 5000.0
GAMMA = 2.2


def mu_law(h, mu: float = MU):
    """Kalantari's μ-law compression `log(1 + μ H) / log(1 + μ)` (H ≥ 0 in [0, 1]); tensor or array."""
    if isinstance(h, torch.Tensor):
        return torch.log1p(mu * h) / math.log1p(mu)
    return np.log1p(mu * np.asarray(h, dtype=np.float64)) / math.log1p(mu)


def ldr_to_hdr(ldr, exposure, gamma: float = GAMMA):
    """`H = L^γ / t`: an LDR frame back to linear radiance in units of the shortest exposure."""
    return ldr ** gamma / exposure


def preview(h: np.ndarray, gamma: float = GAMMA) -> np.ndarray:
    """Display tonemap for PNG previews: Reinhard `x / (1 + x)` after scaling the 99th percentile of the
    luminance-ish max channel to 1, then γ. Returns float in [0, 1] (H, W, 3)."""
    h = np.clip(np.nan_to_num(np.asarray(h, dtype=np.float32), nan=0.0, posinf=0.0), 0, None)
    scale = float(np.percentile(h.max(axis=-1), 99)) or 1.0
    x = h / scale * 2.0
    return np.clip((x / (1 + x)) ** (1 / gamma) * 1.25, 0, 1)
