"""Building blocks shared by the models; parameters named like the authors' code so checkpoints map 1:1."""
from __future__ import annotations

import math

import torch
from torch import nn

from apnt import ops


def _init_conv(weight: torch.Tensor, bias: torch.Tensor) -> None:
    # nn.Conv2d's default initialisation, so a fresh block trains like the authors' PyTorch modules.
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    bound = 1 / math.sqrt(weight[0].numel())
    nn.init.uniform_(bias, -bound, bound)


class Conv(nn.Module):
    """Holds `weight` and `bias` under the name the authors' checkpoints use (`...conv.weight`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        _init_conv(self.weight, self.bias)


class _DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int):
        super().__init__()
        self.conv = Conv(in_channels, growth, 3)


class DilatedDenseBlock(nn.Module):
    """AHDRNet's dilated residual dense block (DRDB), through `apnt.ops.dilated_dense_block`.

    Parameters `dense_layers.{i}.conv.weight/bias` and `conv_1x1.weight/bias`, as in the authors' code.
    `checkpoint=True` trades compute for memory (only the input is kept for backward)."""

    def __init__(self, channels: int = 64, growth: int = 32, layers: int = 6, dilation: int = 2,
                 checkpoint: bool = False, backend: str = "auto"):
        super().__init__()
        self.dense_layers = nn.ModuleList(_DenseLayer(channels + i * growth, growth) for i in range(layers))
        self.conv_1x1 = Conv(channels + layers * growth, channels, 1)
        self.dilation = dilation
        self.checkpoint = checkpoint
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.dilated_dense_block(
            x, [l.conv.weight for l in self.dense_layers], [l.conv.bias for l in self.dense_layers],
            self.conv_1x1.weight, self.conv_1x1.bias, dilation=self.dilation,
            checkpoint=self.checkpoint and torch.is_grad_enabled(), backend=self.backend)
