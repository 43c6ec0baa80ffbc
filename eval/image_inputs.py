"""Images to evaluate, as map-style datasets of uint8 (3, H, W) tensors — what torch-fidelity's feature
extractors take. Every source is checked when opened, before any feature is computed:

- `FolderImages`: png/jpg/jpeg files of one folder (sorted; `recursive` for sub-folders). Mixed sizes
  are an error unless a `resolution` is given to bring them to one size.
- `NpzImages`: ADM's evaluator format — `arr_0` uint8 (N, H, W, 3) (or (N, H, W) / (N, H, W, 1)),
  memory-mapped, never loaded whole. A float array or a file without `arr_0` is an error that says how
  to convert.
- `SplitImages`: a dataset split through `lcgen.data.build_dataset` with an evaluation preprocessing
  ("adm", "center", "stretch" or None = native size), converted back to the exact uint8 pixels;
  `max_samples` keeps a fixed-seed uniform subset of the whole split (not its first, often
  class-sorted, images).
- `as_uint8_images`: a tensor from Python, checked for dtype and declared range.

Each source's `labels()` gives the class of every image (int64, in dataset order) or None when it has
none, for per-class FID: a split's class column, an npz's `arr_1` (ADM's sample format), a sample
folder's `samples.json` (written by eval.sampling).
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from lcgen.data import HUB_FACTS, build_dataset, hub_split
from lcgen.data.fashion_mnist import DEBIAN_DIR
from lcgen.data.transforms import adm_center_crop

from .feature_store import SUBSET_SEED, uniform_subset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _to_chw3(arr: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.array(arr))  # a writable, contiguous copy (PIL and memmap arrays are read-only)
    if t.ndim == 2:
        t = t[..., None]
    t = t.permute(2, 0, 1)
    return t.expand(3, -1, -1).contiguous() if t.shape[0] == 1 else t


# How generated or reconstructed [-1, 1] floats become uint8 pixels, named by who uses them
UINT8_RULES = {
    "round": "uint8(clamp(127.5 x + 128, 0, 255)): 127.5 (x + 1) rounded half up (DiT sample_ddp.py, LlamaGen)",
    "truncate": "uint8(clamp(127.5 (x + 1), 0, 255)): truncated (ADM image_sample.py, VQGAN-LC)",
}


def float_to_uint8(x: torch.Tensor, rule: str = "round") -> torch.Tensor:
    """[-1, 1] floats -> uint8 by one of UINT8_RULES; "round" is the exact inverse of u / 127.5 - 1
    (so a dataset image survives the round trip), "truncate" maps every non-integer value one lower."""
    if rule not in UINT8_RULES:
        raise ValueError(f"uint8 rule must be one of {sorted(UINT8_RULES)}, got {rule!r}")
    y = 127.5 * x.float() + 128 if rule == "round" else (x.float() + 1) * 127.5  # each source's own arithmetic
    return y.clamp(0, 255).to(torch.uint8)


def as_uint8_images(images: torch.Tensor, value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """(N, C, H, W) uint8 as is; floats need their declared value_range ((-1, 1) or (0, 1))."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be a (N, 1 or 3, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if images.dtype == torch.uint8:
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 in [0, 255] or floats with a value_range, got {images.dtype}")
    if value_range not in ((-1, 1), (0, 1)):
        raise ValueError(f"float images need value_range=(-1, 1) or (0, 1), got {value_range!r}")
    lo, hi = float(images.min()), float(images.max())
    if lo < value_range[0] - 1e-3 or hi > value_range[1] + 1e-3:
        raise ValueError(f"float images span [{lo:.3g}, {hi:.3g}], outside the declared value_range {value_range}")
    x = images if value_range == (-1, 1) else images * 2 - 1
    u8 = float_to_uint8(x)
    return u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8


def _checked_labels(labels, n: int, where: str) -> np.ndarray | None:
    """Labels as int64 (n,), or None when there are none (every label negative: unconditional)."""
    if labels is None:
        return None
    out = np.asarray(labels)
    if out.shape != (n,) or not np.issubdtype(out.dtype, np.integer):
        raise ValueError(f"{where}: labels must be {n} integers, got shape {out.shape} of {out.dtype}")
    return None if (out < 0).all() else out.astype(np.int64)


class TensorImages(Dataset):
    def __init__(self, images: torch.Tensor, value_range=None):
        self.images = as_uint8_images(images, value_range).contiguous()
        self.description = {"source": "tensor", "images": len(self.images), "value_range": value_range}

    def labels(self) -> None:
        return None

    def fingerprint(self) -> dict:
        return {"sha256": hashlib.sha256(self.images.cpu().numpy().tobytes()).hexdigest()[:16]}

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


class FolderImages(Dataset):
    def __init__(self, folder: str, resolution: int | None = None, recursive: bool = False,
                 names: list[str] | None = None):
        from PIL import Image

        if not os.path.isdir(folder):
            raise ValueError(f"image folder {folder!r} does not exist")
        if names is not None:  # exactly these files (e.g. the first N samples of a larger folder)
            files = [os.path.join(folder, n) for n in names]
            missing = [f for f in files if not os.path.isfile(f)]
            if missing:
                raise ValueError(f"{len(missing)} of the expected images are missing, e.g. {missing[0]!r}")
        else:
            files = ([os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs] if recursive
                     else [os.path.join(folder, f) for f in os.listdir(folder)])
            files = sorted(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS) and ".tmp." not in f)
        self.files, self.folder, self.recursive = files, os.path.normpath(folder), recursive
        if not self.files:
            raise ValueError(f"no {'/'.join(IMAGE_EXTENSIONS)} images in {folder!r}")
        sizes: dict[tuple[int, int], list[str]] = {}
        for f in self.files:  # PIL reads only the header here
            try:
                with Image.open(f) as im:
                    sizes.setdefault(im.size, []).append(f)
            except Exception as e:
                raise ValueError(f"cannot read image {f!r}: {e}") from None
        if len(sizes) > 1 and resolution is None:
            summary = ", ".join(f"{w}x{h} ({len(fs)} files, e.g. {os.path.basename(fs[0])})"
                                for (w, h), fs in sorted(sizes.items(), key=lambda kv: -len(kv[1])))
            raise ValueError(f"images of mixed sizes in {folder!r}: {summary}. Pass a resolution to resize and "
                             f"center-crop them all to one size (ADM crop), or fix the folder")
        self.resolution = resolution
        self.size = next(iter(sizes)) if len(sizes) == 1 else None
        self.description = {"source": "folder", "path": os.path.abspath(folder), "images": len(self.files),
                            "resolution": resolution, "crop": "adm" if resolution else None}

    def labels(self) -> np.ndarray | None:
        """The classes of the images: those eval.sampling drew for NNNNNN.png (samples.json beside them),
        or, for a recursive folder of class sub-folders (ImageNet's train/val layout), the index of
        each image's sub-folder in sorted order (torchvision ImageFolder's rule, which is ImageNet's
        class order for synset folders). None otherwise."""
        folders = {os.path.normpath(os.path.dirname(f)) for f in self.files}
        path = os.path.join(self.folder, "samples.json")
        if folders == {self.folder} and os.path.isfile(path):
            with open(path) as f:
                drawn = json.load(f).get("labels")
            stems = [os.path.splitext(os.path.basename(f))[0] for f in self.files]
            if not drawn or None in drawn or not all(s.isdigit() and int(s) < len(drawn) for s in stems):
                return None
            return _checked_labels([drawn[int(s)] for s in stems], len(self.files), path)
        parents = [os.path.relpath(d, self.folder) for d in folders]
        if not self.recursive or any(p == "." or os.sep in p for p in parents):
            return None
        index = {name: i for i, name in enumerate(sorted(parents))}
        return np.array([index[os.path.basename(os.path.dirname(f))] for f in self.files], dtype=np.int64)

    def fingerprint(self) -> dict:
        stats = [os.stat(f) for f in self.files]
        return {"files": len(self.files), "bytes": sum(s.st_size for s in stats),
                "latest_mtime": max(s.st_mtime for s in stats)}

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            if self.resolution is not None and im.size != (self.resolution, self.resolution):
                im = adm_center_crop(im, self.resolution)
            return _to_chw3(np.asarray(im))


class NpzImages(Dataset):
    def __init__(self, path: str, key: str = "arr_0"):
        arrays = open_npz(path)
        if key not in arrays.files:
            raise ValueError(f"{path!r} has no {key!r} array (it has {arrays.files}); ADM's format stores the "
                             f"images as arr_0, uint8 (N, H, W, 3)")
        self.images = _mmap_npz_array(path, key)
        shape, dtype = self.images.shape, self.images.dtype
        if dtype != np.uint8:
            raise ValueError(f"{path!r}: {key} is {dtype}, expected uint8 in [0, 255] (convert [-1, 1] floats with "
                             f"clip(127.5 x + 128, 0, 255).astype(uint8), as ADM does)")
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
            raise ValueError(f"{path!r}: {key} has shape {shape}, expected (N, H, W, 3) (channels last, as ADM)")
        if shape[0] == 0:
            raise ValueError(f"{path!r}: {key} holds no images")
        self.path, self.labels_key = path, "arr_1" if "arr_1" in arrays.files else None
        self.description = {"source": "npz", "path": os.path.abspath(path), "images": int(shape[0]),
                            "size": [int(shape[2]), int(shape[1])]}

    def labels(self) -> np.ndarray | None:
        """ADM's sample npz: arr_1 holds the class of each image (-1 throughout for unconditional)."""
        if self.labels_key is None:
            return None
        return _checked_labels(np.load(self.path, allow_pickle=False)[self.labels_key], len(self), self.path)

    def fingerprint(self) -> dict:
        s = os.stat(self.path)
        return {"bytes": s.st_size, "mtime": s.st_mtime}

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return _to_chw3(self.images[i])


def open_npz(path: str):
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} does not exist")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise ValueError(f"{path!r} is not a readable .npz file: {e}") from None


def _mmap_npz_array(path: str, key: str):
    """np.load does not memory-map inside an .npz; an uncompressed member is mapped from its offset."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(f"{key}.npy")
        if info.compress_type == zipfile.ZIP_STORED:
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f)
                header_len = f.tell()
            with open(path, "rb") as raw:  # local file header: 30 bytes + name + extra
                raw.seek(info.header_offset + 26)
                name_len, extra_len = np.frombuffer(raw.read(4), dtype="<u2")
            offset = info.header_offset + 30 + int(name_len) + int(extra_len) + header_len
            return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset,
                             order="F" if fortran else "C")
    return np.load(path, allow_pickle=False)[key]  # compressed: must be read whole


def canonical_split(name: str, split: str) -> str:
    """The split `build_dataset` reads for this name: "val" is "validation" (Fashion-MNIST's both are
    "test"), so a reference named either way is one cache entry."""
    if name == "fashion-mnist":
        return {"val": "test", "validation": "test"}.get(split, split)
    return hub_split(name, {"val": "validation"}.get(split, split))


class SplitImages(Dataset):
    """A dataset split with an evaluation preprocessing, as uint8 (3, R, R)."""

    def __init__(self, name: str, split: str, resolution: int | None, preprocessing: str | None = "adm",
                 data_dir: str | None = None, max_samples: int | None = None):
        if preprocessing not in ("adm", "center", "stretch", None):
            raise ValueError(f"preprocessing must be adm, center, stretch or None, got {preprocessing!r}")
        if (preprocessing is None) != (resolution is None):
            raise ValueError("give a resolution with a preprocessing (or neither, for native-size images)")
        if max_samples is not None and max_samples <= 0:
            raise ValueError(f"max_samples must be > 0, got {max_samples}")
        self.dataset = build_dataset(name, split, resolution, crop=preprocessing or "center", channels=3,
                                     data_dir=data_dir)
        if not hasattr(self.dataset, "__len__"):
            raise ValueError(f"{name!r} {split!r} is a streamed dataset; FID references need a map-style one")
        self.split_images, self.rows = len(self.dataset), None
        if resolution is None:
            self._check_one_size(name, split)
        if max_samples is not None and max_samples < self.split_images:
            self.rows = uniform_subset(self.split_images, max_samples)
            self.dataset = Subset(self.dataset, self.rows.tolist())
        self.description = {"source": "dataset", "dataset": name, "split": canonical_split(name, split),
                            "resolution": resolution,
                            "preprocessing": preprocessing, "data_dir": os.path.abspath(data_dir) if data_dir else None,
                            "max_samples": max_samples, "images": len(self.dataset),
                            "subset": None if len(self.dataset) == self.split_images else
                            f"uniform without replacement over all {self.split_images:,} images, seed {SUBSET_SEED}"}
        if HUB_FACTS.get(name, {}).get("note"):
            self.description["note"] = HUB_FACTS[name]["note"]  # e.g. a Hub copy that is a subset

    def _check_one_size(self, name: str, split: str, probes: int = 64) -> None:
        """Native-size features need one image size: sizes of `probes` images spread over the split,
        checked before any work (a mixed split would otherwise fail mid-extraction)."""
        sizes = {}
        for i in uniform_subset(self.split_images, probes).tolist():
            item = self.dataset[i]
            if item is not None:
                sizes.setdefault(tuple(item["pixel_values"].shape[-2:]), i)
        if len(sizes) > 1:
            seen = ", ".join(f"{h}x{w} (image {i})" for (h, w), i in sorted(sizes.items()))
            raise ValueError(f"{name} {split} has images of mixed sizes ({seen}): name a resolution "
                             f"(e.g. {name}-256-{split}) or pass --reference-resolution")

    def labels(self) -> np.ndarray | None:
        """The split's class column (None for a dataset without one, e.g. LSUN, FFHQ)."""
        full = getattr(self.dataset, "dataset", self.dataset)
        if getattr(full, "labels", None) is not None:  # Fashion-MNIST, in memory
            labels = np.asarray(full.labels)
        elif getattr(full, "label_column", None):  # a Hub dataset: one column read, no image decoded
            labels = np.asarray(full.ds[full.label_column])
        else:
            return None
        return _checked_labels(labels if self.rows is None else labels[self.rows], len(self), self.description["dataset"])

    def fingerprint(self) -> dict:
        inner = getattr(getattr(self.dataset, "dataset", self.dataset), "ds", None)
        if inner is not None and getattr(inner, "_fingerprint", None):
            return {"images": len(self), "datasets_fingerprint": inner._fingerprint}
        if os.path.isdir(DEBIAN_DIR) and self.description["dataset"] == "fashion-mnist":
            files = sorted(os.listdir(DEBIAN_DIR))
            return {"images": len(self), "files": {f: os.stat(os.path.join(DEBIAN_DIR, f)).st_size for f in files}}
        return {"images": len(self)}

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        if item is None:
            raise ValueError(f"image {i} of {self.description['dataset']} {self.description['split']} is undecodable")
        return float_to_uint8(item["pixel_values"])
