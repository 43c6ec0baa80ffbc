"""Standard preprocessing to float tensors in [-1, 1]: resize the smallest side, center or random
crop, optional horizontal flip (taming / VQGAN-LC: SmallestMaxSize + Center/RandomCrop).

Two evaluation protocols have their own modes:
- "adm": ADM's `center_crop_arr` (guided-diffusion, used by DiT/SiT/LlamaGen for FID references):
  BOX-halve while the short side is >= 2R, BICUBIC-resize the short side to R, center crop.
- "stretch": resize to R x R ignoring the aspect ratio (BICUBIC, no crop), the clean-fid-style
  treatment of VQGAN-LC's uncropped reference folders.
"""
from __future__ import annotations

import io
import random

import numpy as np
import torch
from PIL import Image

CROPS = ("center", "random", "adm", "stretch")


class ImageTransform:
    """PIL image or uint8 (H, W) / (C, H, W) tensor -> float (channels, R, R) in [-1, 1].

    resolution None keeps the native size (no resize, no crop). channels 1 or 3 converts.
    """

    def __init__(self, resolution: int | None = None, crop: str = "center", flip: bool = False, channels: int = 3,
                 seed: int = 0):
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if resolution is not None and resolution <= 0:
            raise ValueError(f"resolution must be > 0, got {resolution}")
        self.resolution, self.crop, self.flip, self.channels = resolution, crop, flip, channels
        self.rng = random.Random(seed)

    def keeps(self, shape) -> bool:
        """True when this transform returns a uint8 tensor of this shape ((H, W) or (C, H, W)) unchanged
        but for the scaling to [-1, 1]: native size, no flip, the same channel count."""
        channels, (h, w) = (1 if len(shape) == 2 else shape[0]), shape[-2:]
        same_size = self.resolution is None or self.resolution == h == w
        return same_size and not self.flip and channels == self.channels

    def __call__(self, image, key: int | None = None) -> torch.Tensor:
        """key: seeds this item's crop/flip (dataset seed, epoch, index), so that data order and
        augmentation replay exactly on resume; None uses the transform's own stream."""
        rng = self.rng if key is None else random.Random(key)
        if isinstance(image, torch.Tensor):
            arr = image.numpy()
            image = Image.fromarray(arr if arr.ndim == 2 else np.moveaxis(arr, 0, -1))
        image = image.convert("L" if self.channels == 1 else "RGB")
        if self.resolution is not None and self.crop == "stretch":
            image = image.resize((self.resolution, self.resolution), Image.BICUBIC)
        elif self.resolution is not None and self.crop == "adm":
            image = adm_center_crop(image, self.resolution)
        elif self.resolution is not None:
            w, h = image.size
            scale = self.resolution / min(w, h)
            if scale != 1:
                image = image.resize((max(self.resolution, round(w * scale)), max(self.resolution, round(h * scale))),
                                     Image.BICUBIC)
            w, h = image.size
            if self.crop == "center":
                left, top = (w - self.resolution) // 2, (h - self.resolution) // 2
            else:
                left, top = rng.randint(0, w - self.resolution), rng.randint(0, h - self.resolution)
            image = image.crop((left, top, left + self.resolution, top + self.resolution))
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)  # (C, H, W)
        return x.float() / 127.5 - 1.0


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """guided-diffusion's center_crop_arr: BOX-halve while >= 2x, BICUBIC to the short side, crop."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def decode_image(value) -> Image.Image:
    """A datasets Image value with decode=False ({"bytes", "path"}) or a PIL image -> loaded PIL image.

    Raises on an undecodable file; callers skip and count it."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            image = Image.open(value["path"])
        else:
            raise ValueError("image value has neither bytes nor path")
        image.load()  # decode now, inside the caller's try
        return image
    raise TypeError(f"cannot decode an image from {type(value).__name__}")
