"""LooC extrapolation-by-interpolation with the official channel ordering.

up:   bilinear x beta (align_corners=False), then pixel_unshuffle(beta): (B, C, h, w) -> (B, beta^2*C, h, w).
      pixel_unshuffle orders channels (c, i, j), so a chunk of d* = beta^2 channels is ONE
      original channel's beta x beta sub-pixel block.
down: pixel_shuffle(beta), then beta x beta average pooling: (B, beta^2*C, h, w) -> (B, C, h, w).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def interpolate_up(z: torch.Tensor, scale: int) -> torch.Tensor:
    z = F.interpolate(z, scale_factor=scale, mode="bilinear", align_corners=False)  # (B, C, sh, sw)
    return F.pixel_unshuffle(z, scale)  # (B, s^2 C, h, w)


def interpolate_down(z: torch.Tensor, scale: int) -> torch.Tensor:
    z = F.pixel_shuffle(z, scale)  # (B, C, sh, sw)
    return F.avg_pool2d(z, scale)  # (B, C, h, w)
