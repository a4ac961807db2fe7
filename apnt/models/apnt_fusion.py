"""APNT-Fusion (Chen et al., "Attention-guided progressive neural texture fusion for high dynamic range image
restoration", IEEE TIP 2022), reconstructed from the paper's abstract (DESIGN §4.2).

Two streams. The texture stream finds, for every relu3_1 cell of the reference, the best-matching cell of the
short frame brought to the reference exposure (`patch_match` on frozen VGG19 features) and copies the short
frame's unclipped texture from there at three VGG scales (`patch_transfer`), inside the reference's saturated
areas. The fusion stream is an AHDRNet-like encoder (shared conv, motion attention, dense blocks) over three
scales; its decoder gates the transferred texture in at each scale (saturation attention) and blends each
scale with the upsampled coarser one (scale attention). Every layer runs through `apnt.ops`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from apnt import ops
from apnt.models.blocks import Conv, DilatedDenseBlock
from apnt.models.inputs import check_bracket, frame_inputs, relative_exposure
from apnt.tonemap import GAMMA

# Images up to this many pixels search the whole frame; larger ones search a radius (DESIGN §4.2).
GLOBAL_NFT_PIXELS = 1500 * 1000
MULTIPLE = 4                            # pyramid of 1, 1/2, 1/4: inputs are padded to a multiple of 4
VGG_LAYERS = ("relu1_1", "relu2_1", "relu3_1")
VGG_CHANNELS = (64, 128, 256)
# Input pixels behind one relu3_1 feature on each side: conv1_1, conv1_2 (1 px each), a 2x2 pool (1), conv2_1,
# conv2_2 (2 px each), a pool (2), conv3_1 (4) = 13, rounded up to whole relu3_1 cells.
VGG_RADIUS = 16
# Tile origins sit on a 16 px grid: 4 x 4 Winograd output tiles at relu3_1 (1/4 scale), and so at every finer VGG
# level too. A tile's VGG features are then bitwise the whole image's, and a flat region's near-tied matches
# (scores 1e-6 apart) resolve as untiled: on a 4 px grid, 6 of 27,810 cells of a 1920x1080 tile did not (5.8e-3
# in μ-law, bench/tile_agreement.py).
TILE_MULTIPLE = 16
PATCH = 3                               # patch_match / patch_transfer patch at relu3_1 (12 px at full size)
_SLOPE = 0.01
# The default config's cost and size, counted by tests/test_apnt_fusion.py (convolution multiply-adds per output
# pixel; the three VGG passes, 3 x 112,320, are included; the correspondence search is not: see the docstring).
MACS_PER_PIXEL = 836_568
PARAMETERS = 2_324_643


# The default radius stops growing here: search work per pixel grows with the radius squared (144 (2r + 1)^2 MACs
# per pixel, r in cells), so 5 % of a 4K image's side (192 px) made the search 4x the 96 px radius's per pixel,
# and at 8K 16x (the 4K fuse did not finish in 10 minutes on the 2-core machine). Larger motion: pass nft_radius.
DEFAULT_NFT_RADIUS_MAX = 96


def default_nft_radius(height: int, width: int) -> int:
    """Search radius (full-resolution pixels) for images above GLOBAL_NFT_PIXELS: 5 % of the longer side, at
    least 64 px and at most DEFAULT_NFT_RADIUS_MAX — motion between the frames of a bracket grows with the
    resolution it is shot at, and search cost per pixel with the radius squared."""
    return min(DEFAULT_NFT_RADIUS_MAX, max(64, math.ceil(max(height, width) / 20)))


def _pad(x: torch.Tensor, multiple: int = MULTIPLE) -> torch.Tensor:
    """Replicate-pad the last two dims up to a multiple (bottom / right), so every scale has whole pixels."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return x
    shape = x.shape
    return F.pad(x.reshape(-1, *shape[-3:]), (0, pw, 0, ph), mode="replicate").reshape(*shape[:-2], h + ph, w + pw)


def _display(linear: torch.Tensor) -> torch.Tensor:
    """VGG's input encoding: clip(., 0, 1)^(1/2.2) (DESIGN §4.2)."""
    return linear.clamp(0, 1) ** (1 / GAMMA)


def _displacement(index: torch.Tensor) -> torch.Tensor:
    """(N, Hq, Wq) flat indices into a same-size map → (N, 2, Hq, Wq) float (dy, dx) in full-resolution pixels;
    0 where there was no match (-1)."""
    n, h, w = index.shape
    ky, kx = torch.div(index, w, rounding_mode="floor"), index % w
    qy = torch.arange(h, device=index.device).view(1, h, 1)
    qx = torch.arange(w, device=index.device).view(1, 1, w)
    d = torch.stack([ky - qy, kx - qx], 1) * (index >= 0).unsqueeze(1)
    return d.float() * MULTIPLE


@dataclass
class NeuralTexture:
    """The texture stream's result at a padded size: per scale k (1, 1/2, 1/4) the transferred texture
    (N, Ct_k, Hp/2^k, Wp/2^k), already masked; the correspondences as relu3_1-grid displacement fields in
    pixels; and the search `radius` (relu3_1 cells, None = global) that produced them.

    A whole-image instance is what tiled inference shares between tiles (`APNTFusion.shared_context`). In
    radius mode the context holds only the radius (`textures` None): every stage is then local, and each tile
    runs its own texture stream with the whole image's radius."""
    radius: int | None
    textures: tuple[torch.Tensor, ...] | None = None
    displacement: torch.Tensor | None = None
    displacement_long: torch.Tensor | None = None

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> "NeuralTexture":
        """The part a tile [y0, y1) x [x0, x1) needs, at that tile's padded size; y0 and x0 multiples of 4."""
        if self.textures is None:
            return self
        if y0 % MULTIPLE or x0 % MULTIPLE:
            raise ValueError(f"tile origin ({y0}, {x0}) must be a multiple of {MULTIPLE}")
        y1, x1 = y0 + -(-(y1 - y0) // MULTIPLE) * MULTIPLE, x0 + -(-(x1 - x0) // MULTIPLE) * MULTIPLE

        def cut(t, s):
            return None if t is None else t[..., y0 // s:y1 // s, x0 // s:x1 // s]

        return NeuralTexture(self.radius, tuple(cut(t, 2 ** k) for k, t in enumerate(self.textures)),
                             cut(self.displacement, MULTIPLE), cut(self.displacement_long, MULTIPLE))


class _Gate(nn.Module):
    """The two convolutions of an `attention_gate`: cat(x, ref) → hidden (leaky ReLU) → x's channels (sigmoid)."""

    def __init__(self, channels: int, ref_channels: int, hidden: int):
        super().__init__()
        self.first = Conv(channels + ref_channels, hidden, 3)
        self.second = Conv(hidden, channels, 3)


class APNTFusion(nn.Module):
    """Two-stream attention-guided progressive neural texture fusion of a short / medium (reference) / long bracket.

    **The paper's body was not available: this architecture is reconstructed from its abstract** (DESIGN §4.2).
    Call as `model(ldr, exposure)`, exactly like AHDRNet: `ldr` (N, 3 frames, 3 channels, H, W) in [0, 1],
    frame-major (short, medium, long); `exposure` (N, 3) exposure times in any unit. Returns linear HDR
    (N, 3, H, W) in [0, 1] in units of the short exposure (t_short = 1), aligned to the medium frame. Any H, W:
    inputs are replicate-padded to a multiple of 4 and the output cropped back.

    Streams (C = `features`; scales 1, 1/2, 1/4 carry C, 2C, 4C channels):
    - saturation mask of the reference M = clip((max_c L_2 - tau) / (1 - tau), 0, 1);
    - texture stream (no gradient; frozen VGG19): query A = L_2 (the reference, display-encoded), key
      B = clip(H_1 t_2, 0, 1)^(1/2.2) (the short frame at the reference exposure, clipped like it), so content
      that did not move looks the same in both; `patch_match` (3x3 relu3_1 patches, global search up to
      GLOBAL_NFT_PIXELS, else a radius); texture from the unclipped short frame E(H_1 t_2), E(x) = (x / (1 + x))
      ^(1/2.2) (Reinhard, then γ), at relu1_1 / relu2_1 / relu3_1 through `patch_transfer` (scale 4 / 2 / 1),
      each multiplied by M average-pooled to its scale;
    - fusion stream: shared conv 6→C per frame (leaky ReLU) on [L_i, H_i]; motion attention (`attention_gate`,
      hidden 2C) on frames 1 and 3 against frame 2; merge conv 3C→C; encoder of `dilated_dense_block`s (growth
      C_k/2, `dense_layers` layers, dilation 2) giving D_k at C, 2C, 4C, each coarser scale entered by a 2x2
      average pool and a 3x3 conv (leaky ReLU);
    - progressive texture blending, coarse to fine: texture projected to C_k (3x3 conv, leaky ReLU), gated by
      saturation attention (`attention_gate`, hidden C_k, x = the texture, ref = cat(D_k, M_k): its first conv
      sees cat(T_k, D_k, M_k) as DESIGN asks, without T_k twice) and added to D_k; scale attention
      (`attention_blend`) blends that with the coarser result (bilinear x2, 3x3 conv to C_k, leaky ReLU);
      a 3x3 conv (leaky ReLU) per scale;
    - head: + the reference frame's shared-conv features, 3x3 conv C→3, sigmoid.

    Choices the abstract leaves open, made here: everything after "fusion stream" above (layer counts, widths,
    where texture enters — added, not concatenated — pooling and upsampling), E, the 3x3 relu3_1 patch, the
    global-search size, the radius rule (`default_nft_radius`: 5 % of the longer side, 64-96 px), replicate
    padding. `use_long_nft` (off by default) adds the same transfer from the long frame into the reference's
    under-exposed areas: mask clip(((1 - tau) - max_c L_2) / (1 - tau), 0, 1), query clip(H_2 t_3, 0, 1), key and
    texture the long frame as shot; its texture is concatenated with the short frame's before the projection.
    Known limit (DESIGN §4.2): inside saturated regions much wider than a relu3_1 descriptor (~24 px) every
    score ties and each position takes its own short-frame texture.

    Cost of the default config (features 32, dense_layers 4; MACS_PER_PIXEL, PARAMETERS): 836,568
    convolution MACs per pixel, of which 336,960 are the three frozen VGG passes (AHDRNet: 1,446,720), and
    2,324,643 trainable parameters; plus the correspondence search, 2304 MACs per (query, key) pair of relu3_1
    cells: 144 * (H*W / 16) MACs per pixel globally (590k at 256x256, 13.5M at 1500x1000), 144 * (2r + 1)^2 in
    radius mode (r in cells). With a 256x256 training crop conv + search is about AHDRNet's cost per pixel.

    Args:
        features: C. dense_layers: layers per dense block. tau: saturation threshold on the display values.
        nft_radius: None (global search up to GLOBAL_NFT_PIXELS, `default_nft_radius` beyond) or a search radius
            in full-resolution pixels (rounded up to whole relu3_1 cells of 4 px); settable after construction.
        use_nft, use_saturation_attention, use_scale_attention, use_long_nft: ablation switches. Without
            saturation attention the projected texture is added ungated; without scale attention the coarser
            result is added. Switched-off parts own no parameters.
        vgg_weights: "default" (the shipped quantised VGG19), a torchvision-format file, or None (random with a
            fixed seed: a model rebuilt from its config gets the same VGG; tests). The VGG is frozen and kept out
            of the state dict (it ships separately); `vgg_info` records its source and sha256 for checkpoints.
        backend: "auto" | "reference" | "native" | "triton" for every op and the VGG; settable.
        checkpoint: recompute the dense blocks in backward.
    """

    name = "apnt"
    tile_multiple = TILE_MULTIPLE  # tiled inference aligns tile origins to the pyramid's and the VGG's grids

    def __init__(self, features: int = 32, dense_layers: int = 4, tau: float = 0.9, nft_radius: int | None = None,
                 use_nft: bool = True, use_saturation_attention: bool = True, use_scale_attention: bool = True,
                 use_long_nft: bool = False, vgg_weights: str | None = "default", backend: str = "auto",
                 checkpoint: bool = False):
        super().__init__()
        _check_config(features, dense_layers, tau, use_nft, use_long_nft)
        self.config = dict(features=features, dense_layers=dense_layers, tau=float(tau), nft_radius=nft_radius,
                           use_nft=use_nft, use_saturation_attention=use_saturation_attention,
                           use_scale_attention=use_scale_attention, use_long_nft=use_long_nft,
                           vgg_weights=None if vgg_weights is None else str(vgg_weights))
        self.nft_radius = nft_radius
        widths = [features * 2 ** k for k in range(3)]
        c = features
        self.conv1 = Conv(6, c, 3)
        self.motion_short, self.motion_long = _Gate(c, c, 2 * c), _Gate(c, c, 2 * c)
        self.merge = Conv(3 * c, c, 3)
        self.encoder = nn.ModuleList(DilatedDenseBlock(w, w // 2, dense_layers, 2, checkpoint) for w in widths)
        self.down = nn.ModuleList(Conv(a, b, 3) for a, b in zip(widths, widths[1:]))
        masks = 2 if use_long_nft else 1
        if use_nft:
            streams = 2 if use_long_nft else 1
            self.texture = nn.ModuleList(Conv(streams * v, w, 3) for v, w in zip(VGG_CHANNELS, widths))
            if use_saturation_attention:
                self.saturation = nn.ModuleList(_Gate(w, w + masks, w) for w in widths)
        self.up = nn.ModuleList(Conv(b, a, 3) for a, b in zip(widths, widths[1:]))
        if use_scale_attention:
            self.scale = nn.ModuleList(Conv(2 * w, w, 3) for w in widths[:2])
        self.decode = nn.ModuleList(Conv(w, w, 3) for w in widths)
        self.head = Conv(c, 3, 3)
        # The VGG is frozen and ships separately: held outside the module tree so it is in no state dict,
        # optimizer or DDP bucket (`_apply` still moves it with the model).
        self._vgg = (_make_vgg(vgg_weights, backend),) if use_nft else ()
        self.backend = backend
        # Context each output pixel sees on every side, in full-resolution pixels, when the texture is given
        # (tiled inference adds the texture stream's extent in radius mode: `tile_radius`). Per scale s the
        # layer radii count s pixels each, every pool / upsample one more coarse pixel.
        d = 2 * dense_layers  # one dilated dense block (dilation 2)
        self.receptive_radius = ((1 + 2 + 1 + d + 1)            # conv1, motion gate, merge, block 0, pool
                                 + 2 * (1 + d + 1)              # down conv, block 1, pool
                                 + 4 * (1 + d + 2 + 1 + 1)      # down conv, block 2, saturation gate, decode, up
                                 + 2 * (1 + 1 + 1 + 1)          # up conv, scale attention, decode, up
                                 + (1 + 1 + 1 + 1))             # up conv, scale attention, decode, head

    # ---- settings ----------------------------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        ops._backends._requested(value)  # a ValueError naming the setting when it is not a backend
        self._backend = value
        for block in self.encoder:
            block.backend = value
        for vgg in self._vgg:
            vgg.backend = value

    @property
    def nft_radius(self) -> int | None:
        return self._nft_radius

    @nft_radius.setter
    def nft_radius(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"argument 'nft_radius': expected None (global search) or pixels >= 0, got {value!r}")
        self._nft_radius = value
        self.config["nft_radius"] = value

    @property
    def vgg(self):
        """The frozen VGG feature extractor (None without the texture stream)."""
        return self._vgg[0] if self._vgg else None

    @property
    def vgg_info(self) -> dict[str, str] | None:
        """{"source", "sha256"} of the VGG weights, for checkpoints to record and check (None without NFT)."""
        return None if self.vgg is None else {"source": str(self.vgg.source), "sha256": str(self.vgg.sha256)}

    def _apply(self, fn, *args, **kwargs):
        for vgg in self._vgg:  # .to() / .double() / .cuda() move the VGG too
            vgg._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def search_radius(self, height: int, width: int) -> int | None:
        """The NFT search radius in relu3_1 cells for an image of this size (None: global search)."""
        if self.nft_radius is None and height * width <= GLOBAL_NFT_PIXELS:
            return None
        pixels = default_nft_radius(height, width) if self.nft_radius is None else self.nft_radius
        return -(-pixels // MULTIPLE)

    def tile_radius(self, height: int, width: int) -> int:
        """Halo (pixels) that makes a tile exact: the CNN's radius when the texture stream runs once on the whole
        image (global search), plus the texture stream's own extent when every tile runs it (radius mode):
        transfer patch, descriptor patch and search radius in relu3_1 cells, and the VGG's context."""
        radius = self.search_radius(height, width) if self.config["use_nft"] else None
        if radius is None:
            return self.receptive_radius
        return self.receptive_radius + MULTIPLE * (radius + 3) + VGG_RADIUS

    # ---- the texture stream -------------------------------------------------------------------------------------

    def shared_context(self, ldr: torch.Tensor, exposure: torch.Tensor) -> NeuralTexture | None:
        """What tiles of this image share: the whole image's texture stream (global search), or only its search
        radius (radius mode: each tile computes its own); None without NFT."""
        check_bracket(ldr, exposure)
        if not self.config["use_nft"]:
            return None
        radius = self.search_radius(*ldr.shape[-2:])
        if radius is not None:
            return NeuralTexture(radius)
        return self.neural_texture(_pad(ldr), exposure, None)

    @torch.no_grad()
    def neural_texture(self, ldr: torch.Tensor, exposure: torch.Tensor, radius: int | None) -> NeuralTexture:
        """The texture stream on a bracket already padded to a multiple of 4 (no gradient: nothing in it trains)."""
        t = relative_exposure(exposure.to(ldr.dtype)).view(-1, 3, 1, 1, 1)
        ldr = ldr.clamp(0, 1)
        linear = ldr ** GAMMA                                     # H_i * t_i
        ref = ldr[:, 1]
        short = linear[:, 0] * (t[:, 1] / t[:, 0])                # H_1 * t_2: the short frame at the ref exposure
        masks = self._masks(ref)
        textures, index = self._transfer(ref, _display(short), _display(short / (1 + short)), radius, masks[0])
        long_index = None
        if self.config["use_long_nft"]:
            query = _display(linear[:, 1] * (t[:, 2] / t[:, 1]))  # the reference at the long exposure, clipped
            long_textures, long_index = self._transfer(query, ldr[:, 2], ldr[:, 2], radius, masks[1])
            textures = [torch.cat(p, 1) for p in zip(textures, long_textures)]
        return NeuralTexture(radius, tuple(textures), _displacement(index),
                             None if long_index is None else _displacement(long_index))

    def _transfer(self, query, key, value, radius, mask):
        """patch_match of VGG(query) against VGG(key) at relu3_1; VGG(value) transferred at each scale, masked."""
        vgg = self.vgg
        # One VGG pass at a time: at 1500x1000 each holds ~0.8 GB of full-resolution activations.
        q = vgg(query)["relu3_1"]
        k = vgg(key)["relu3_1"]
        _, index = ops.patch_match(q, k, patch_size=PATCH, radius=radius, backend=self._backend)
        v = vgg(value)
        out = []
        for level, name in enumerate(VGG_LAYERS):
            s = 2 ** (2 - level)  # relu1_1 sits at 4x the relu3_1 grid, relu2_1 at 2x
            m = mask if level == 0 else F.avg_pool2d(mask, 2 ** level)
            out.append(ops.patch_transfer(v[name], index, patch_size=PATCH, scale=s, backend=self._backend) * m)
        return out, index

    def _masks(self, ref: torch.Tensor):
        """(saturated, under-exposed) masks of the reference's display values, (N, 1, H, W) in [0, 1]."""
        tau = self.config["tau"]
        peak = ref.amax(1, keepdim=True)
        return (((peak - tau) / (1 - tau)).clamp(0, 1), (((1 - tau) - peak) / (1 - tau)).clamp(0, 1))

    # ---- the fusion stream ---------------------------------------------------------------------------------------

    def _conv(self, layer: Conv, x: torch.Tensor, activation: str = "leaky_relu") -> torch.Tensor:
        return ops.conv2d(x, layer.weight, layer.bias, activation=activation, negative_slope=_SLOPE,
                          backend=self._backend)

    def _gate(self, gate: _Gate, x, ref, maps, name):
        args = (x, ref, gate.first.weight, gate.first.bias, gate.second.weight, gate.second.bias)
        if maps is None:
            return ops.attention_gate(*args, negative_slope=_SLOPE, backend=self._backend)
        out, maps[name] = ops.attention_gate_map(*args, negative_slope=_SLOPE, backend=self._backend)
        return out

    def _blend(self, layer: Conv, x, y, maps, name):
        if maps is not None:  # attention_blend does not return its map: the same sigmoid conv, for pictures
            maps[name] = self._conv(layer, torch.cat([x, y], 1), "sigmoid")
        return ops.attention_blend(x, y, layer.weight, layer.bias, backend=self._backend)

    def forward(self, ldr: torch.Tensor, exposure: torch.Tensor, *, context: NeuralTexture | None = None
                ) -> torch.Tensor:
        """`context`: a `shared_context(...).crop(...)` for this tile (tiled inference); None computes it."""
        return self._run(ldr, exposure, context, None)

    @torch.no_grad()
    def explain(self, ldr: torch.Tensor, exposure: torch.Tensor, *, context: NeuralTexture | None = None
                ) -> dict[str, torch.Tensor]:
        """The output and intermediate maps, all (N, ., H, W): `saturation_mask` (1 ch), `displacement` (2 ch:
        dy, dx in pixels from each reference pixel to its short-frame source, on the relu3_1 grid of 4 px; and
        `displacement_long` with use_long_nft), the gates `attention_motion_short` / `attention_motion_long`
        (C ch; 1 keeps, 0 suppresses), `attention_saturation` at full size and `attention_saturation_x2` /
        `_x4` from the coarser scales (nearest-upsampled), `attention_scale` / `attention_scale_x2` (the weight
        of the texture-fused features against the upsampled coarser result), and `output`. Maps of switched-off
        parts are absent."""
        maps: dict[str, torch.Tensor] = {}
        maps["output"] = self._run(ldr, exposure, context, maps)
        return maps

    def _run(self, ldr, exposure, context, maps):
        check_bracket(ldr, exposure)
        h, w = ldr.shape[-2:]
        ldr = _pad(ldr)
        use_nft = self.config["use_nft"]
        if use_nft and (context is None or context.textures is None):
            radius = self.search_radius(h, w) if context is None else context.radius
            context = self.neural_texture(ldr, exposure, radius)
        masks = torch.cat(self._masks(ldr[:, 1].clamp(0, 1))[:1 + self.config["use_long_nft"]], 1)
        x = frame_inputs(ldr, exposure)
        n = x.shape[0]
        # conv1 is shared by the frames: one call over a 3N batch.
        f1, f2, f3 = self._conv(self.conv1, x.flatten(0, 1)).unflatten(0, (n, 3)).unbind(1)
        g1 = self._gate(self.motion_short, f1, f2, maps, "attention_motion_short")
        g3 = self._gate(self.motion_long, f3, f2, maps, "attention_motion_long")
        encoded = [self.encoder[0](self._conv(self.merge, torch.cat([g1, f2, g3], 1), "none"))]
        for down, block in zip(self.down, self.encoder[1:]):
            encoded.append(block(self._conv(down, F.avg_pool2d(encoded[-1], 2))))
        result = None
        for k in (2, 1, 0):
            suffix = f"_x{2 ** k}" if k else ""
            features = encoded[k]
            if use_nft:
                texture = self._conv(self.texture[k], context.textures[k])
                if self.config["use_saturation_attention"]:
                    mask_k = F.avg_pool2d(masks, 2 ** k) if k else masks
                    texture = self._gate(self.saturation[k], texture, torch.cat([features, mask_k], 1), maps,
                                         "attention_saturation" + suffix)
                features = features + texture
            if result is not None:
                coarse = self._conv(self.up[k], F.interpolate(result, scale_factor=2, mode="bilinear",
                                                              align_corners=False))
                if self.config["use_scale_attention"]:
                    features = self._blend(self.scale[k], features, coarse, maps, "attention_scale" + suffix)
                else:
                    features = features + coarse
            result = self._conv(self.decode[k], features)
        out = self._conv(self.head, result + f2, "sigmoid")[..., :h, :w]
        if maps is not None:
            if use_nft:
                maps["displacement"] = context.displacement
                if context.displacement_long is not None:
                    maps["displacement_long"] = context.displacement_long
            maps["saturation_mask"] = masks[:, :1]
            for name, m in list(maps.items()):
                scale = ldr.shape[-1] // m.shape[-1]
                if scale > 1:
                    m = F.interpolate(m, scale_factor=scale, mode="nearest")
                maps[name] = m[..., :h, :w]
        return out


def _check_config(features, dense_layers, tau, use_nft, use_long_nft):
    if isinstance(features, bool) or not isinstance(features, int) or features < 2:
        raise ValueError(f"argument 'features': expected an int >= 2, got {features!r}")
    if isinstance(dense_layers, bool) or not isinstance(dense_layers, int) or dense_layers < 1:
        raise ValueError(f"argument 'dense_layers': expected an int >= 1, got {dense_layers!r}")
    if not isinstance(tau, (int, float)) or not 0 < tau < 1:
        raise ValueError(f"argument 'tau': expected a saturation threshold in (0, 1), got {tau!r}")
    if use_long_nft and not use_nft:
        raise ValueError("argument 'use_long_nft': needs use_nft=True (it is a second texture stream)")


def _make_vgg(weights, backend):
    from apnt.models.vgg import VGGFeatures

    return VGGFeatures(weights=weights, backend=backend)
