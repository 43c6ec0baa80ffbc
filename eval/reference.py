"""What FID is measured against, from one `--reference` string, checked before any sampling:

- `name[-R]-split`, e.g. `imagenet-256-train`, `imagenet-256-val`, `ffhq-256-train`,
  `lsun-church-256-train`, `cifar10-32-train`, `fashion-mnist-test`, `owner/dataset-256-train` (a Hub
  id), `imagefolder-256-train` (with data_dir): a dataset split, preprocessed by ADM's center crop at R
  (or `preprocessing`), its statistics computed once and cached (eval.feature_store) under a key of
  dataset, split, resolution, preprocessing, data_dir and feature extractor (weights digest included).
- a `.npz` with `mu` and `sigma`: precomputed statistics, loaded in float64 — e.g. ADM's
  VIRTUAL_imagenet256_labeled.npz; its `mu_s`/`sigma_s` (ADM's spatial statistics) serve sFID; if it
  also holds `arr_0` images (ADM's 10k), KID/PR use those.
- a `.npz` with `arr_0` only, or a folder of images: a set of reference images (cached like a split,
  keyed by path, with size and modification time as the staleness check).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from lcgen.data import HUB_IDS

from .image_inputs import FolderImages, NpzImages, SplitImages, open_npz

SPEC = re.compile(r"^(?P<name>.+?)(?:-(?P<res>\d+))?-(?P<split>train|val|validation|test)$")


def default_cache_root() -> str:
    return os.environ.get("LCGEN_FID_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lcgen", "fid-references")


@dataclass
class Reference:
    spec: str
    images: object | None = None  # a uint8 image dataset (eval.image_inputs)
    mu: np.ndarray | None = None  # precomputed float64 statistics
    sigma: np.ndarray | None = None
    mu_s: np.ndarray | None = None  # precomputed spatial statistics for sFID (ADM's mu_s, sigma_s)
    sigma_s: np.ndarray | None = None
    description: dict = field(default_factory=dict)

    @property
    def has_statistics(self) -> bool:
        return self.mu is not None


def _statistics_pair(arrays, path: str, mu_key: str, sigma_key: str):
    """A (D,), (D, D) float64 pair from the npz, or (None, None) when it does not hold these keys."""
    if not {mu_key, sigma_key} <= set(arrays.files):
        return None, None
    mu, sigma = np.asarray(arrays[mu_key], dtype=np.float64), np.asarray(arrays[sigma_key], dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{path!r}: {mu_key} {mu.shape} and {sigma_key} {sigma.shape} are not a (D,), (D, D) pair")
    return mu, sigma


def load_statistics_npz(path: str) -> Reference:
    arrays = open_npz(path)
    if {"mu", "sigma"} <= set(arrays.files):
        mu, sigma = _statistics_pair(arrays, path, "mu", "sigma")
        mu_s, sigma_s = _statistics_pair(arrays, path, "mu_s", "sigma_s")
        images = NpzImages(path) if "arr_0" in arrays.files else None
        desc = {"source": "statistics", "path": os.path.abspath(path), "dim": int(len(mu)),
                "spatial_dim": int(len(mu_s)) if mu_s is not None else None,
                "reference_images_for_kid_prc": images.description["images"] if images else 0}
        return Reference(path, images, mu, sigma, mu_s, sigma_s, desc)
    if "arr_0" in arrays.files:
        images = NpzImages(path)
        return Reference(path, images, description=images.description)
    raise ValueError(f"{path!r} holds neither statistics (mu, sigma) nor images (arr_0): it has {arrays.files}")


def resolve_reference(spec: str, data_dir: str | None = None, preprocessing: str | None = "adm",
                      resolution: int | None = None, max_samples: int | None = None) -> Reference:
    """Parse and open `spec` (see the module docstring); every failure is a ValueError that says why."""
    if not spec:
        raise ValueError("no reference given (--reference): a split such as imagenet-256-val, a statistics .npz "
                         "or an image folder")
    if spec.endswith(".npz"):
        if not os.path.isfile(spec):
            raise ValueError(f"reference file {spec!r} does not exist")
        return load_statistics_npz(spec)
    if os.path.isdir(spec):
        images = FolderImages(spec, resolution, recursive=True)
        return Reference(spec, images, description=images.description)
    m = SPEC.match(spec)
    name = m["name"] if m else None
    if not m or not (name in HUB_IDS or name == "imagefolder" or "/" in name and not os.path.isabs(name)):
        looks_like_path = os.sep in spec or spec.startswith(".")
        raise ValueError(f"reference {spec!r} " + ("does not exist" if looks_like_path else "is not understood") +
                         f": give a dataset split name[-resolution]-split with name in {sorted(HUB_IDS)} or "
                         f"'imagefolder' (e.g. imagenet-256-val), a Hub id owner/name-256-train, a .npz of "
                         f"statistics or images, or an image folder")
    res = int(m["res"]) if m["res"] else resolution
    images = SplitImages(name, m["split"], res, preprocessing if res else None, data_dir, max_samples)
    return Reference(spec, images, description=images.description)
