"""APNT-Fusion: shapes, backends, the texture stream really transferring, gradients, compile, ablations,
checkpoints, tiling (global texture shared by the tiles, radius mode), explain maps and `apnt fuse --explain`.

Every model here uses the random VGG (`vgg_weights=None`: seeded, independent of the shipped weights) and a
small width, so the file stays fast on a busy CPU."""
import argparse
import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from apnt import models
from apnt.data import synthesize
from apnt.infer import _fuse, explain, fuse
from apnt.infer_cli import add_cli
from apnt.models import APNTFusion, apnt_fusion
from apnt.tonemap import mu_law
from apnt.viz import flow_to_color

T = torch.tensor([[1.0, 4.0, 16.0]])
SMALL = dict(features=4, dense_layers=1, vgg_weights=None)
SHIFT = (8, -8)  # (dy, dx): where the short frame shows what the reference shows at p (multiple of 4: VGG grid)


def _small(**config):
    return APNTFusion(**{**SMALL, **config}).eval()


def _random_bracket(n=1, h=24, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 3, h, w, generator=g), T.repeat(n, 1)


def _texture_scene(h=64, w=128):
    """A static scene seen by a short frame displaced by SHIFT: smooth texture (never saturated at the reference
    exposure), a 12x12 highlight whose texture exists only in the short frame (saturated in the reference), and
    a wide flat highlight saturated in both. Returns (ldr (1, 3, 3, h, w), exposure, patch centre (y, x))."""
    g = torch.Generator().manual_seed(0)
    pad = 16
    big_h, big_w = h + 2 * pad, w + 2 * pad
    radiance = 0.0125 + 0.1375 * F.interpolate(torch.rand(1, 3, big_h // 4, big_w // 4, generator=g),
                                               size=(big_h, big_w), mode="bilinear", align_corners=False)[0]
    py, px = 28, 24
    radiance[:, pad + py - 6:pad + py + 6, pad + px - 6:pad + px + 6] = 0.375 + 0.5 * torch.rand(3, 12, 12, generator=g)
    radiance[:, pad + 4:pad + 60, pad + 64:pad + 124] = 0.75  # flat: 56 x 60 px

    def view(dy, dx):  # view(p + d) = radiance(p)
        return radiance[:, pad - dy:pad - dy + h, pad - dx:pad - dx + w]

    frames = [view(*SHIFT) * T[0, 0], view(0, 0) * T[0, 1], view(0, 0) * T[0, 2]]
    ldr = torch.stack([f.clamp(0, 1) ** (1 / 2.2) for f in frames]).unsqueeze(0)
    return ldr, T, (py, px)


# ---- shapes and backends ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,h,w", [(1, 37, 53), (2, 9, 6), (1, 1, 1), (1, 3, 70)])
def test_any_size_runs_and_keeps_its_shape(n, h, w):
    model = _small(backend="native")
    ldr, exposure = _random_bracket(n, h, w)
    with torch.no_grad():
        out = model(ldr, exposure)
    assert out.shape == (n, 3, h, w) and bool(torch.isfinite(out).all())
    assert 0 <= float(out.min()) and float(out.max()) <= 1


def test_native_agrees_with_reference():
    model = _small(features=8, backend="reference")
    ldr, exposure = _random_bracket(2, 28, 36, seed=1)  # ~10 % saturated pixels: the texture stream is used
    with torch.no_grad():
        expected = model(ldr, exposure)
        model.backend = "native"
        got = model(ldr, exposure)
    assert (got - expected).norm() / expected.norm() <= 1e-3
    # Correspondences: without ties, the same; in the flat highlight every score ties and both take their own.
    ldr, exposure, _ = _texture_scene(32, 96)
    model = _small(backend="reference")
    ref = model.explain(ldr, exposure)
    model.backend = "native"
    nat = model.explain(ldr, exposure)
    assert torch.equal(ref["displacement"], nat["displacement"])
    assert (nat["output"] - ref["output"]).norm() / ref["output"].norm() <= 1e-3


def test_backend_reaches_every_op_and_the_vgg():
    model = _small()
    model.backend = "reference"
    assert model.vgg.backend == "reference" and all(b.backend == "reference" for b in model.encoder)
    with pytest.raises(ValueError, match="backend"):
        model.backend = "cuda-magic"


# ---- the texture stream (issue 6) --------------------------------------------------------------------------------

def test_texture_comes_from_the_displaced_short_frame():
    ldr, exposure, (py, px) = _texture_scene()
    model = _small(backend="native")
    maps = model.explain(ldr, exposure)
    d = maps["displacement"][0]
    # The 12x12 highlight is saturated (flat) in the reference: its relu3_1 descriptors match by their context,
    # at the place the short frame shows it.
    assert float(maps["saturation_mask"][0, 0, py - 6:py + 6, px - 6:px + 6].min()) == 1.0
    patch = d[:, py - 6:py + 6, px - 6:px + 6].reshape(2, -1)
    assert patch.unique(dim=1).tolist() == [[SHIFT[0]], [SHIFT[1]]]
    # Inside the flat highlight (a margin of a descriptor's extent from its edges in both frames) every score
    # ties and each position keeps its own (DESIGN §3.3, §4.2).
    assert float(d[:, 28:44, 80:100].abs().max()) == 0.0
    # And the transferred relu1_1 texture there is the short frame's (tonemapped, unclipped) at p + SHIFT.
    texture = model.neural_texture(ldr, exposure, None).textures[0]
    short = ldr[:, 0] ** 2.2 * 4
    source = model.vgg((short / (1 + short)) ** (1 / 2.2))["relu1_1"]
    y, x = slice(py - 4, py + 4), slice(px - 4, px + 4)
    shifted = source[..., py - 4 + SHIFT[0]:py + 4 + SHIFT[0], px - 4 + SHIFT[1]:px + 4 + SHIFT[1]]
    torch.testing.assert_close(texture[..., y, x], shifted, rtol=1e-5, atol=1e-5)
    assert (texture[..., y, x] - source[..., y, x]).abs().max() > 0.1  # not just the co-located texture


# ---- training ---------------------------------------------------------------------------------------------------

def test_gradients_reach_every_trainable_parameter():
    model = _small(use_long_nft=True, backend="native").train()
    ldr, exposure = _random_bracket(1, 24, 24, seed=2)  # saturated and under-exposed pixels: both streams
    model(ldr, exposure).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().max()) > 0, name
    assert not any("vgg" in k for k in model.state_dict())  # the frozen VGG ships separately


def test_torch_compile_runs():
    model = _small(backend="native")
    ldr, exposure = _random_bracket(1, 16, 20, seed=3)
    with torch.no_grad():
        eager = model(ldr, exposure)
        compiled = torch.compile(model, backend="aot_eager")(ldr, exposure)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_conv_macs_per_pixel_match_the_docstring():
    """MACS_PER_PIXEL is the count of convolution multiply-adds (VGG included) of the default config."""
    class Count(TorchDispatchMode):
        macs = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.convolution.default:
                self.macs += out.numel() * args[1][0].numel()
            return out

    model = APNTFusion(vgg_weights=None, backend="reference").eval()
    assert model.config["features"] == 32 and model.config["dense_layers"] == 4
    ldr, exposure = _random_bracket(1, 16, 16)
    with torch.no_grad(), Count() as count:
        model(ldr, exposure)
    assert count.macs / 256 == apnt_fusion.MACS_PER_PIXEL
    assert sum(p.numel() for p in model.parameters()) == apnt_fusion.PARAMETERS


def test_receptive_radius_covers_the_cnn():
    torch.manual_seed(0)
    model = _small(dense_layers=2).double()
    size = 2 * model.receptive_radius + 9
    ldr = (torch.rand(1, 3, 3, size, size, dtype=torch.float64) * 0.8).requires_grad_()
    c = size // 2
    model(ldr, T.double())[0, :, c, c].sum().backward()
    ys, xs = torch.nonzero(ldr.grad.abs().sum((0, 1, 2)), as_tuple=True)
    reach = max(int((ys - c).abs().max()), int((xs - c).abs().max()))
    assert model.receptive_radius - 8 <= reach <= model.receptive_radius


# ---- ablations and checkpoints --------------------------------------------------------------------------------------

@pytest.mark.parametrize("switch,gone", [("use_nft", ("texture.", "saturation.")),
                                         ("use_saturation_attention", ("saturation.",)),
                                         ("use_scale_attention", ("scale.",))])
def test_ablation_switches_remove_their_parts(switch, gone):
    full = _small(backend="native")
    ablated = _small(backend="native", **{switch: False})
    names = set(full.state_dict())
    removed = {k for k in names if k.startswith(gone)}
    assert removed and set(ablated.state_dict()) == names - removed
    ablated.load_state_dict({k: v for k, v in full.state_dict().items() if k not in removed})
    ldr, exposure, _ = _texture_scene(32, 64)
    with torch.no_grad():
        assert (full(ldr, exposure) - ablated(ldr, exposure)).abs().max() > 1e-4
    maps = ablated.explain(ldr, exposure)
    assert ("displacement" in maps) == (switch != "use_nft")
    assert ("attention_scale" in maps) == (switch != "use_scale_attention")


def test_long_frame_texture_stream():
    model = _small(use_long_nft=True, backend="native")
    assert model.texture[0].weight.shape[1] == 2 * 64 and model.saturation[0].first.weight.shape[1] == 4 + 4 + 2
    ldr, exposure = _random_bracket(1, 16, 24, seed=4)
    maps = model.explain(ldr, exposure)
    assert maps["displacement_long"].shape == (1, 2, 16, 24)
    with pytest.raises(ValueError, match="use_long_nft"):
        _small(use_nft=False, use_long_nft=True)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(5)
    model = _small(use_scale_attention=False, nft_radius=12, backend="native")
    path = tmp_path / "apnt.safetensors"
    models.save_weights(model, path)
    loaded = models.load("apnt", path, backend="native")
    assert loaded.config == model.config and json.loads(json.dumps(loaded.config)) == model.config
    assert loaded.vgg_info == model.vgg_info and loaded.vgg_info["source"] == "random"
    ldr, exposure = _random_bracket(1, 20, 20, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ldr, exposure), model(ldr, exposure), rtol=0, atol=0)
    # Weights trained on other VGG features are refused.
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other.safetensors"
    meta = {"model": "apnt", "config": json.dumps(model.config),
            "vgg": json.dumps({"source": "some vgg19.pth", "sha256": "0" * 64})}
    save_file(load_file(str(path)), str(other), metadata=meta)
    with pytest.raises(ValueError, match="argument 'weights'.*VGG weights differ"):
        models.load("apnt", other)


# ---- tiled inference ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scene():
    return _texture_scene()


def _far_sighted(**config):
    """A small model whose output depends on far context: at the default initialisation every conv shrinks
    its input, so what a tile's border changes fades below 1e-5 within a few pixels and a missing halo would
    go unnoticed; weights x3 keep the deep paths alive."""
    torch.manual_seed(0)
    model = _small(backend="native", **config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    return model


@pytest.mark.parametrize("nft_radius", [None, 8])
def test_tiled_matches_untiled(scene, nft_radius):
    ldr, exposure, _ = scene
    model = _far_sighted()
    whole = explain(ldr, exposure, model, nft_radius=nft_radius)
    tiled = _fuse(ldr, exposure, model, tile=32, overlap=8, explain=True, nft_radius=nft_radius)
    halo = model.receptive_radius if nft_radius is None else model.receptive_radius + 4 * (2 + 3) + 16
    assert tiled.plan.count == 15 and tiled.plan.halo == halo and tiled.plan.multiple == 16
    assert model.nft_radius is None  # the call's radius does not stick
    err = (mu_law(tiled.maps["output"]) - mu_law(whole["output"])).abs().max().item()
    assert err < 1e-5, err  # DESIGN §6 asks 1e-3; a halo covering every stage makes the tiles exact
    torch.testing.assert_close(tiled.maps["displacement"], whole["displacement"], rtol=0, atol=1e-4)
    assert whole["displacement"].shape == (1, 2, 64, 128) and whole["attention_scale"].shape == (1, 1, 64, 128)


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_tile_grid_makes_vgg_features_exact(backend):
    """A tile whose origin is on the 16 px grid sees, away from its border, bitwise the whole image's relu3_1
    features: radius-mode tiles then score every candidate exactly as untiled inference does, and near-tied
    matches in flat areas resolve the same way. On a 4 px grid the native Winograd tiles fall elsewhere."""
    vgg = APNTFusion(features=8, dense_layers=1, backend=backend).vgg
    image = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(3))
    whole = vgg(image)["relu3_1"]
    cells = apnt_fusion.VGG_RADIUS // 4  # relu3_1 cells a crop's border reaches into

    def crop_matches(y0, x0, size=96):
        f = vgg(image[..., y0:y0 + size, x0:x0 + size])["relu3_1"]
        inner = (slice(None), slice(None), slice(cells, size // 4 - cells), slice(cells, size // 4 - cells))
        return torch.equal(f[inner], whole[..., y0 // 4:(y0 + size) // 4, x0 // 4:(x0 + size) // 4][inner])

    assert APNTFusion.tile_multiple == apnt_fusion.TILE_MULTIPLE == 16
    assert crop_matches(16, 32) and crop_matches(32, 64)
    if backend == "native":
        assert not crop_matches(20, 36)  # why the grid is 16 px, not the pyramid's 4


def test_tiles_need_the_halo_and_the_grid(scene, monkeypatch):
    ldr, exposure, _ = scene
    model = _far_sighted()
    whole = fuse(ldr, exposure, model)
    monkeypatch.setattr(model, "tile_radius", lambda height, width: 8)
    short = fuse(ldr, exposure, model, tile=32, overlap=8)
    assert (mu_law(short) - mu_law(whole)).abs().max().item() > 1e-2
    monkeypatch.undo()
    monkeypatch.setattr(model, "tile_multiple", 1)  # a tile off the pyramid's grid cannot take the shared texture
    with pytest.raises(ValueError, match="multiple of 4"):
        fuse(ldr, exposure, model, tile=32, overlap=8)


def test_search_mode_follows_the_image_size(monkeypatch):
    model = _small()
    assert model.search_radius(1000, 1500) is None and model.tile_radius(1000, 1500) == model.receptive_radius
    assert model.search_radius(1000, 1504) == 19  # default_nft_radius: 76 px → 19 cells of 4 px
    assert model.search_radius(2160, 3840) == 24  # 5 % would be 192 px: capped at DEFAULT_NFT_RADIUS_MAX = 96 px
    assert model.tile_radius(4000, 6000) == model.receptive_radius + 4 * (24 + 3) + 16
    model.nft_radius = 10
    assert model.search_radius(20, 20) == 3 and model.config["nft_radius"] == 10
    monkeypatch.setattr(apnt_fusion, "GLOBAL_NFT_PIXELS", 100)
    model.nft_radius = None
    assert model.search_radius(16, 16) == 16  # at least 64 px


# ---- explain, errors, the command line ---------------------------------------------------------------------------

def test_explain_maps():
    model = _small(backend="native")
    ldr, exposure = _random_bracket(1, 18, 22, seed=7)
    maps = model.explain(ldr, exposure)
    expected = {"output", "saturation_mask", "displacement", "attention_motion_short", "attention_motion_long",
                "attention_saturation", "attention_saturation_x2", "attention_saturation_x4", "attention_scale",
                "attention_scale_x2"}
    assert set(maps) == expected
    assert all(m.shape[-2:] == (18, 22) for m in maps.values())
    for name in expected - {"output", "displacement"}:
        assert 0 <= float(maps[name].min()) and float(maps[name].max()) <= 1, name
    with torch.no_grad():
        torch.testing.assert_close(maps["output"], model(ldr, exposure))
    assert (maps["displacement"] % 4 == 0).all()
    reduced = explain(ldr, exposure, model)  # channel means, but (dy, dx) kept
    assert reduced["displacement"].shape == (1, 2, 18, 22) and reduced["attention_saturation"].shape[1] == 1
    torch.testing.assert_close(reduced["displacement"], maps["displacement"])


def test_flow_to_color():
    flow = np.zeros((4, 6, 2))
    flow[1, 1] = (0, 3)     # right
    flow[2, 2] = (-3, 0)    # up
    flow[3, 3] = (0, 30)    # longer than the scale: darkened
    color = flow_to_color(flow, max_magnitude=3)
    assert color.shape == (4, 6, 3) and color.dtype == np.float32
    np.testing.assert_allclose(color[0, 0], 1)  # no motion: white
    assert color[1, 1].argmax() == 0 and not np.allclose(color[1, 1], color[2, 2])
    assert color[3, 3].max() <= 0.75
    with pytest.raises(ValueError, match="argument 'flow'"):
        flow_to_color(np.zeros((4, 6)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(features=0), "argument 'features'"), (dict(dense_layers=0), "argument 'dense_layers'"),
    (dict(tau=1.0), "argument 'tau'"), (dict(nft_radius=-4), "argument 'nft_radius'"),
    (dict(nft_radius=2.5), "argument 'nft_radius'"), (dict(backend="gpu"), "backend"),
])
def test_bad_config_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _small(**kwargs)


def test_bad_inputs_name_the_argument():
    model = _small()
    ldr, exposure = _random_bracket(1, 8, 8)
    with pytest.raises(ValueError, match="argument 'ldr'"):
        model(ldr[:, :2], exposure)
    with pytest.raises(TypeError, match="argument 'ldr'"):
        model((ldr * 255).to(torch.uint8), exposure)
    with pytest.raises(ValueError, match="argument 'exposure'"):
        model(ldr, exposure[:, :2])
    with pytest.raises(ValueError, match="argument 'exposure'"):
        model(ldr, -exposure)
    with pytest.raises(ValueError, match="argument 'nft_radius'"):
        fuse(ldr, exposure, "mertens", nft_radius=8)


def _cli(*argv):
    parser = argparse.ArgumentParser(prog="apnt")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["fuse", *map(str, argv)])
    return args.fn(args)


def test_cli_explain_writes_the_displacement_as_flow(tmp_path, capsys):
    scene_dir = synthesize(tmp_path / "scenes", "Test", scenes=1, height=40, width=56, seed=0, progress=False)[0]
    weights = tmp_path / "apnt.safetensors"
    models.save_weights(_small(), weights)
    maps = tmp_path / "maps"
    assert _cli(scene_dir, "--model", "apnt", "--weights", weights, "--out", tmp_path / "o.exr", "--explain", maps,
                "--nft-radius", 16, "--tile", 32, "--overlap", 8) == 0
    assert "apnt" in capsys.readouterr().out
    for name in ("displacement", "saturation_mask", "attention_saturation", "attention_scale", "output"):
        assert cv2.imread(str(maps / f"{name}.png")).shape == (40, 56, 3), name
    assert _cli(scene_dir, "--out", tmp_path / "a.exr", "--weights", "none", "--nft-radius", 8) == 2
    assert "argument 'nft_radius'" in capsys.readouterr().err
