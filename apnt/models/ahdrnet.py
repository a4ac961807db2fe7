"""AHDRNet (Yan et al., "Attention-guided network for ghost-free high dynamic range imaging", CVPR 2019).

Exactly the authors' network (DESIGN §4.1), its parameters named as in their state dict so checkpoints map
1:1 — minus `attConv1`/`attConv3`, which their code registers but never uses (unused parameters break DDP).
Every layer runs through `apnt.ops`, so `backend` picks the implementation of the whole model.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from apnt import ops
from apnt.models.blocks import Conv, DilatedDenseBlock
from apnt.models.inputs import frame_inputs

# The authors' nn.LeakyReLU() default.
_SLOPE = 0.01


class AHDRNet(nn.Module):
    """Attention-guided HDR merge of a short / medium (reference) / long bracket.

    Call as `model(ldr, exposure)`: `ldr` (N, 3 frames, 3 channels, H, W) in [0, 1], frame-major (short,
    medium, long); `exposure` (N, 3) exposure times in any unit. Returns linear HDR (N, 3, H, W) in [0, 1],
    in units of the short exposure (t_short = 1), aligned to the medium frame. Any H and W.

    Args:
        features, growth, dense_layers, dilation: the authors' nFeat=64, growthRate=32, nDenselayer=6, d=2.
        backend: "auto" | "reference" | "native" | "triton" for every op; may be changed after construction.
        checkpoint: recompute the dense blocks in backward (training at high resolution with less memory).
    """

    name = "ahdrnet"

    def __init__(self, features: int = 64, growth: int = 32, dense_layers: int = 6, dilation: int = 2,
                 backend: str = "auto", checkpoint: bool = False):
        super().__init__()
        f = features
        self.config = dict(features=features, growth=growth, dense_layers=dense_layers, dilation=dilation)
        self.conv1 = Conv(6, f, 3)
        self.att11, self.att12 = Conv(2 * f, 2 * f, 3), Conv(2 * f, f, 3)
        self.att31, self.att32 = Conv(2 * f, 2 * f, 3), Conv(2 * f, f, 3)
        self.conv2 = Conv(3 * f, f, 3)
        self.RDB1, self.RDB2, self.RDB3 = (DilatedDenseBlock(f, growth, dense_layers, dilation, checkpoint)
                                           for _ in range(3))
        self.GFF_1x1 = Conv(3 * f, f, 1)
        self.GFF_3x3 = Conv(f, f, 3)
        self.conv_up = Conv(f, f, 3)
        self.conv3 = Conv(f, 3, 3)
        self.backend = backend
        # Pixels of context each output pixel sees on every side (tiled inference needs a halo this wide):
        # conv1, the two attention convs, conv2, 3 blocks of L dilated convs, GFF 3x3, conv_up, conv3.
        self.receptive_radius = 1 + 2 + 1 + 3 * dense_layers * dilation + 3

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        ops._backends._requested(value)  # a ValueError naming the setting when it is not a backend
        self._backend = value
        for block in (self.RDB1, self.RDB2, self.RDB3):
            block.backend = value

    def _conv(self, layer: Conv, x: torch.Tensor, activation: str = "none") -> torch.Tensor:
        return ops.conv2d(x, layer.weight, layer.bias, activation=activation, negative_slope=_SLOPE,
                          backend=self._backend)

    def _gate(self, first: Conv, second: Conv, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return ops.attention_gate(x, ref, first.weight, first.bias, second.weight, second.bias,
                                  negative_slope=_SLOPE, backend=self._backend)

    def encode(self, ldr: torch.Tensor, exposure: torch.Tensor):
        """Shared conv1 features of the three frames: (F1, F2, F3), each (N, features, H, W)."""
        x = frame_inputs(ldr, exposure)  # (N, 3, 6, H, W)
        n = x.shape[0]
        # conv1 is shared by the frames: one call over a 3N batch instead of three.
        feats = self._conv(self.conv1, x.flatten(0, 1), "leaky_relu").unflatten(0, (n, 3))
        return feats[:, 0], feats[:, 1], feats[:, 2]

    def forward(self, ldr: torch.Tensor, exposure: torch.Tensor) -> torch.Tensor:
        return self._run(ldr, exposure, None)

    @torch.no_grad()
    def explain(self, ldr: torch.Tensor, exposure: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output and the intermediate maps a person may want to look at: `attention_short` and
        `attention_long` (N, features, H, W) — the gates applied to the short and long frames' features
        (1 keeps, 0 suppresses: motion and saturation) — and `output`."""
        maps: dict[str, torch.Tensor] = {}
        maps["output"] = self._run(ldr, exposure, maps)
        return maps

    def _run(self, ldr, exposure, maps):
        # With the native backend every large tensor of the call (ours and ATen's) comes from the workspace cache:
        # a map freed here lends its pages, already faulted in, to the next (apnt.ops.hold_workspaces; at 1500x1000
        # the call allocates ~14 GB of maps with a ~2.9 GB peak), and they stay cached for the next call until
        # apnt.ops.empty_cache(). `reference` stays plain PyTorch: the baseline.
        native = ops._backends.select("conv2d", self._backend, ldr.device, ldr.dtype) == "native"
        with ops.hold_workspaces() if native else contextlib.nullcontext():
            return self._layers(ldr, exposure, maps)

    def _layers(self, ldr, exposure, maps):
        f1, f2, f3 = self.encode(ldr, exposure)
        if maps is None:
            g1 = self._gate(self.att11, self.att12, f1, f2)
            g3 = self._gate(self.att31, self.att32, f3, f2)
        else:
            g1, maps["attention_short"] = ops.attention_gate_map(
                f1, f2, self.att11.weight, self.att11.bias, self.att12.weight, self.att12.bias,
                negative_slope=_SLOPE, backend=self._backend)
            g3, maps["attention_long"] = ops.attention_gate_map(
                f3, f2, self.att31.weight, self.att31.bias, self.att32.weight, self.att32.bias,
                negative_slope=_SLOPE, backend=self._backend)
        # Inference holds only what later layers read: f2 gets its own storage (it is a view of all three frames'
        # conv1 features), and each map is dropped after its last use. At 1500x1000 every 64-channel map is 384 MB.
        # (Training saves these for backward anyway; the dels then change nothing.)
        f2 = f2.clone()
        del f1, f3
        stacked = torch.cat([g1, f2, g3], 1)
        del g1, g3
        f0 = self._conv(self.conv2, stacked)
        del stacked
        r1 = self.RDB1(f0)   # the three blocks share one buffer allocation (native)
        del f0
        r2 = self.RDB2(r1)
        r3 = self.RDB3(r2)
        stacked = torch.cat([r1, r2, r3], 1)
        del r1, r2, r3
        fused = self._conv(self.GFF_3x3, self._conv(self.GFF_1x1, stacked))
        del stacked
        up = self._conv(self.conv_up, fused + f2)
        del fused, f2
        return self._conv(self.conv3, up, "sigmoid")
