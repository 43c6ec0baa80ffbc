"""FeatureStore: streamed statistics equal numpy's mean/cov; shards resume; stale stores are emptied,
never reused; ranks split the shards."""
import json
import os

import numpy as np
import pytest
import torch

from lcgen.eval.feature_store import FeatureStore, StreamingStats, rank_deficiency_warning
from lcgen.eval.image_inputs import TensorImages


def test_streaming_stats_equal_numpy_even_with_large_offsets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 12)) * rng.uniform(0.1, 3, size=12) + 1e4  # cancellation-prone offset
    acc = StreamingStats()
    for chunk in np.array_split(x, [7, 300, 301, 999]):  # uneven chunks
        acc.update(chunk)
    mu, sigma = acc.mu_sigma()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-8, atol=1e-10)
    assert acc.n == 1000


def test_one_row_has_no_covariance():
    acc = StreamingStats()
    acc.update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        acc.mu_sigma()


def test_rank_deficiency_warning():
    assert "rank-deficient" in rank_deficiency_warning(100, 2048)
    assert rank_deficiency_warning(5000, 2048) is None


class CountingExtractor:
    """Features = per-image channel means and a fixed projection; counts the images it saw."""

    def __init__(self, fail_after=None):
        self.seen, self.fail_after = 0, fail_after

    def __call__(self, x):
        if self.fail_after is not None and self.seen >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.seen += len(x)
        f = x.float().mean((2, 3))
        return f, torch.cat([f, f ** 2], 1)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return TensorImages(torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8, generator=g))


def make_store(path, meta=None):
    return FeatureStore(str(path), meta or {"what": "test"}, 10, shard_size=4)


def test_interrupted_extraction_resumes_without_recomputing(images, tmp_path):
    store = make_store(tmp_path / "s")
    store.prepare()
    with pytest.raises(KeyboardInterrupt):
        store.extract(images, CountingExtractor(fail_after=4), ["a", "b"], batch_size=2, progress=False)
    assert store.missing_shards() == [1, 2]  # shard 0 was written whole, nothing partial
    assert not [f for f in os.listdir(tmp_path / "s") if ".tmp" in f]
    resumed = CountingExtractor()
    assert make_store(tmp_path / "s").prepare()  # same meta: kept
    store.extract(images, resumed, ["a", "b"], batch_size=2, progress=False)
    assert resumed.seen == 6  # only images 4..9
    clean = make_store(tmp_path / "clean")
    clean.prepare()
    clean.extract(images, CountingExtractor(), ["a", "b"], batch_size=3, progress=False)
    assert torch.equal(store.features("b"), clean.features("b"))
    expected = images.images.float().mean((2, 3)).numpy()
    np.testing.assert_allclose(store.features("a").numpy(), expected, rtol=1e-6)
    mu, sigma, n = store.statistics("a")
    np.testing.assert_allclose(sigma, np.cov(expected, rowvar=False), rtol=1e-5)
    assert n == 10


def test_stale_store_is_emptied_with_a_warning(images, tmp_path):
    store = make_store(tmp_path, {"weights": "aaa"})
    store.prepare()
    store.extract(images, CountingExtractor(), ["a", "b"], batch_size=4, progress=False)
    store.statistics("a")
    other = make_store(tmp_path, {"weights": "bbb"})
    with pytest.warns(UserWarning, match="stale features.*weights"):
        assert other.prepare() is False
    assert other.missing_shards() == [0, 1, 2]
    assert not os.path.exists(other.stats_path("a"))
    with open(tmp_path / "meta.json") as f:
        assert json.load(f)["weights"] == "bbb"


def test_statistics_file_of_other_features_is_recomputed(images, tmp_path):
    store = make_store(tmp_path)
    store.prepare()
    store.extract(images, CountingExtractor(), ["a", "b"], batch_size=4, progress=False)
    mu, _, _ = store.statistics("a")
    np.savez(store.stats_path("a"), mu=mu + 1, sigma=np.eye(3), n=10, meta=json.dumps({"other": 1}))
    with pytest.warns(UserWarning, match="other features"):
        mu2, _, _ = store.statistics("a")
    np.testing.assert_allclose(mu2, mu)


def test_ranks_split_the_shards(tmp_path):
    store = FeatureStore(str(tmp_path), {}, 25, shard_size=4)  # 7 shards
    parts = [store.missing_shards(r, 3) for r in range(3)]
    assert sorted(s for p in parts for s in p) == list(range(7))
    assert parts[0] == [0, 3, 6]


def test_incomplete_store_cannot_give_statistics(images, tmp_path):
    store = make_store(tmp_path)
    store.prepare()
    with pytest.raises(ValueError, match="missing"):
        store.statistics("a")


def test_uniform_subset_covers_a_class_sorted_split():
    from lcgen.eval.feature_store import uniform_subset

    labels = np.repeat(np.arange(10), 100)  # 1,000 items sorted by class, as an ImageNet folder
    rows = uniform_subset(1000, 200)
    assert len(set(rows.tolist())) == 200 and np.all(np.diff(rows) > 0)
    counts = np.bincount(labels[rows], minlength=10)
    assert counts.min() >= 8  # every class, near its share of 20 (the first 200 would be classes 0 and 1)
    assert np.array_equal(rows, uniform_subset(1000, 200))  # fixed seed
    assert np.array_equal(uniform_subset(5, 10), np.arange(5))


def test_feature_rows_gathered_across_shards(images, tmp_path):
    store = make_store(tmp_path / "s")
    store.prepare()
    store.extract(images, CountingExtractor(), ["a", "b"], batch_size=3, progress=False)
    rows = np.array([0, 3, 4, 9])  # shards of 4: rows in shards 0, 0, 1, 2
    assert torch.equal(store.features("b", rows), store.features("b")[rows])


def test_a_store_in_use_by_another_run_is_not_dropped_or_emptied(images, tmp_path):
    import threading

    from lcgen.eval.feature_store import unique_tmp

    assert unique_tmp("x") != unique_tmp("x")  # two writers of one shard never share a temporary file
    store = make_store(tmp_path / "s")
    store.prepare()
    store.extract(images, CountingExtractor(), ["a", "b"], batch_size=5, progress=False)
    with store.in_use():  # another run reads the cached features ...
        assert store.drop_shards() is False  # ... so this run's clean-up deletes nothing
        assert store.missing_shards() == []
    assert store.drop_shards() is True and store.missing_shards() == [0, 1, 2]
    # a stale entry is emptied only once no run holds it, and its lock file survives
    store.extract(images, CountingExtractor(), ["a", "b"], batch_size=5, progress=False)
    holding, release = threading.Event(), threading.Event()

    def reader():
        with store.in_use():
            holding.set()
            release.wait(10)

    t = threading.Thread(target=reader)
    t.start()
    holding.wait(10)
    stale = make_store(tmp_path / "s", meta={"what": "other"})
    with pytest.warns(UserWarning, match="stale"):
        p = threading.Thread(target=stale.prepare)
        p.start()
        p.join(0.3)
        assert p.is_alive() and store.missing_shards() == []  # waiting: the reader's shards are intact
        release.set()
        p.join(10)
    t.join(10)
    assert sorted(os.listdir(tmp_path / "s")) == [".lock", "meta.json"]
