"""The data module on real Fashion-MNIST (Debian IDX files) and on an image folder with a corrupt
file; preprocessing; clear errors."""
import gzip
import hashlib
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lcgen.data import ImageTransform, build_dataset, collate_skipping_bad
from lcgen.data.fashion_mnist import DEBIAN_DIR, debian_files_present, read_idx

needs_fmnist = pytest.mark.skipif(not debian_files_present(), reason="Debian dataset-fashion-mnist not installed")


@needs_fmnist
def test_idx_payload_matches_published_checksum():
    # md5 of the uncompressed payload of t10k-labels (reference/eval-data-performance.md §0.3)
    with gzip.open(os.path.join(DEBIAN_DIR, "t10k-labels-idx1-ubyte.gz"), "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == "15d484375f8d13e6eb1aabb0c3f46965"
    labels = read_idx(os.path.join(DEBIAN_DIR, "t10k-labels-idx1-ubyte.gz"))
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10


@needs_fmnist
def test_fashion_mnist_splits_range_and_labels():
    train, test = build_dataset("fashion-mnist", "train", channels=1), build_dataset("fashion-mnist", "test", channels=1)
    assert (len(train), len(test)) == (60000, 10000)
    item = train[0]
    assert item["pixel_values"].shape == (1, 28, 28) and item["pixel_values"].dtype == torch.float32
    assert item["pixel_values"].min() >= -1 and item["pixel_values"].max() <= 1
    assert item["label"] == 9  # the first training image is an ankle boot
    assert train.class_names[9] == "Ankle boot"
    raw = read_idx(os.path.join(DEBIAN_DIR, "train-images-idx3-ubyte.gz"))[0]
    assert torch.allclose(item["pixel_values"][0], torch.from_numpy(raw.copy()).float() / 127.5 - 1)


@needs_fmnist
def test_fashion_mnist_rgb_resized():
    ds = build_dataset("fashion-mnist", "test", resolution=32, channels=3, max_samples=5)
    assert len(ds) == 5 and ds[0]["pixel_values"].shape == (3, 32, 32)


@needs_fmnist
@pytest.mark.parametrize("kwargs, batched", [(dict(channels=1), True), (dict(channels=1, resolution=28), True),
                                              (dict(channels=1, flip=True), False), (dict(channels=3), False)])
def test_batched_fetch_equals_item_by_item(kwargs, batched):
    # the DataLoader's __getitems__ path: one tensor conversion when the transform keeps the images
    ds = build_dataset("fashion-mnist", "test", max_samples=64, **kwargs)
    assert ds.transform.keeps(ds.images.shape[1:]) is batched
    indices = [5, 0, 63, 17]
    fetched = collate_skipping_bad(ds.__getitems__(indices))
    one_by_one = collate_skipping_bad([ds[i] for i in indices])
    assert torch.equal(fetched["pixel_values"], one_by_one["pixel_values"])
    assert torch.equal(fetched["labels"], one_by_one["labels"])
    loader = torch.utils.data.DataLoader(ds, batch_size=16, collate_fn=collate_skipping_bad)
    assert torch.equal(next(iter(loader))["pixel_values"], collate_skipping_bad([ds[i] for i in range(16)])["pixel_values"])


def _folder(tmp_path, corrupt=True):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    if corrupt:
        (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return tmp_path


def test_image_folder_skips_and_counts_the_corrupt_file(tmp_path):
    ds = build_dataset("imagefolder", data_dir=str(_folder(tmp_path)), resolution=32)
    assert len(ds) == 7 and ds.class_names == ["cat", "dog"]
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_skipping_bad)
    batches = list(loader)
    assert sum(int(b["num_skipped"]) for b in batches) == 1
    assert sum(len(b["pixel_values"]) for b in batches) == 6
    labels = torch.cat([b["labels"] for b in batches])
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert batches[0]["pixel_values"].shape[1:] == (3, 32, 32)


def test_image_folder_streaming_skips_corrupt(tmp_path):
    ds = build_dataset("imagefolder", data_dir=str(_folder(tmp_path)), resolution=16, streaming=True)
    items = list(ds)
    assert len(items) == 7 and sum(it is None for it in items) == 1


def test_transform_resizes_smallest_side_then_crops():
    img = Image.fromarray(np.arange(40 * 80 * 3, dtype=np.uint8).reshape(40, 80, 3) % 251)
    t = ImageTransform(resolution=20, crop="center", channels=3)
    x = t(img)
    assert x.shape == (3, 20, 20) and x.min() >= -1 and x.max() <= 1
    expected = img.resize((40, 20), Image.BICUBIC).crop((10, 0, 30, 20))
    assert torch.allclose(x, torch.from_numpy(np.array(expected)).permute(2, 0, 1).float() / 127.5 - 1)


def test_random_crop_and_flip_are_reproducible_by_key():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 50, 3), dtype=np.uint8))
    t = ImageTransform(resolution=32, crop="random", flip=True)
    assert torch.equal(t(img, key=7), t(img, key=7))
    assert any(not torch.equal(t(img, key=7), t(img, key=k)) for k in range(8, 20))


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="imagefolder", data_dir="/nonexistent/folder"), "existing folder"),
    (dict(name="not-a-dataset"), "unknown dataset"),
    (dict(name="imagenet"), "not available.*offline mode"),
    (dict(name="fashion-mnist", crop="middle"), "crop must be one of"),
    (dict(name="fashion-mnist", channels=2), "channels must be 1 or 3"),
    (dict(name="fashion-mnist", max_samples=0), "max_samples must be > 0"),
])
def test_bad_dataset_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_dataset(**kwargs)


def test_image_folder_without_requested_split(tmp_path):
    with pytest.raises(ValueError, match="only a 'train' split"):
        build_dataset("imagefolder", split="test", data_dir=str(_folder(tmp_path, corrupt=False)))


def test_fashion_mnist_falls_back_to_the_hub_and_explains_offline(monkeypatch):
    import lcgen.data.datasets as d

    monkeypatch.setattr(d, "debian_files_present", lambda root=None: False)
    with pytest.raises(ValueError, match="zalando-datasets/fashion_mnist.*offline mode is on"):
        build_dataset("fashion-mnist", "train")


def test_hub_facts_lsun_is_unconditional_and_celeba_names_its_validation_split(monkeypatch, tmp_path):
    import datasets
    import numpy as np
    from PIL import Image

    from lcgen.data import datasets as lcgen_datasets

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    tiny = datasets.Dataset.from_dict({"image": [str(tmp_path / "a.png")] * 3, "label": [3, 7, 15]}).cast(
        datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=16)}))
    asked = []
    monkeypatch.setattr(lcgen_datasets, "_load_hub", lambda path, split, streaming, **kw: asked.append((path, split))
                        or tiny)
    church = build_dataset("lsun-church", "train")
    assert [church[i]["label"] for i in range(3)] == [-1, -1, -1]  # its 16-value column is not a class
    assert build_dataset("cifar10", "train")[1]["label"] == 7  # a real class column is kept
    build_dataset("celeba", "validation")
    assert asked[-1] == ("flwrlabs/celeba", "valid")
