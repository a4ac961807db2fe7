"""apnt.metrics against hand-computed values and an independent numpy SSIM."""
import math

import numpy as np
import pytest
import torch

from apnt import metrics
from apnt.tonemap import mu_law


def _const(v, h=16, w=16):
    return torch.full((3, h, w), float(v), dtype=torch.float64)


def _numpy_ssim(x, y):
    """Wang et al. 2004 written out: 11×11 Gaussian σ 1.5 (normalised), valid window positions,
    C1 = (0.01)², C2 = (0.03)² for data range 1, mean over the map then over channels. x, y: (H, W, C)."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    scores = []
    for c in range(x.shape[-1]):
        px = np.lib.stride_tricks.sliding_window_view(x[..., c], (11, 11))  # (H-10, W-10, 11, 11)
        py = np.lib.stride_tricks.sliding_window_view(y[..., c], (11, 11))
        mx, my = (px * win).sum((-2, -1)), (py * win).sum((-2, -1))
        vx = (px * px * win).sum((-2, -1)) - mx ** 2
        vy = (py * py * win).sum((-2, -1)) - my ** 2
        cxy = (px * py * win).sum((-2, -1)) - mx * my
        m = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
        scores.append(m.mean())
    return float(np.mean(scores))


def test_psnr_constant_images_exact():
    # MSE = 0.1² = 0.01 → PSNR = 10 log10(1 / 0.01) = 20 dB exactly; peak 2 adds 20 log10 2.
    assert metrics.psnr(_const(0.5), _const(0.6)) == pytest.approx(20.0, abs=1e-9)
    assert metrics.psnr_l(_const(0.5), _const(0.6)) == pytest.approx(20.0, abs=1e-9)
    assert metrics.psnr(_const(0.5), _const(0.6), peak=2.0) == pytest.approx(20 + 20 * math.log10(2), abs=1e-9)


def test_mu_law_known_values_and_psnr_mu():
    assert float(mu_law(torch.tensor(0.01))) == pytest.approx(math.log(51) / math.log(5001), rel=1e-6)
    a, b = 0.01, 0.02
    ta, tb = math.log1p(5000 * a) / math.log1p(5000), math.log1p(5000 * b) / math.log1p(5000)
    assert metrics.psnr_mu(_const(a), _const(b)) == pytest.approx(-20 * math.log10(abs(ta - tb)), abs=1e-9)


def test_identical_images_inf_psnr_and_unit_ssim():
    x = torch.rand(3, 20, 24, dtype=torch.float64)
    for f in (metrics.psnr, metrics.psnr_l, metrics.psnr_mu):
        assert f(x, x.clone()) == float("inf")
    assert metrics.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim_mu(x, x) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_independent_numpy_implementation():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (20, 24, 3))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    assert metrics.ssim(x, y) == pytest.approx(_numpy_ssim(x, y), abs=1e-6)
    assert metrics.ssim_l(x, y) == pytest.approx(_numpy_ssim(x, y), abs=1e-6)
    hx, hy = x ** 4 * 0.05, y ** 4 * 0.05  # HDR-like: mostly dark, where μ-law and linear SSIM differ
    assert metrics.ssim_mu(hx, hy) == pytest.approx(_numpy_ssim(mu_law(hx), mu_law(hy)), abs=1e-6)


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 1, (2, 16, 18, 3))
    tx, ty = (torch.from_numpy(a).permute(2, 0, 1).float() for a in (x, y))
    ref = metrics.evaluate_pair(x, y)
    for p, t in ((tx, ty), (tx[None], ty[None]), (tx, y)):
        got = metrics.evaluate_pair(p, t)
        for k in ref:
            # float32 tensors vs float64 arrays: equal up to the float32 rounding of the inputs
            assert got[k] == pytest.approx(ref[k], rel=1e-5), k


def test_batch_is_mean_of_per_image_scores():
    p = torch.stack([_const(0.5), _const(0.5)])
    t = torch.stack([_const(0.6), _const(0.51)])  # 20 dB and 40 dB: the mean is 30, not PSNR of the mean MSE
    assert metrics.psnr(p, t) == pytest.approx(30.0, abs=1e-9)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    y = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    assert metrics.ssim(x, y) == pytest.approx((metrics.ssim(x[0], y[0]) + metrics.ssim(x[1], y[1])) / 2, abs=1e-12)


def test_evaluate_pair_keys_types_and_clip():
    x = torch.rand(3, 16, 16)
    r = metrics.evaluate_pair(x, x)
    assert set(r) == {"psnr_mu", "psnr_l", "ssim_mu", "ssim_l"} and all(type(v) is float for v in r.values())
    assert r["psnr_l"] == float("inf") and r["ssim_l"] == pytest.approx(1.0)
    # Clipping an out-of-range prediction to [0, 1] brings it back onto the target.
    over, one = torch.full((3, 16, 16), 1.5), torch.ones(3, 16, 16)
    assert metrics.evaluate_pair(over, one, clip=True)["psnr_l"] == float("inf")
    assert metrics.evaluate_pair(over, one)["psnr_l"] == pytest.approx(20 * math.log10(2), abs=1e-9)  # MSE 0.25


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="differ"):
        metrics.psnr(torch.rand(3, 16, 16), torch.rand(3, 16, 17))
    with pytest.raises(ValueError, match="pred"):
        metrics.psnr(torch.rand(4, 16, 16), torch.rand(4, 16, 16))
    with pytest.raises(ValueError, match="target"):
        metrics.psnr(np.zeros((16, 16, 3)), np.zeros((16, 16)))
    with pytest.raises(ValueError, match="SSIM needs"):
        metrics.ssim(torch.rand(3, 10, 32), torch.rand(3, 10, 32))


def test_cvvdp_missing_package_is_a_clear_error():
    try:
        import pycvvdp  # noqa: F401
        pytest.skip("pycvvdp is installed")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="pip install cvvdp"):
        metrics.cvvdp(torch.rand(3, 16, 16), torch.rand(3, 16, 16))
