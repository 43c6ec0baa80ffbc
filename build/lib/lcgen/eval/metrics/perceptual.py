"""LPIPS (VGG) from the `lpips` package, loadable offline.

The package ships only LPIPS' linear calibration layers; the VGG16 trunk comes from torchvision's
download. Offline, pass the torchvision `vgg16` weights as a local file (`.safetensors`, or a `.pth`
state dict read with `weights_only=True`), or have them in torch hub's cache. `random_trunk=True`
builds an uncalibrated random trunk — only for tests that exercise the code path.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's file name in torch hub's checkpoint cache


def _load_state_dict(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)  # refuses pickled code


def load_lpips(vgg_weights: str | None = None, random_trunk: bool = False) -> nn.Module:
    """A frozen `lpips.LPIPS(net="vgg")` in eval mode; inputs (B, 3 or 1, H, W) in [-1, 1]."""
    import lpips

    cached = os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_FILE)
    if vgg_weights is None and not random_trunk and not os.path.isfile(cached) and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ValueError(f"LPIPS needs the torchvision VGG16 weights, which are not cached at {cached} and cannot be "
                         "downloaded offline: pass a local file (e.g. --lpips_vgg_weights vgg16-397923af.pth) or "
                         "set the perceptual weight to 0")
    if vgg_weights is not None and not os.path.isfile(vgg_weights):
        raise ValueError(f"VGG16 weights file not found: {vgg_weights!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation inside lpips
        try:
            model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=random_trunk or vgg_weights is not None,
                                verbose=False)
        except OSError as e:  # the VGG16 download failed (no network, HF_HUB_OFFLINE unset)
            raise ValueError(f"LPIPS needs the torchvision VGG16 weights and downloading them failed ({e}): pass a "
                             "local file (e.g. --lpips_vgg_weights vgg16-397923af.pth)") from None
    if vgg_weights is not None:
        state = _load_state_dict(vgg_weights)
        for sl in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
            for name, layer in sl.named_children():  # child "i" is torchvision's features[i]
                if isinstance(layer, nn.Conv2d):
                    try:
                        layer.weight.data.copy_(state[f"features.{name}.weight"])
                        layer.bias.data.copy_(state[f"features.{name}.bias"])
                    except (KeyError, RuntimeError) as e:
                        raise ValueError(f"{vgg_weights!r} is not a torchvision vgg16 state dict: {e}") from None
    model.eval().requires_grad_(False)
    return model


def lpips_distance(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS (B,) of images in [-1, 1]; grayscale is repeated to 3 channels."""
    if x.shape[1] == 1:
        x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
    return model(x, y, normalize=False).flatten()
