"""VQGAN-LC codebook initialisation: k-means over patch features of a pretrained vision encoder.

As in VQGAN-LC's `codebook_generation/`: CLIP ViT-L/14 final-layer patch tokens after the
post-layernorm and the visual projection (768-d), CLS dropped, the 16x16 grid 4x4 average-pooled
to 16 vectors per image, then k-means to K centres, globally or per class (K/num_classes each).
Any local path or Hub id of a transformers CLIP vision model works; nothing is downloaded when
HF_HUB_OFFLINE=1. The result is a safetensors file {"codebook": (K, 768)} with its provenance in
the metadata, loadable by build_quantizer("lc", init_codebook=path).
"""
from __future__ import annotations

import json
import os
from collections import defaultdict

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .kmeans import kmeans

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_clip_vision(encoder: str, device="cpu"):
    """(model, image processor) from a local path or Hub id."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(encoder).to(device).eval()
    processor = CLIPImageProcessor.from_pretrained(encoder)
    return model, processor


@torch.no_grad()
def clip_patch_features(model, pixel_values: torch.Tensor, pool: int = 4) -> torch.Tensor:
    """pixel_values: CLIP-normalised (B, 3, S, S) -> (B, (g/pool)^2, proj_dim) pooled patch features."""
    hidden = model.vision_model(pixel_values=pixel_values).last_hidden_state  # (B, 1+g*g, width)
    tokens = model.visual_projection(model.vision_model.post_layernorm(hidden))[:, 1:]  # drop CLS: (B, g*g, P)
    b, length, dim = tokens.shape
    grid = int(round(length ** 0.5))
    if grid * grid != length or grid % pool:
        raise ValueError(f"patch grid {grid}x{grid} cannot be {pool}x{pool} average-pooled")
    tokens = tokens.transpose(1, 2).reshape(b, dim, grid, grid)  # (B, P, g, g)
    return F.avg_pool2d(tokens, pool).flatten(2).transpose(1, 2)  # (B, (g/pool)^2, P)


def list_image_folder(root: str):
    """[(path, class name)] for root/<class>/<image> (or root/<image>, class '')."""
    if not os.path.isdir(root):
        raise ValueError(f"image folder not found: {root!r}")
    items = []
    for dirpath, _, files in sorted(os.walk(root)):
        label = os.path.relpath(dirpath, root)
        for name in sorted(files):
            if name.lower().endswith(IMAGE_SUFFIXES):
                items.append((os.path.join(dirpath, name), "" if label == "." else label))
    if not items:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root!r}")
    return items


def build_lc_codebook(encoder: str, image_folder: str, codebook_size: int, output: str, per_class: bool = False,
                      pool: int = 4, iters: int = 20, batch_size: int = 32, seed: int = 0, device=None) -> dict:
    """Write the frozen VQGAN-LC codebook to `output`; returns the metadata written with it."""
    from PIL import Image, UnidentifiedImageError

    if not output.endswith(".safetensors"):
        raise ValueError(f"output must end in .safetensors, got {output!r}")
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(out_dir):
        raise ValueError(f"output folder does not exist: {out_dir!r}")
    if codebook_size <= 0:
        raise ValueError(f"codebook_size must be > 0, got {codebook_size}")
    items = list_image_folder(image_folder)
    classes = sorted({c for _, c in items})
    if per_class and codebook_size % len(classes):
        raise ValueError(f"per-class k-means needs codebook_size divisible by the {len(classes)} classes, got {codebook_size}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load_clip_vision(encoder, device)

    features, skipped = defaultdict(list), 0
    for start in tqdm(range(0, len(items), batch_size), desc="CLIP features"):
        batch, labels = [], []
        for path, label in items[start:start + batch_size]:
            try:
                with Image.open(path) as im:
                    batch.append(im.convert("RGB"))
                labels.append(label)
            except (UnidentifiedImageError, OSError):
                skipped += 1  # an undecodable file is skipped and counted, never a crash
        if not batch:
            continue
        pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
        feats = clip_patch_features(model, pixels, pool).float()
        for f, label in zip(feats, labels):
            features[label].append(f)

    groups = classes if per_class else [None]
    centres = []
    for group in groups:
        pts = torch.cat([torch.cat(v) for k, v in features.items() if group is None or k == group])
        centres.append(kmeans(pts, codebook_size // len(groups), iters=iters, seed=seed).cpu())
    codebook = torch.cat(centres)
    metadata = {"format": "lcgen-lc-codebook", "encoder": encoder, "pool": str(pool), "codebook_size": str(codebook_size),
                "per_class": str(per_class), "classes": json.dumps(classes if per_class else []),
                "images": str(len(items) - skipped), "skipped_images": str(skipped), "kmeans_iters": str(iters),
                "seed": str(seed), "feature": "CLIP vision last layer, post_layernorm + visual_projection, CLS dropped"}
    tmp = output + ".tmp"
    save_file({"codebook": codebook.contiguous()}, tmp, metadata=metadata)
    os.replace(tmp, output)  # atomic: a crash never leaves a half-written codebook
    return metadata
