"""The calling convention shared by every model (DESIGN §4)."""
from __future__ import annotations

import torch

from apnt.tonemap import GAMMA


def check_bracket(ldr: torch.Tensor, exposure: torch.Tensor) -> None:
    """Clear errors for the model inputs: ldr (N, 3, 3, H, W) floating, exposure (N, 3) positive."""
    if not isinstance(ldr, torch.Tensor) or ldr.dim() != 5 or ldr.shape[1:3] != (3, 3):
        shape = tuple(ldr.shape) if isinstance(ldr, torch.Tensor) else type(ldr).__name__
        raise ValueError(f"argument 'ldr': expected (N, 3 frames, 3 channels, H, W), got {shape}")
    if not ldr.is_floating_point():
        raise TypeError(f"argument 'ldr': expected a floating tensor in [0, 1], got {ldr.dtype}")
    if not isinstance(exposure, torch.Tensor) or exposure.shape != (ldr.shape[0], 3):
        shape = tuple(exposure.shape) if isinstance(exposure, torch.Tensor) else type(exposure).__name__
        raise ValueError(f"argument 'exposure': expected (N={ldr.shape[0]}, 3) exposure times, got {shape}")
    if not torch.compiler.is_compiling() and not bool((exposure > 0).all()):
        raise ValueError("argument 'exposure': exposure times must be positive")


def relative_exposure(exposure: torch.Tensor) -> torch.Tensor:
    """Exposure times in units of each sample's shortest one (so t_short = 1), any input unit."""
    return exposure / exposure.amin(dim=1, keepdim=True)


def frame_inputs(ldr: torch.Tensor, exposure: torch.Tensor) -> torch.Tensor:
    """Per frame `[L_i, H_i]` with `H_i = L_i^2.2 / t_i` (LDR channels first): (N, 3, 6, H, W)."""
    check_bracket(ldr, exposure)
    t = relative_exposure(exposure.to(ldr.dtype)).view(-1, 3, 1, 1, 1)
    return torch.cat([ldr, ldr.clamp_min(0) ** GAMMA / t], dim=2)
