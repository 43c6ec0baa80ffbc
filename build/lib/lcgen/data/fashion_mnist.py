"""Fashion-MNIST from the IDX files of the Debian package `dataset-fashion-mnist`."""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import torch

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally gzipped): big-endian header, magic 0x08 0x0D for uint8 data."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {payload.size} bytes (truncated?)")
    return payload.reshape(dims)


def debian_files_present(root: str = DEBIAN_DIR) -> bool:
    return all(os.path.isfile(os.path.join(root, f)) for pair in FILES.values() for f in pair)


def load_fashion_mnist(split: str, root: str = DEBIAN_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 28, 28) and int64 labels (N,)."""
    if split not in FILES:
        raise ValueError(f"Fashion-MNIST has splits {sorted(FILES)}, got {split!r}")
    img_file, lbl_file = (os.path.join(root, f) for f in FILES[split])
    images, labels = read_idx(img_file), read_idx(lbl_file)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{img_file} has {images.shape[0]} images but {lbl_file} has {labels.shape[0]} labels")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
