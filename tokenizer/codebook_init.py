"""VQGAN-LC codebook initialisation: k-means over patch features of a pretrained vision encoder.

As VQGAN-LC's `codebook_generation/`: patch features of the training images (CLIP ViT-L/14 there;
any encoder of `patch_encoders` here), then k-means to K centres, per class (K / num_classes each,
VQGAN-LC's recipe) or globally. The k-means is mini-batch with k-means++ seeding and empty clusters
re-seeded (`kmeans.MiniBatchKMeans`), and features are streamed:
- per class, only one class's features are held (VQGAN-LC at ImageNet scale: ~1,300 images x 16 x
  768 floats = 64 MB, where all of them at once would be 63 GB);
- globally, only a seeding sample of them, then each pass re-encodes the images batch by batch.
The result is a safetensors file {"codebook": (K, D)} with its provenance in the metadata, loadable
by build_quantizer("lc", init_codebook=path).
"""
from __future__ import annotations

import json
import os
from collections import defaultdict

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from lcgen.checks import is_local_path
from lcgen.data import build_dataset

from .kmeans import MiniBatchKMeans, minibatch_kmeans
from .patch_encoders import load_patch_encoder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


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


class FolderImages:
    """An image folder as (labels, batches): PIL images, undecodable files skipped and counted."""

    def __init__(self, root: str):
        items = list_image_folder(root)
        self.paths = [p for p, _ in items]
        self.labels = [c for _, c in items]
        self.bad = set()  # undecodable files, counted once however often a pass meets them

    @property
    def skipped(self) -> int:
        return len(self.bad)

    def load(self, indices):
        from PIL import Image, UnidentifiedImageError

        images = []
        for i in indices:
            try:
                with Image.open(self.paths[i]) as im:
                    images.append(im.convert("RGB"))
            except (UnidentifiedImageError, OSError):
                self.bad.add(i)  # an undecodable file is skipped and counted, never a crash
        return images


class DatasetImages:
    """A named lcgen dataset (e.g. "fashion-mnist", train split) as (labels, batches): float tensors in [-1, 1]."""

    def __init__(self, name: str, split: str = "train", channels: int = 1, max_samples: int | None = None):
        self.dataset = build_dataset(name, split, channels=channels, max_samples=max_samples)
        labels = getattr(self.dataset, "labels", None)
        if labels is None:
            raise ValueError(f"dataset {name!r} does not expose its labels in memory; export it to an image folder")
        names = getattr(self.dataset, "class_names", None)
        self.labels = [names[int(y)] if names else str(int(y)) for y in labels]
        self.skipped = 0

    def load(self, indices):
        items = self.dataset.__getitems__(list(indices)) if hasattr(self.dataset, "__getitems__") else \
            [self.dataset[i] for i in indices]
        return torch.stack([it["pixel_values"] for it in items])


def _features(encoder, source, indices, batch_size: int):
    """Yield (n, D) patch-feature batches of the images `indices`, in order."""
    for start in range(0, len(indices), batch_size):
        images = source.load(indices[start:start + batch_size])
        if len(images):
            yield encoder(images).reshape(-1, encoder.dim)


def _fit_group(encoder, source, indices, k: int, epochs: int, batch_size: int, kmeans_batch: int, seed: int,
               hold: bool):
    """k centres of the patch features of `indices`. hold: keep this group's features in memory (one
    class) and run `epochs` passes over them; else seed on a first sample and re-encode every pass."""
    if hold:
        km = minibatch_kmeans(torch.cat(list(_features(encoder, source, indices, batch_size))), k, epochs,
                              kmeans_batch, seed=seed)
        return km.centres, km.reseeded
    km = MiniBatchKMeans(k, seed)
    order = torch.randperm(len(indices), generator=km.generator).tolist()
    indices = [indices[i] for i in order]  # a class-sorted folder: a random first sample, not its first files
    sample, stream = [], _features(encoder, source, indices, batch_size)
    for f in stream:  # the seeding sample: the first max(4 K, 10,000) features of the shuffled images
        sample.append(f)
        if sum(len(s) for s in sample) >= max(4 * k, 10_000):
            break
    sample = torch.cat(sample)
    if len(sample) < k:
        raise ValueError(f"{len(sample)} patch features for {k} centres: use fewer centres or more images")
    km.initialise(sample)
    del sample
    for _ in range(epochs):
        for f in _features(encoder, source, indices, batch_size):
            km.partial_fit(f)
        km.end_epoch()
    return km.centres, km.reseeded


def build_lc_codebook(encoder: str, image_folder: str | None, codebook_size: int, output: str,
                      per_class: bool = False, pool: int | None = None, epochs: int = 3, batch_size: int = 32,
                      seed: int = 0, device=None, dataset: str | None = None, split: str = "train",
                      encoder_kind: str = "auto", kmeans_batch: int = 4096, max_samples: int | None = None) -> dict:
    """Write the frozen VQGAN-LC codebook to `output`; returns the metadata written with it.

    encoder: a CLIP vision model or an lcgen ImageClassifier (path or Hub id; `encoder_kind` picks,
    "auto" reads the folder). Images: `image_folder` (sub-folders are classes) or `dataset` (an lcgen
    dataset name, `split`). per_class: K / num_classes centres per class (VQGAN-LC; the first K mod
    num_classes classes one more), each class's
    features held alone; else global, streamed. epochs: mini-batch k-means passes."""
    if not output.endswith(".safetensors"):
        raise ValueError(f"output must end in .safetensors, got {output!r}")
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(out_dir):
        raise ValueError(f"output folder does not exist: {out_dir!r}")
    if codebook_size <= 0:
        raise ValueError(f"codebook_size must be > 0, got {codebook_size}")
    if epochs <= 0 or batch_size <= 0 or kmeans_batch <= 0:
        raise ValueError(f"epochs, batch_size and kmeans_batch must be > 0, got {epochs}, {batch_size}, {kmeans_batch}")
    if (image_folder is None) == (dataset is None):
        raise ValueError("give exactly one of image_folder and dataset")
    if is_local_path(encoder) and not os.path.exists(os.path.expanduser(encoder)):
        raise FileNotFoundError(f"encoder not found: {encoder}")
    source = FolderImages(image_folder) if image_folder is not None else DatasetImages(dataset, split,
                                                                                      max_samples=max_samples)
    by_class = defaultdict(list)
    for i, label in enumerate(source.labels):
        by_class[label].append(i)
    classes = sorted(by_class)
    if per_class and codebook_size < len(classes):
        raise ValueError(f"per-class k-means needs at least one centre per class: codebook_size {codebook_size} "
                         f"< {len(classes)} classes")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    patch_encoder = load_patch_encoder(encoder, encoder_kind, pool, device)

    groups = [by_class[c] for c in classes] if per_class else [list(range(len(source.labels)))]
    # K / classes centres each (VQGAN-LC: 100,000 / 1,000); when K is not a multiple, the first K mod C
    # classes take one more (16,384 over Fashion-MNIST's 10: 1,639 for four classes, 1,638 for six)
    sizes = [codebook_size // len(groups) + (g < codebook_size % len(groups)) for g in range(len(groups))]
    centres, reseeded = [], 0
    for g, indices in enumerate(tqdm(groups, desc="k-means per class" if per_class else "k-means")):
        c, r = _fit_group(patch_encoder, source, indices, sizes[g], epochs, batch_size,
                          kmeans_batch, seed + g, hold=per_class)
        centres.append(c.cpu())
        reseeded += r
    codebook = torch.cat(centres)
    metadata = {"format": "lcgen-lc-codebook", "encoder": encoder, "encoder_kind": patch_encoder.kind,
                "pool": str(patch_encoder.pool), "codebook_size": str(codebook_size), "per_class": str(per_class),
                "classes": json.dumps(classes if per_class else []), "images": str(len(source.labels) - source.skipped),
                "skipped_images": str(source.skipped), "kmeans": "mini-batch, k-means++ seeding",
                "kmeans_epochs": str(epochs), "kmeans_batch": str(kmeans_batch), "reseeded_centres": str(reseeded),
                "seed": str(seed), "feature": patch_encoder.description,
                "images_from": image_folder if image_folder is not None else f"{dataset}:{split}"}
    tmp = output + ".tmp"
    save_file({"codebook": codebook.contiguous()}, tmp, metadata=metadata)
    os.replace(tmp, output)  # atomic: a crash never leaves a half-written codebook
    return metadata
