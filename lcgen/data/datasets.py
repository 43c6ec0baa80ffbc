"""One data module for every stage: `build_dataset(name, split, ...)` -> a torch dataset of
{"pixel_values": float (C, R, R) in [-1, 1], "label": int64}; `make_collate` drops undecodable
images and counts them, so a corrupt file is skipped, never a crash mid-epoch.

Names: "fashion-mnist" (Debian IDX files when present, else the Hub), "imagefolder" (data_dir,
labels from sub-folders), the named Hub datasets below, or any Hub dataset id "owner/name".
"""
from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset, IterableDataset

from .fashion_mnist import CLASS_NAMES as FASHION_MNIST_CLASSES
from .fashion_mnist import DEBIAN_DIR, debian_files_present, load_fashion_mnist
from .transforms import ImageTransform, decode_image

# Hub ids of the named datasets. ImageNet is gated (accept its terms on the Hub, then `hf auth
# login`); the FFHQ / LSUN / CelebA ids are community copies — pass data_dir + "imagefolder" or any
# other id if you keep your own.
HUB_IDS = {
    "fashion-mnist": "zalando-datasets/fashion_mnist",
    "mnist": "ylecun/mnist",
    "cifar10": "uoft-cs/cifar10",
    "imagenet": "ILSVRC/imagenet-1k",
    "ffhq": "gaunernst/ffhq-1024-wds",
    "lsun-church": "tglcourse/lsun_church_train",
    "lsun-bedroom": "pcuenq/lsun-bedrooms",
    "celeba": "flwrlabs/celeba",
}
SPLIT_ALIASES = {"val": "validation", "validation": "test", "test": "validation"}  # tried when absent
# What the Hub copies behind some short names are (from a review of those repositories; not checkable
# offline): unconditional sets whose label-like column is not a class, subsets, per-dataset split names
HUB_FACTS = {
    "lsun-church": {"unconditional": True,
                    "note": "tglcourse/lsun_church_train: a 119,915-image subset of LSUN church_outdoor train; "
                            "its 16-value label column is not a class and is not used"},
    "lsun-bedroom": {"unconditional": True,
                     "note": "pcuenq/lsun-bedrooms: a 20% sample of LSUN bedroom train, not the whole set"},
    "celeba": {"splits": {"val": "valid", "validation": "valid"}},
}


def hub_split(name: str, split: str) -> str:
    """The split name the dataset behind `name` uses (CelebA's validation split is "valid")."""
    return HUB_FACTS.get(name, {}).get("splits", {}).get(split, split)


def _item_key(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2 ** 63)


class TensorImageDataset(Dataset):
    """uint8 images (N, H, W) or (N, C, H, W) held in memory (Fashion-MNIST)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: ImageTransform, seed: int = 0,
                 class_names=None):
        self.images, self.labels, self.transform, self.seed, self.epoch = images, labels, transform, seed, 0
        self.class_names = list(class_names) if class_names is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.transform(self.images[i], key=_item_key(self.seed, self.epoch, i))
        return {"pixel_values": x, "label": int(self.labels[i])}

    def __getitems__(self, indices):
        """The DataLoader's batched fetch. When the transform leaves the images as they are (native
        size, no flip, same channels) the batch is converted in one tensor operation, the same
        values as item by item (x / 127.5 - 1) at a fraction of the cost (PIL per item was ~8 s of
        every Fashion-MNIST epoch here); otherwise item by item."""
        if not self.transform.keeps(self.images.shape[1:]):
            return [self[i] for i in indices]
        index = torch.as_tensor(indices, dtype=torch.long)
        pixels = self.images[index].float() / 127.5 - 1.0
        pixels = pixels.unsqueeze(1) if pixels.ndim == 3 else pixels
        return [{"pixel_values": x, "label": int(y)} for x, y in zip(pixels, self.labels[index].tolist())]


class HubImageDataset(Dataset):
    """A map-style `datasets.Dataset`; images are decoded here (decode=False) so failures are caught."""

    def __init__(self, ds, image_column: str, label_column: str | None, transform: ImageTransform, seed: int = 0):
        from datasets import Image as ImageFeature

        self.ds = ds.cast_column(image_column, ImageFeature(decode=False))
        self.image_column, self.label_column, self.transform, self.seed, self.epoch = (
            image_column, label_column, transform, seed, 0)
        feat = ds.features.get(label_column) if label_column else None
        self.class_names = list(feat.names) if hasattr(feat, "names") else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        row = self.ds[int(i)]
        try:
            x = self.transform(decode_image(row[self.image_column]), key=_item_key(self.seed, self.epoch, i))
        except Exception:  # undecodable: the collate function drops and counts it
            return None
        return {"pixel_values": x, "label": int(row[self.label_column]) if self.label_column else -1}


class StreamingImageDataset(IterableDataset):
    """A streamed `datasets.IterableDataset` (nothing downloaded up front); yields None for bad images."""

    def __init__(self, ds, image_column: str, label_column: str | None, transform: ImageTransform):
        from datasets import Image as ImageFeature

        self.ds = ds.cast_column(image_column, ImageFeature(decode=False))
        self.image_column, self.label_column, self.transform = image_column, label_column, transform
        self.class_names = None

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)

    def __iter__(self):
        for row in self.ds:
            try:
                x = self.transform(decode_image(row[self.image_column]))
            except Exception:
                yield None
                continue
            yield {"pixel_values": x, "label": int(row[self.label_column]) if self.label_column else -1}


def collate_skipping_bad(items):
    """Stack the good items; `num_skipped` counts the undecodable ones (the trainer sums it)."""
    good = [it for it in items if it is not None]
    if good:
        pixels = torch.stack([it["pixel_values"] for it in good])
        labels = torch.tensor([it["label"] for it in good], dtype=torch.long)
    else:
        pixels, labels = torch.empty(0), torch.empty(0, dtype=torch.long)
    return {"pixel_values": pixels, "labels": labels, "num_skipped": torch.tensor(len(items) - len(good))}


def _image_and_label_columns(features) -> tuple[str, str | None]:
    from datasets import ClassLabel
    from datasets import Image as ImageFeature

    images = [k for k, f in features.items() if isinstance(f, ImageFeature)]
    if not images:
        raise ValueError(f"the dataset has no image column (features: {list(features)})")
    labels = [k for k, f in features.items() if isinstance(f, ClassLabel)]
    label = "label" if "label" in labels else (labels[0] if labels else None)
    return images[0], label


def _load_hub(path: str, split: str, streaming: bool, **kwargs):
    """datasets.load_dataset with errors that say what to do."""
    import datasets
    from huggingface_hub.errors import GatedRepoError

    try:
        return datasets.load_dataset(path, split=split, streaming=streaming, **kwargs)
    except GatedRepoError as e:
        raise ValueError(f"dataset {path!r} is gated: accept its terms on https://huggingface.co/datasets/{path} "
                         f"and log in (`hf auth login`), or point data_dir at a local copy ({e})") from None
    except ValueError as e:  # e.g. unknown split
        raise ValueError(f"cannot load split {split!r} of dataset {path!r}: {e}") from None
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as e:
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (" — offline mode is on and it is not in the local cache: download it once with network, or use "
                "name='imagefolder' with data_dir=<a local folder>") if offline else (
            " — check the id, your network, and (for gated datasets) that you accepted its terms and logged in")
        raise ValueError(f"dataset {path!r} (split {split!r}) is not available{hint} ({type(e).__name__}: {e})") from None


def build_dataset(name: str, split: str = "train", resolution: int | None = None, crop: str = "center",
                  flip: bool = False, channels: int = 3, streaming: bool = False, data_dir: str | None = None,
                  max_samples: int | None = None, seed: int = 0):
    """A torch dataset yielding {"pixel_values": (channels, R, R) in [-1, 1], "label": int}.

    Args:
        name: "fashion-mnist", "imagefolder", a key of HUB_IDS, or a Hub dataset id "owner/name".
        split: "train", "test", "validation" ("val" accepted).
        resolution: side after resize-smallest-side + crop; None keeps the native size.
        crop: "center", "random", "adm" (ADM center_crop_arr) or "stretch" (no crop); flip: random
            horizontal flip.
        channels: 1 (grayscale) or 3 (RGB); images are converted.
        streaming: stream from the Hub instead of downloading first (an IterableDataset).
        data_dir: the folder for "imagefolder" (sub-folders are classes; train/ validation/ are splits).
        max_samples: keep the first N examples.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    if max_samples is not None and max_samples <= 0:
        raise ValueError(f"max_samples must be > 0, got {max_samples}")
    transform = ImageTransform(resolution, crop, flip, channels, seed)

    if name == "fashion-mnist" and debian_files_present() and not streaming:
        images, labels = load_fashion_mnist({"val": "test", "validation": "test"}.get(split, split), DEBIAN_DIR)
        if max_samples:
            images, labels = images[:max_samples], labels[:max_samples]
        return TensorImageDataset(images, labels, transform, seed, FASHION_MNIST_CLASSES)

    if name == "imagefolder":
        if not data_dir or not os.path.isdir(data_dir):
            raise ValueError(f"imagefolder needs data_dir pointing at an existing folder, got {data_dir!r}")
        kwargs = dict(data_dir=data_dir, drop_labels=False)
        path = "imagefolder"
    else:
        path, kwargs = HUB_IDS.get(name, name), {}
        split = hub_split(name, split)
        if "/" not in path:
            raise ValueError(f"unknown dataset {name!r}: use one of {sorted(HUB_IDS)}, 'imagefolder' with data_dir, "
                             f"or a Hub id 'owner/name'")
        if data_dir:
            kwargs["data_dir"] = data_dir
    split = {"val": "validation"}.get(split, split)
    if name == "imagefolder" and not streaming:
        import datasets

        available = list(datasets.load_dataset(path, **kwargs).keys())
        if split not in available and SPLIT_ALIASES.get(split) in available:
            split = SPLIT_ALIASES[split]
        elif split not in available and available == ["train"]:
            raise ValueError(f"{data_dir!r} has only a 'train' split (no {split}/ sub-folder), asked for {split!r}")
    ds = _load_hub(path, split, streaming, **kwargs)
    image_col, label_col = _image_and_label_columns(ds.features)
    if HUB_FACTS.get(name, {}).get("unconditional"):
        label_col = None  # e.g. LSUN church's label column: class-conditional training on it would be on noise
    if streaming:
        if max_samples:
            ds = ds.take(max_samples)
        return StreamingImageDataset(ds, image_col, label_col, transform)
    if max_samples:
        ds = ds.select(range(min(max_samples, len(ds))))
    return HubImageDataset(ds, image_col, label_col, transform, seed)
