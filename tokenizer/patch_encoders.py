"""Pretrained vision encoders as sources of patch features for the VQGAN-LC codebook.

An encoder is a choice, not a special case: each turns a batch of images into (B, P, D) patch
features through the same interface, and `load_patch_encoder` picks one from what a folder holds.

- "clip": a transformers CLIP vision model (VQGAN-LC: ViT-L/14's final-layer patch tokens after
  post_layernorm and the visual projection, CLS dropped, the grid average-pooled `pool` x `pool`).
- "lcgen-classifier": an `ImageClassifier` folder (e.g. the Fashion-MNIST judge trained on the real
  training split, the pretrained encoder this offline machine has): the feature map of its last
  convolutional block, (2 * width) x 7 x 7, average-pooled `pool` x `pool`.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from lcgen.eval.classifier import ImageClassifier

PATCH_ENCODERS = ("clip", "lcgen-classifier")


def pool_grid(tokens: torch.Tensor, pool: int) -> torch.Tensor:
    """(B, D, g, g) feature map -> (B, (g/pool)^2, D) pooled patch features."""
    grid = tokens.shape[-1]
    if tokens.shape[-2] != grid or grid % pool:
        raise ValueError(f"patch grid {tuple(tokens.shape[-2:])} cannot be {pool}x{pool} average-pooled")
    return F.avg_pool2d(tokens, pool).flatten(2).transpose(1, 2)


@torch.no_grad()
def clip_patch_features(model, pixel_values: torch.Tensor, pool: int = 4) -> torch.Tensor:
    """pixel_values: CLIP-normalised (B, 3, S, S) -> (B, (g/pool)^2, proj_dim) pooled patch features."""
    hidden = model.vision_model(pixel_values=pixel_values).last_hidden_state  # (B, 1+g*g, width)
    tokens = model.visual_projection(model.vision_model.post_layernorm(hidden))[:, 1:]  # drop CLS: (B, g*g, P)
    b, length, dim = tokens.shape
    grid = int(round(length ** 0.5))
    if grid * grid != length:
        raise ValueError(f"{length} patch tokens do not form a square grid")
    return pool_grid(tokens.transpose(1, 2).reshape(b, dim, grid, grid), pool)


def load_clip_vision(encoder: str, device="cpu"):
    """(model, image processor) from a local path or Hub id."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(encoder).to(device).eval()
    processor = CLIPImageProcessor.from_pretrained(encoder)
    return model, processor


def _to_pil(images: torch.Tensor):
    """float (B, C, H, W) in [-1, 1] -> PIL images (what CLIP's processor expects)."""
    from PIL import Image

    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


class ClipPatchEncoder:
    kind = "clip"
    description = "CLIP vision last layer, post_layernorm + visual_projection, CLS dropped"

    def __init__(self, path: str, pool: int = 4, device="cpu"):
        self.model, self.processor = load_clip_vision(path, device)
        self.pool, self.device = pool, device
        self.dim = self.model.config.projection_dim

    def __call__(self, images) -> torch.Tensor:
        """images: a list of PIL images or a float tensor (B, C, H, W) in [-1, 1] -> (B, P, D) float32."""
        if isinstance(images, torch.Tensor):
            images = _to_pil(images)
        images = [im.convert("RGB") for im in images]
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        return clip_patch_features(self.model, pixels, self.pool).float()


class ClassifierPatchEncoder:
    kind = "lcgen-classifier"
    description = "lcgen ImageClassifier, feature map of the last conv block (before flatten)"

    def __init__(self, path: str, pool: int = 1, resolution: int = 28, device="cpu"):
        self.model = ImageClassifier.from_pretrained(path).to(device).eval()
        self.pool, self.resolution, self.device = pool, resolution, device
        self.in_channels = self.model.config.in_channels
        self.dim = 2 * self.model.config.width

    def _pixels(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            x = images.float()
        else:  # PIL: the classifier's channels and training side, scaled to [-1, 1]
            mode = "L" if self.in_channels == 1 else "RGB"
            arrs = [np.asarray(im.convert(mode).resize((self.resolution, self.resolution))) for im in images]
            x = torch.from_numpy(np.stack(arrs)).float().div(127.5).sub(1)
            x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"the classifier takes (B, {self.in_channels}, H, W) images, got {tuple(x.shape)}")
        return x.to(self.device)

    @torch.no_grad()
    def __call__(self, images) -> torch.Tensor:
        return pool_grid(self.model.feature_map(self._pixels(images)), self.pool).float()


def load_patch_encoder(path: str, kind: str = "auto", pool: int | None = None, device="cpu"):
    """The patch encoder in `path` (a folder or Hub id). kind "auto": an lcgen ImageClassifier folder
    (its config.json names the class), otherwise a CLIP vision model. pool None: the kind's default
    (4 for CLIP as VQGAN-LC; 1 for the classifier's 7 x 7 map)."""
    if kind == "auto":
        config = os.path.join(path, "config.json")
        name = json.load(open(config)).get("_class_name") if os.path.isfile(config) else None
        kind = "lcgen-classifier" if name == "ImageClassifier" else "clip"
    if kind not in PATCH_ENCODERS:
        raise ValueError(f"unknown patch encoder kind {kind!r}; expected 'auto' or one of {PATCH_ENCODERS}")
    if kind == "clip":
        return ClipPatchEncoder(path, 4 if pool is None else pool, device)
    return ClassifierPatchEncoder(path, 1 if pool is None else pool, device=device)
