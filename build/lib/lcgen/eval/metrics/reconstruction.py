"""Per-image reconstruction metrics on images in [0, 1] (convert [-1, 1] with (x + 1) / 2).

- l1: mean |x - y| per image.
- PSNR: 10 log10(1 / mse) per image, peak 1 (RGB, not VQGAN-LC's Y channel), then averaged.
- SSIM: Wang et al. 2004 with a Gaussian window (11 taps, sigma 1.5), K1 = 0.01, K2 = 0.03,
  data range 1, population statistics, 'valid' filtering (no padding), mean over the SSIM map and
  the channels — the torchmetrics / pytorch-msssim convention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_pair(x, y):
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def l1_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    _check_pair(x, y)
    return (x.double() - y.double()).abs().flatten(1).mean(1)  # (B,)


def psnr(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    _check_pair(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(eps))  # (B,)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    return g / g.sum()  # (size,)


def ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    _check_pair(x, y)
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"SSIM with an {window_size}-tap window needs images of at least {window_size}x{window_size}, "
                         f"got {tuple(x.shape[-2:])}")
    c = x.shape[1]
    g = gaussian_window(window_size, sigma).to(x.device)
    # separable Gaussian filter, one per channel
    wh = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    wv = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, wh, groups=c), wv, groups=c)

    x, y = x.double(), y.double()
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x ** 2
    syy = blur(y * y) - mu_y ** 2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = k1 ** 2, k2 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)  # (B,)
