"""Evaluation inputs: folders, ADM .npz files, tensors and references are checked before any work;
the ADM crop and the uint8 rule match their definitions."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lcgen.data.transforms import adm_center_crop
from lcgen.eval.image_inputs import FolderImages, NpzImages, SplitImages, as_uint8_images, float_to_uint8
from lcgen.eval.reference import resolve_reference


def write_pngs(folder, sizes, mode="RGB"):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        shape = (h, w, 3) if mode == "RGB" else (h, w)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(os.path.join(folder, f"{i:03d}.png"))


def test_uint8_rule_is_adm():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 2.0])
    # uint8(clamp(127.5 x + 128)): the cast truncates
    assert float_to_uint8(x).tolist() == [0, 64, 128, 255, 255, 255]
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(float_to_uint8(u.float() / 127.5 - 1), u)  # exact inverse of the dataset scaling


def test_adm_center_crop_without_resize_is_a_plain_crop():
    arr = np.random.default_rng(0).integers(0, 256, (300, 256, 3), dtype=np.uint8)  # H=300, W=256
    out = np.asarray(adm_center_crop(Image.fromarray(arr), 256))
    assert np.array_equal(out, arr[22:278])  # (300 - 256) // 2 = 22


def test_adm_center_crop_halves_large_images_first():
    # a smooth 1024 x 2048 image: BOX-halved twice, bicubic to 256 x 512, centre 256 crop
    yy, xx = np.mgrid[0:1024, 0:2048]
    arr = np.stack([xx / 2048 * 255, yy / 1024 * 255, np.full_like(xx, 100.0)], -1).astype(np.uint8)
    out = np.asarray(adm_center_crop(Image.fromarray(arr), 256)).astype(float)
    assert out.shape == (256, 256, 3)
    # columns 128..383 of the 512-wide image: x runs over the middle half of the ramp
    assert abs(out[:, 0, 0].mean() - 128 / 512 * 255) < 2 and abs(out[:, -1, 0].mean() - 383 / 512 * 255) < 2
    assert abs(out[0, :, 1].mean()) < 2 and abs(out[-1, :, 1].mean() - 255) < 2


def test_folder_of_mixed_sizes_is_an_error_unless_resized(tmp_path):
    write_pngs(tmp_path, [(32, 32), (32, 32), (28, 28)])
    with pytest.raises(ValueError, match="mixed sizes.*32x32 \\(2 files.*28x28 \\(1 files"):
        FolderImages(str(tmp_path))
    ds = FolderImages(str(tmp_path), resolution=16)
    assert {tuple(ds[i].shape) for i in range(3)} == {(3, 16, 16)}


def test_folder_images_are_uint8_rgb(tmp_path):
    write_pngs(tmp_path, [(9, 7)] * 2, mode="L")
    ds = FolderImages(str(tmp_path))
    x = ds[1]
    assert x.dtype == torch.uint8 and x.shape == (3, 7, 9)
    gray = np.asarray(Image.open(tmp_path / "001.png"))
    assert np.array_equal(x[0].numpy(), gray) and torch.equal(x[0], x[2])


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="no .png"):
        FolderImages(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        FolderImages(str(tmp_path / "nope"))


def test_npz_is_memory_mapped_and_exact(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=a, arr_1=np.arange(5))
    ds = NpzImages(str(tmp_path / "s.npz"))
    assert isinstance(ds.images, np.memmap)  # not loaded whole
    assert np.array_equal(ds[3].permute(1, 2, 0).numpy(), a[3])


@pytest.mark.parametrize("arrays,match", [
    ({"images": np.zeros((2, 4, 4, 3), np.uint8)}, "no 'arr_0'"),
    ({"arr_0": np.zeros((2, 4, 4, 3), np.float32)}, "float32, expected uint8"),
    ({"arr_0": np.zeros((2, 3, 4, 4), np.uint8)}, "channels last"),
    ({"arr_0": np.zeros((0, 4, 4, 3), np.uint8)}, "no images"),
])
def test_bad_npz(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        NpzImages(str(tmp_path / "bad.npz"))


def test_not_an_npz(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        NpzImages(str(tmp_path / "x.npz"))


def test_tensor_dtype_and_range_checks():
    with pytest.raises(ValueError, match="value_range"):
        as_uint8_images(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="outside the declared"):
        as_uint8_images(torch.full((2, 3, 4, 4), -1.0), value_range=(0, 1))
    with pytest.raises(ValueError, match="uint8"):
        as_uint8_images(torch.zeros(2, 3, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="\\(N, 1 or 3, H, W\\)"):
        as_uint8_images(torch.zeros(3, 4, 4, dtype=torch.uint8))
    x = as_uint8_images(torch.full((1, 1, 2, 2), 0.5), value_range=(0, 1))
    assert x.shape == (1, 3, 2, 2) and x.unique().tolist() == [128]


def test_statistics_reference_is_float64(tmp_path):
    mu = np.arange(4, dtype=np.float32) / 3
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=np.eye(4, dtype=np.float32))
    ref = resolve_reference(str(tmp_path / "ref.npz"))
    assert ref.has_statistics and ref.mu.dtype == np.float64 and ref.sigma.dtype == np.float64
    assert ref.images is None
    np.testing.assert_array_equal(ref.mu, mu.astype(np.float64))


@pytest.mark.parametrize("spec,match", [
    ("missing.npz", "does not exist"),
    ("./no/such/folder", "does not exist"),
    ("tinyimagenet-64-train", "not understood"),
    ("imagenet-256-dev", "not understood"),
    ("", "no reference"),
])
def test_bad_references(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_reference(spec)


def test_npz_without_statistics_or_images(tmp_path):
    np.savez(tmp_path / "x.npz", labels=np.arange(3))
    with pytest.raises(ValueError, match="neither statistics.*nor images"):
        resolve_reference(str(tmp_path / "x.npz"))


def test_unavailable_hub_reference_offline():
    with pytest.raises(ValueError, match="not available|gated"):
        resolve_reference("imagenet-256-val")


def test_split_reference_gives_the_dataset_pixels():
    ref = resolve_reference("fashion-mnist-test", max_samples=3)
    from lcgen.data.fashion_mnist import DEBIAN_DIR, load_fashion_mnist

    from lcgen.eval.feature_store import uniform_subset

    images, _ = load_fashion_mnist("test", DEBIAN_DIR)
    assert isinstance(ref.images, SplitImages) and len(ref.images) == 3
    rows = uniform_subset(10_000, 3)  # max_samples: a uniform subset of the whole split
    assert torch.equal(ref.images[2], images[rows[2]][None].expand(3, -1, -1))
    assert ref.images.description["preprocessing"] is None
    assert ref.images.description["subset"].startswith("uniform without replacement over all 10,000")


def test_max_samples_of_a_class_sorted_folder_holds_every_class(tmp_path):
    from PIL import Image

    for c in range(4):  # an imagefolder is read class by class: its first 20 images are classes 0 and 1
        os.makedirs(tmp_path / "train" / f"class{c}")
        for i in range(15):
            Image.fromarray(np.full((8, 8, 3), 16 * c + i, np.uint8)).save(tmp_path / "train" / f"class{c}" / f"{i}.png")
    split = SplitImages("imagefolder", "train", None, None, data_dir=str(tmp_path), max_samples=20)
    labels = [split.dataset[i]["label"] for i in range(len(split))]
    assert len(labels) == 20 and set(labels) == {0, 1, 2, 3}


def test_split_aliases_share_one_cache_entry_and_mixed_sizes_are_refused(tmp_path):
    from PIL import Image

    assert SplitImages("fashion-mnist", "val", None, None, max_samples=4).description == \
        SplitImages("fashion-mnist", "test", None, None, max_samples=4).description
    for i, size in enumerate([(8, 8), (8, 8), (12, 10)]):
        os.makedirs(tmp_path / "train" / "c", exist_ok=True)
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(tmp_path / "train" / "c" / f"{i}.png")
    with pytest.raises(ValueError, match="mixed sizes.*resolution"):
        SplitImages("imagefolder", "train", None, None, data_dir=str(tmp_path))
    assert len(SplitImages("imagefolder", "train", 8, "center", data_dir=str(tmp_path))) == 3
