"""The small VQ-VAE of CVQ-VAE and LooC (DeepMind/Zalando style), x4 downsampling.

Encoder: Conv4x4/2 (in->h/2) ReLU, Conv4x4/2 (h/2->h) ReLU, Conv3x3 (h->h), residual stack.
Decoder: Conv3x3 (d->h), residual stack, ConvT4x4/2 (h->h/2) ReLU, ConvT4x4/2 (h/2->out).
Residual stack: n x [ReLU, Conv3x3 h->r, ReLU, Conv1x1 r->h] + skip, then ReLU.

The official residual layer (CVQ-VAE `modules.py`, copied by LooC) starts with `nn.ReLU(True)`: in
place, so the skip carries the rectified input and a layer computes relu(x) + block(relu(x)), not
x + block(relu(x)); its convolutions keep their biases. Both are matched here.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ResidualStack(nn.Module):
    """n residual layers with a bottleneck of r channels, then a ReLU."""

    def __init__(self, channels: int, residual_channels: int, num_layers: int):
        super().__init__()
        # the leading ReLU is applied in forward, to the skip as well (the official in-place ReLU)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, residual_channels, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(residual_channels, channels, 1))
            for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(x)
            x = x + layer(x)
        return torch.relu(x)


class VQVAEEncoder(nn.Module):
    """(B, in, H, W) -> (B, hidden, H/4, W/4)."""

    def __init__(self, in_channels: int, hidden_channels: int, residual_channels: int, num_residual_layers: int):
        super().__init__()
        self.conv_1 = nn.Conv2d(in_channels, hidden_channels // 2, 4, stride=2, padding=1)
        self.conv_2 = nn.Conv2d(hidden_channels // 2, hidden_channels, 4, stride=2, padding=1)
        self.conv_3 = nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1)
        self.residual_stack = ResidualStack(hidden_channels, residual_channels, num_residual_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(x))  # (B, h/2, H/2, W/2)
        x = torch.relu(self.conv_2(x))  # (B, h, H/4, W/4)
        return self.residual_stack(self.conv_3(x))  # (B, h, H/4, W/4)


class VQVAEDecoder(nn.Module):
    """(B, latent, h, w) -> (B, out, 4h, 4w); `conv_out` is the last layer (VQGAN's adaptive weight)."""

    def __init__(self, latent_channels: int, out_channels: int, hidden_channels: int, residual_channels: int,
                 num_residual_layers: int):
        super().__init__()
        self.conv_in = nn.Conv2d(latent_channels, hidden_channels, 3, padding=1)
        self.residual_stack = ResidualStack(hidden_channels, residual_channels, num_residual_layers)
        self.conv_up = nn.ConvTranspose2d(hidden_channels, hidden_channels // 2, 4, stride=2, padding=1)
        self.conv_out = nn.ConvTranspose2d(hidden_channels // 2, out_channels, 4, stride=2, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.residual_stack(self.conv_in(z))  # (B, h, h, w)
        x = torch.relu(self.conv_up(x))  # (B, h/2, 2h, 2w)
        return self.conv_out(x)  # (B, out, 4h, 4w)
