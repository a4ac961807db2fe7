"""AHDRNet: the authors' formulation, backends, checkpoints."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from apnt import models
from apnt.models import AHDRNet

FACTS = Path(__file__).resolve().parents[1] / "tests" / "data" / "ahdrnet_official_state_dict.json"


class AuthorsAHDR(nn.Module):
    """The authors' formulation, written with plain nn.Conv2d modules as in their model file (our own
    transcription of the published architecture): separate frame inputs, explicit concatenations."""

    def __init__(self):
        super().__init__()
        f, g = 64, 32
        self.conv1 = nn.Conv2d(6, f, 3, padding=1)
        self.att11, self.att12 = nn.Conv2d(2 * f, 2 * f, 3, padding=1), nn.Conv2d(2 * f, f, 3, padding=1)
        self.att31, self.att32 = nn.Conv2d(2 * f, 2 * f, 3, padding=1), nn.Conv2d(2 * f, f, 3, padding=1)
        self.conv2 = nn.Conv2d(3 * f, f, 3, padding=1)
        self.rdb = nn.ModuleList(
            nn.ModuleDict({"dense": nn.ModuleList(nn.Conv2d(f + i * g, g, 3, padding=2, dilation=2) for i in range(6)),
                           "fuse": nn.Conv2d(f + 6 * g, f, 1)}) for _ in range(3))
        self.GFF_1x1, self.GFF_3x3 = nn.Conv2d(3 * f, f, 1), nn.Conv2d(f, f, 3, padding=1)
        self.conv_up, self.conv3 = nn.Conv2d(f, f, 3, padding=1), nn.Conv2d(f, 3, 3, padding=1)

    def load_from(self, ours: AHDRNet):
        sd = ours.state_dict()
        for name in ("conv1", "att11", "att12", "att31", "att32", "conv2", "GFF_1x1", "GFF_3x3", "conv_up", "conv3"):
            getattr(self, name).weight.data.copy_(sd[f"{name}.weight"])
            getattr(self, name).bias.data.copy_(sd[f"{name}.bias"])
        for b, block in enumerate(self.rdb):
            for i, conv in enumerate(block["dense"]):
                conv.weight.data.copy_(sd[f"RDB{b + 1}.dense_layers.{i}.conv.weight"])
                conv.bias.data.copy_(sd[f"RDB{b + 1}.dense_layers.{i}.conv.bias"])
            block["fuse"].weight.data.copy_(sd[f"RDB{b + 1}.conv_1x1.weight"])
            block["fuse"].bias.data.copy_(sd[f"RDB{b + 1}.conv_1x1.bias"])

    def drdb(self, block, x):
        out = x
        for conv in block["dense"]:
            out = torch.cat((out, F.relu(conv(out))), 1)
        return block["fuse"](out) + x

    def forward(self, x1, x2, x3):
        relu = nn.LeakyReLU()
        f1, f2, f3 = relu(self.conv1(x1)), relu(self.conv1(x2)), relu(self.conv1(x3))
        a1 = torch.sigmoid(self.att12(relu(self.att11(torch.cat((f1, f2), 1)))))
        a3 = torch.sigmoid(self.att32(relu(self.att31(torch.cat((f3, f2), 1)))))
        f = self.conv2(torch.cat((f1 * a1, f2, f3 * a3), 1))
        r1 = self.drdb(self.rdb[0], f)
        r2 = self.drdb(self.rdb[1], r1)
        r3 = self.drdb(self.rdb[2], r2)
        fdf = self.GFF_3x3(self.GFF_1x1(torch.cat((r1, r2, r3), 1))) + f2
        return torch.sigmoid(self.conv3(self.conv_up(fdf)))


def _bracket(n=1, h=23, w=31, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    ldr = torch.rand(n, 3, 3, h, w, generator=g, dtype=dtype)
    exposure = torch.tensor([[1 / 250, 1 / 60, 1 / 15]], dtype=dtype).repeat(n, 1)
    return ldr, exposure


def _authors_inputs(ldr, exposure):
    t = exposure / exposure.min(dim=1, keepdim=True).values
    return [torch.cat([ldr[:, i], ldr[:, i] ** 2.2 / t[:, i].view(-1, 1, 1, 1)], 1) for i in range(3)]


def test_layout_matches_the_authors_state_dict():
    facts = json.loads(FACTS.read_text())
    expected = {k: v for k, v in facts["keys"].items() if not k.startswith(("attConv1", "attConv3"))}
    sd = AHDRNet().state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == expected
    assert sum(v.numel() for v in sd.values()) == facts["parameters_used_in_forward"] == 1441283


@pytest.mark.parametrize("n,h,w", [(1, 23, 31), (2, 8, 5), (1, 1, 1)])
def test_reference_equals_the_authors_formulation(n, h, w):
    torch.manual_seed(0)
    ours = AHDRNet(backend="reference").double()
    authors = AuthorsAHDR().double()
    authors.load_from(ours)
    ldr, exposure = _bracket(n, h, w, dtype=torch.float64)
    with torch.no_grad():
        expected = authors(*_authors_inputs(ldr, exposure))
        got = ours(ldr, exposure)
    assert got.shape == (n, 3, h, w)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    with torch.no_grad():  # fp32 within DESIGN's 1e-5 of the authors' formulation
        rel = (ours.float()(ldr.float(), exposure.float()) - expected.float()).norm() / expected.norm()
    assert rel <= 1e-5


@pytest.mark.parametrize("backend", ["native"])
@pytest.mark.parametrize("n,h,w", [(1, 37, 53), (2, 9, 12), (1, 3, 70)])
def test_backends_agree_with_reference(backend, n, h, w):
    torch.manual_seed(1)
    model = AHDRNet(backend="reference")
    ldr, exposure = _bracket(n, h, w, seed=3)
    with torch.no_grad():
        expected = model(ldr, exposure)
        model.backend = backend
        got = model(ldr, exposure)
    assert (got - expected).norm() / expected.norm() <= 1e-3


def test_gradients_agree_with_reference():
    torch.manual_seed(2)
    model = AHDRNet(backend="reference")
    ldr, exposure = _bracket(2, 12, 10, seed=4)
    grads = {}
    for backend in ("reference", "native"):
        model.backend = backend
        model.zero_grad()
        model(ldr, exposure).square().mean().backward()
        grads[backend] = {k: p.grad.clone() for k, p in model.named_parameters()}
    for k, g in grads["reference"].items():
        assert (grads["native"][k] - g).norm() <= 1e-3 * g.norm() + 1e-9, k


def test_exposure_in_any_unit_and_frame_major_convention():
    torch.manual_seed(3)
    model = AHDRNet(backend="reference").eval()
    ldr, exposure = _bracket(1, 11, 13)
    with torch.no_grad():
        a = model(ldr, exposure)
        b = model(ldr, exposure * 1000)  # milliseconds instead of seconds
        c = model(ldr, torch.tensor([[1.0, 4.0, 16.0]]))
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, c)


def test_explain_returns_the_attention_maps():
    model = AHDRNet(backend="reference").eval()
    ldr, exposure = _bracket(1, 10, 12)
    maps = model.explain(ldr, exposure)
    assert maps["attention_short"].shape == maps["attention_long"].shape == (1, 64, 10, 12)
    assert 0 <= float(maps["attention_short"].min()) and float(maps["attention_short"].max()) <= 1
    with torch.no_grad():
        assert torch.allclose(maps["output"], model(ldr, exposure))


@pytest.mark.parametrize("ldr,exposure,match", [
    (torch.rand(1, 3, 12, 12), torch.ones(1, 3), "ldr"),
    (torch.rand(1, 2, 3, 12, 12), torch.ones(1, 3), "ldr"),
    (torch.randint(0, 255, (1, 3, 3, 12, 12)), torch.ones(1, 3), "ldr"),
    (torch.rand(1, 3, 3, 12, 12), torch.ones(3), "exposure"),
    (torch.rand(1, 3, 3, 12, 12), torch.tensor([[1.0, 0.0, 2.0]]), "exposure"),
])
def test_bad_inputs_name_the_argument(ldr, exposure, match):
    with pytest.raises((ValueError, TypeError), match=match):
        AHDRNet(backend="reference")(ldr, exposure)


def test_bad_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        AHDRNet(backend="cuda-magic")


def _authors_checkpoint(path, prefix="module."):
    facts = json.loads(FACTS.read_text())["keys"]
    g = torch.Generator().manual_seed(7)
    state = {prefix + k: torch.randn(shape, generator=g) * 0.05 for k, shape in facts.items()}
    torch.save(state, path)
    return state


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_authors_checkpoint_loads_and_runs(tmp_path, prefix):
    state = _authors_checkpoint(tmp_path / "authors.pt", prefix)
    with pytest.warns(UserWarning, match="attConv1"):
        model = models.load_authors_checkpoint(tmp_path / "authors.pt")
    assert not model.training
    assert torch.equal(model.conv1.weight, state[prefix + "conv1.weight"])
    assert torch.equal(model.RDB3.conv_1x1.bias, state[prefix + "RDB3.conv_1x1.bias"])
    ldr, exposure = _bracket(1, 9, 9)
    with torch.no_grad():
        assert torch.isfinite(model(ldr, exposure)).all()
    with pytest.warns(UserWarning):
        assert isinstance(models.load("ahdrnet", tmp_path / "authors.pt"), AHDRNet)


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    torch.save({"conv1.weight": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt"):
        models.load_authors_checkpoint(tmp_path / "evil.pt")


def test_safetensors_round_trip_and_model_name_check(tmp_path):
    model = AHDRNet()
    models.save_weights(model, tmp_path / "w.safetensors")
    loaded = models.load("ahdrnet", tmp_path / "w.safetensors", backend="reference")
    assert loaded.backend == "reference" and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(FileNotFoundError, match="weights"):
        models.load("ahdrnet", tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown model"):
        models.load("nope", None)
