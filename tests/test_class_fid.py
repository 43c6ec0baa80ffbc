"""Per-class FID: per-class statistics equal numpy's on the same rows whatever the memory budget, the
labels of every source kind line up with its images, the metric equals the Fréchet distance of each
class's features computed directly, and a missing label source fails before any work."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from test_fid_evaluation import classifier, classifier_settings, smooth_images, write_folder, write_npz  # noqa: F401  (classifier: a fixture)
from tiny import tiny_pipeline

from lcgen.eval.classifier import ImageClassifier
from lcgen.eval.feature_store import FeatureStore
from lcgen.eval.fid import frechet_distance
from lcgen.eval.generation_fid import evaluate_fid
from lcgen.eval.image_inputs import FolderImages, NpzImages, SplitImages


def store_of(tmp_path, rows, shard_size):
    store = FeatureStore(str(tmp_path / "store"), {"x": 1}, len(rows), shard_size)
    store.prepare()
    for s in range(store.num_shards):
        np.savez(store.shard_path(s), pool=rows[s * shard_size:(s + 1) * shard_size])
    return store


@pytest.mark.parametrize("max_bytes", [1, 10 ** 9])  # one class per pass, all classes in one pass
def test_class_statistics_equal_numpy_per_class(tmp_path, max_bytes):
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(37, 5)).astype(np.float32)
    labels = rng.integers(0, 4, size=37)
    labels[7] = 9  # a class with one item: no covariance
    stats = store_of(tmp_path, rows, shard_size=8).class_statistics("pool", labels, max_bytes=max_bytes)
    assert sorted(stats) == sorted(set(labels.tolist()))
    for c, (mu, sigma, n) in stats.items():
        own = rows[labels == c].astype(np.float64)
        assert n == len(own)
        if c == 9:
            assert mu is None and sigma is None
            continue
        np.testing.assert_allclose(mu, own.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sigma, np.cov(own, rowvar=False), rtol=1e-10, atol=1e-12)


def test_class_statistics_refuse_labels_of_another_length(tmp_path):
    with pytest.raises(ValueError, match="3 labels for the 10 items"):
        store_of(tmp_path, np.zeros((10, 2), np.float32), 4).class_statistics("pool", np.zeros(3, int))


def test_labels_of_each_source_kind(tmp_path):
    images = smooth_images(6, 0)
    npz = write_npz(tmp_path / "s.npz", images, arr_1=np.array([2, 0, 1, 2, 0, 1]))
    assert NpzImages(npz).labels().tolist() == [2, 0, 1, 2, 0, 1]
    assert NpzImages(write_npz(tmp_path / "u.npz", images, arr_1=-np.ones(6, int))).labels() is None  # unconditional
    assert NpzImages(write_npz(tmp_path / "n.npz", images)).labels() is None
    # a folder sampled by lcgen: samples.json's labels, by file index
    folder = tmp_path / "sampled"
    os.makedirs(folder)
    for i in (0, 1, 2):
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.png")
    (folder / "samples.json").write_text(json.dumps({"labels": [5, 3, 5, 7]}))
    assert FolderImages(str(folder)).labels().tolist() == [5, 3, 5]
    assert FolderImages(str(folder), names=["000002.png", "000001.png"]).labels().tolist() == [5, 3]
    # class sub-folders (ImageNet's layout): sorted folder order, as torchvision's ImageFolder
    for name, idx in (("n02", [0, 1]), ("n01", [2]), ("n03", [3, 4])):
        write_folder(tmp_path / "tree" / name, images[idx])
    tree = FolderImages(str(tmp_path / "tree"), recursive=True)
    assert [os.path.basename(os.path.dirname(f)) for f in tree.files] == ["n01", "n02", "n02", "n03", "n03"]
    assert tree.labels().tolist() == [0, 1, 1, 2, 2]
    assert FolderImages(str(tmp_path / "tree" / "n02")).labels() is None  # plain folder: no classes


def test_split_labels_follow_the_uniform_subset():
    from lcgen.data.fashion_mnist import DEBIAN_DIR, load_fashion_mnist

    if not os.path.isdir(DEBIAN_DIR):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    full = load_fashion_mnist("test", DEBIAN_DIR)[1].numpy()
    subset = SplitImages("fashion-mnist", "test", None, None, max_samples=50)
    images = load_fashion_mnist("test", DEBIAN_DIR)[0]
    rows = [int(np.flatnonzero((images == subset[i][0]).flatten(1).all(1))[0]) for i in range(3)]
    assert subset.labels().tolist()[:3] == full[rows].tolist()
    assert len(set(subset.labels().tolist())) == 10  # a class-sorted split would not give every class


def test_class_fid_is_the_frechet_distance_of_each_class(classifier, tmp_path):
    """Samples of class 0 are the reference's class-0 images: that class scores ~0; the others equal
    the distance of features computed directly with the classifier."""
    ref_images = torch.cat([smooth_images(6, 1, size=28), smooth_images(6, 2, size=28), smooth_images(6, 3, size=28)])
    ref_labels = np.repeat([0, 1, 2], 6)
    sample_images = torch.cat([ref_images[:6], smooth_images(6, 4, brightness=0.2, size=28),
                               smooth_images(6, 5, brightness=-0.1, size=28)])
    sample_labels = np.repeat([0, 1, 2], 6)
    perm = np.random.default_rng(0).permutation(18)  # class order must not matter
    ref = write_npz(tmp_path / "r.npz", ref_images[perm], arr_1=ref_labels[perm])
    samples = write_npz(tmp_path / "s.npz", sample_images, arr_1=sample_labels)
    settings = classifier_settings(classifier, tmp_path / "cache", metrics=("fid", "class_fid"), shard_size=5)
    with pytest.warns(UserWarning, match="class_fid: 6 to 6 images per class"):
        report = evaluate_fid(str(tmp_path / "e"), ref, samples=samples, settings=settings)
    clf = ImageClassifier.from_pretrained(classifier).eval()
    with torch.no_grad():
        def feats(x):
            return clf.features(x.float().mean(1, keepdim=True) / 127.5 - 1).double().numpy()
        fs, fr = feats(sample_images), feats(ref_images)
    m = report["metrics"]
    assert m["class_fid_classes"] == 3 and sorted(m["class_fid"]) == ["0", "1", "2"]
    for c in (1, 2):
        a, b = fs[sample_labels == c], fr[ref_labels == c]
        expected = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
        assert m["class_fid"][str(c)] == pytest.approx(expected, rel=1e-4)
    assert abs(m["class_fid"]["0"]) < 1e-6 * m["class_fid"]["1"]
    assert m["class_fid_mean"] == pytest.approx(np.mean(list(m["class_fid"].values())), rel=1e-12)
    assert report["protocol"]["class_fid"].startswith("FID of each class")


@pytest.mark.parametrize("case,match", [
    ("reference-without-labels", "every reference image"),
    ("samples-without-labels", "every sample image"),
    ("unconditional-pipeline", "is unconditional"),
    ("statistics-reference", "need reference images"),
])
def test_class_fid_without_labels_fails_before_work(classifier, tmp_path, case, match):
    labelled = write_npz(tmp_path / "l.npz", smooth_images(4, 0, size=28), arr_1=np.array([0, 0, 1, 1]))
    plain = write_npz(tmp_path / "p.npz", smooth_images(4, 1, size=28))
    np.savez(tmp_path / "stats.npz", mu=np.zeros(128), sigma=np.eye(128))
    settings = classifier_settings(classifier, tmp_path / "cache", metrics=("class_fid",))
    kwargs = {"output": str(tmp_path / "e"), "reference": labelled, "samples": labelled, "settings": settings}
    if case == "reference-without-labels":
        kwargs["reference"] = plain
    elif case == "samples-without-labels":
        kwargs["samples"] = plain
    elif case == "statistics-reference":
        kwargs["reference"] = str(tmp_path / "stats.npz")
    else:
        pipe = tmp_path / "pipe"
        tiny_pipeline("gpt", num_classes=0).save_pretrained(pipe)
        kwargs.update(samples=None, pipeline=str(pipe), num_samples=4)
    with pytest.raises(ValueError, match=match):
        evaluate_fid(**kwargs)
    assert not os.path.exists(tmp_path / "e")
    assert not os.path.exists(tmp_path / "cache")

