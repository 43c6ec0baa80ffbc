"""l1 / PSNR / SSIM against closed forms and a direct single-window computation."""
import math

import numpy as np
import pytest
import torch

from lcgen.eval.metrics import l1_error, psnr, ssim
from lcgen.eval.metrics.reconstruction import gaussian_window


def test_psnr_and_l1_closed_form():
    x = torch.full((2, 3, 16, 16), 0.5)
    y = x + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)
    assert torch.allclose(psnr(x, y), torch.tensor([20.0, 40.0], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(l1_error(x, y), torch.tensor([0.1, 0.01], dtype=torch.float64), atol=1e-7)


def test_ssim_identical_is_one_and_constant_images_closed_form():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    a, b = 0.3, 0.7  # constant images: no variance, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    c1 = 0.01 ** 2
    s = ssim(torch.full((1, 1, 11, 11), a, dtype=torch.float64), torch.full((1, 1, 11, 11), b, dtype=torch.float64))
    assert s.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def test_ssim_single_window_matches_direct_weighted_statistics():
    rng = np.random.default_rng(0)
    x, y = rng.random((11, 11)), rng.random((11, 11))
    g = gaussian_window().numpy()
    w = np.outer(g, g)  # the one valid 11x11 window
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * x * x).sum() - mx ** 2, (w * y * y).sum() - my ** 2
    cxy = (w * x * y).sum() - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    got = ssim(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]).item()
    assert got == pytest.approx(expected, rel=1e-10)


def test_gaussian_window_sigma():
    g = gaussian_window(11, 1.5)
    r = torch.arange(11, dtype=torch.float64) - 5
    assert g.sum().item() == pytest.approx(1.0) and math.sqrt((g * r * r).sum().item()) == pytest.approx(1.5, rel=0.01)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="equal shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
