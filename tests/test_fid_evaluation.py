"""Generation FID end to end: the full torch-fidelity Inception path on a few images with test weights
(equal to torch-fidelity's own calculate_metrics), precomputed ADM-style statistics, the reference
cache and its invalidation, resumption, and every bad input failing before work."""
import json
import os
import urllib.error

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image
from tiny import tiny_pipeline

from lcgen.eval.classifier import ImageClassifier
from lcgen.eval.extractors import FASHION_MNIST, ExtractorSpec, make_random_inception_weights
from lcgen.eval.fid import frechet_distance
from lcgen.eval.generation_fid import evaluate_fid
from lcgen.eval.measure import MeasureSettings

N = 10  # Inception costs ~0.1 s per image on 2 CPU cores


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    return make_random_inception_weights(str(tmp_path_factory.mktemp("inception") / "random-inception.pth"))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("clf")
    torch.manual_seed(0)
    ImageClassifier().eval().save_pretrained(path)
    return str(path)


def smooth_images(n, seed, brightness=0.0, size=32):
    """Blurry random colour fields (less degenerate for a random network than white noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return ((x * 0.6 + 0.2 + brightness).clamp(0, 1) * 255).round().to(torch.uint8)


def write_folder(folder, images):
    os.makedirs(folder, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(os.path.join(folder, f"{i:04d}.png"))
    return str(folder)


def write_npz(path, images, **extra):
    np.savez(path, arr_0=images.permute(0, 2, 3, 1).numpy(), **extra)
    return str(path)


class Images(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def inception_settings(weights, cache, metrics=("fid",), is_splits="adm"):
    return MeasureSettings(metrics=metrics, extractor=ExtractorSpec(weights_path=weights), cache_root=str(cache),
                           kid_subset_size=N, is_splits=is_splits)


@pytest.mark.slow
def test_inception_path_equals_torch_fidelity(inception, tmp_path):
    fake, real = smooth_images(N, 0), smooth_images(N, 1, brightness=0.1)
    folder = write_folder(tmp_path / "samples", fake)
    ref = write_npz(tmp_path / "ref.npz", real)
    with pytest.warns(UserWarning, match="rank-deficient"):
        report = evaluate_fid(str(tmp_path / "eval"), ref, samples=folder,
                              settings=inception_settings(inception, tmp_path / "cache", ("fid", "kid", "isc"),
                                                         "torch-fidelity"))
    expected = torch_fidelity.calculate_metrics(
        input1=Images(fake), input2=Images(real), fid=True, kid=True, isc=True, kid_subset_size=N, cuda=False,
        feature_extractor_weights_path=inception, cache=False, verbose=False, save_cpu_ram=True)
    m = report["metrics"]
    assert m["fid"] == pytest.approx(expected["frechet_inception_distance"], rel=1e-5)
    assert m["fid_torch_fidelity"] == pytest.approx(m["fid"], rel=1e-6)
    assert m["kernel_inception_distance_mean"] == pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-5)
    assert m["inception_score_mean"] == pytest.approx(expected["inception_score_mean"], rel=1e-5)
    assert m["fid"] > 1  # different sets: a clearly non-zero distance with the recalibrated network
    proto = report["protocol"]
    assert proto["feature_extractor"]["name"] == "inception-v3-compat" and proto["num_images"] == N
    assert proto["reference"]["source"] == "npz" and any("rank-deficient" in w for w in report["warnings"])
    assert proto["inception_score_splits"].startswith("torch-fidelity: 10 equal parts")
    with open(tmp_path / "eval" / "report.json") as f:
        assert json.load(f)["metrics"] == m


@pytest.mark.slow
def test_identical_sets_give_about_zero_and_brighter_sets_more(inception, tmp_path):
    a = smooth_images(N, 0)
    folder = write_folder(tmp_path / "a", a)
    settings = inception_settings(inception, tmp_path / "cache")
    with pytest.warns(UserWarning):
        same = evaluate_fid(str(tmp_path / "e1"), folder, samples=write_npz(tmp_path / "a.npz", a), settings=settings)
        far = evaluate_fid(str(tmp_path / "e2"), folder, samples=write_npz(tmp_path / "b.npz", smooth_images(N, 0, 0.3)),
                           settings=settings)
    assert abs(same["metrics"]["fid"]) < 1e-3 * far["metrics"]["fid"]


def test_precomputed_statistics_reference(classifier, tmp_path):
    """ADM-style reference: mu/sigma (stored float32 here) are read in float64; arr_0 serves KID."""
    fake, real = smooth_images(40, 0, size=28), smooth_images(40, 1, brightness=0.2, size=28)
    clf = ImageClassifier.from_pretrained(classifier).eval()

    def feats(x):
        with torch.no_grad():
            return clf.features(x.float().mean(1, keepdim=True) / 127.5 - 1).double().numpy()

    fr = feats(real)
    ref = write_npz(tmp_path / "ref.npz", real, mu=fr.mean(0).astype(np.float32),
                    sigma=np.cov(fr, rowvar=False).astype(np.float32))
    settings = MeasureSettings(metrics=("fid", "kid"), extractor=ExtractorSpec(FASHION_MNIST, classifier),
                               cache_root=str(tmp_path / "cache"), kid_subset_size=20)
    with pytest.warns(UserWarning):
        report = evaluate_fid(str(tmp_path / "e"), ref, samples=write_folder(tmp_path / "s", fake), settings=settings)
    ff = feats(fake)
    expected = frechet_distance(ff.mean(0), np.cov(ff, rowvar=False), fr.mean(0).astype(np.float32).astype(np.float64),
                                np.cov(fr, rowvar=False).astype(np.float32).astype(np.float64))
    assert report["metrics"]["fid"] == pytest.approx(expected, rel=1e-4)
    assert report["protocol"]["reference"]["source"] == "statistics"
    assert "kernel_inception_distance_mean" in report["metrics"]


def classifier_settings(classifier, cache, **kw):
    return MeasureSettings(extractor=ExtractorSpec(FASHION_MNIST, classifier), cache_root=str(cache), **kw)


def test_reference_statistics_are_cached_and_invalidated(classifier, tmp_path, monkeypatch):
    from lcgen.eval.feature_store import FeatureStore

    ref = write_folder(tmp_path / "ref", smooth_images(30, 1))
    samples = write_npz(tmp_path / "s.npz", smooth_images(30, 0))
    extracted = []
    original = FeatureStore.extract
    monkeypatch.setattr(FeatureStore, "extract", lambda self, ds, *a, **k: extracted.append(
        (os.path.basename(self.folder), original(self, ds, *a, **k))))
    settings = classifier_settings(classifier, tmp_path / "cache")
    with pytest.warns(UserWarning, match="rank-deficient"):
        first = evaluate_fid(str(tmp_path / "e1"), ref, samples=samples, settings=settings)
    cache_dirs = os.listdir(tmp_path / "cache")
    assert len(cache_dirs) == 1 and [n for _, n in extracted] == [1, 1]
    extracted.clear()
    with pytest.warns(UserWarning):
        again = evaluate_fid(str(tmp_path / "e2"), ref, samples=samples, settings=settings)
    assert [(f, n) for f, n in extracted if n] == [("features", 1)]  # only the new samples; reference cached
    assert again["metrics"]["fid"] == pytest.approx(first["metrics"]["fid"], rel=1e-12)
    # the reference changes on disk: the cache entry is stale and recomputed, not reused
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "ref" / "0003.png")
    with pytest.warns(UserWarning, match="stale features"):
        changed = evaluate_fid(str(tmp_path / "e3"), ref, samples=samples, settings=settings)
    assert changed["metrics"]["fid"] != pytest.approx(first["metrics"]["fid"], rel=1e-6)
    # other feature-extractor weights: another cache entry (the weights are part of the key)
    other = tmp_path / "clf2"
    torch.manual_seed(1)
    ImageClassifier().eval().save_pretrained(other)
    with pytest.warns(UserWarning):
        evaluate_fid(str(tmp_path / "e4"), ref, samples=samples, settings=classifier_settings(str(other),
                                                                                            tmp_path / "cache"))
    assert len(os.listdir(tmp_path / "cache")) == 2


def test_interrupted_evaluation_resumes(classifier, tmp_path, monkeypatch):
    import lcgen.eval.extractors as ex

    samples = write_npz(tmp_path / "s.npz", smooth_images(12, 0))
    ref = write_npz(tmp_path / "r.npz", smooth_images(12, 1))
    settings = classifier_settings(classifier, tmp_path / "cache", shard_size=4)
    real_build, calls = ex.build_extractor, []

    def flaky_build(*a, **k):
        net = real_build(*a, **k)

        def run(x):
            calls.append(len(x))
            if len(calls) == 2:
                raise KeyboardInterrupt("simulated interruption")
            return net(x)
        return run

    monkeypatch.setattr("lcgen.eval.measure.build_extractor", flaky_build)
    with pytest.warns(UserWarning), pytest.raises(KeyboardInterrupt):
        evaluate_fid(str(tmp_path / "e"), ref, samples=samples, settings=settings)
    assert sorted(os.listdir(tmp_path / "e" / "features")) == [".lock", "meta.json", "shard-00000.npz"]
    calls.clear()

    def counting_build(*a, **k):
        net = real_build(*a, **k)
        return lambda x: calls.append(len(x)) or net(x)

    monkeypatch.setattr("lcgen.eval.measure.build_extractor", counting_build)
    with pytest.warns(UserWarning):
        resumed = evaluate_fid(str(tmp_path / "e"), ref, samples=samples, settings=settings)
    assert sum(calls) == 8 + 12  # samples 4..11, then the whole reference
    monkeypatch.setattr("lcgen.eval.measure.build_extractor", real_build)
    with pytest.warns(UserWarning):
        clean = evaluate_fid(str(tmp_path / "clean"), ref, samples=samples,
                             settings=classifier_settings(classifier, tmp_path / "cache2", shard_size=4))
    assert resumed["metrics"]["fid"] == pytest.approx(clean["metrics"]["fid"], rel=1e-9)


def test_tensor_samples_need_their_range_and_equal_the_npz_evaluation(classifier, tmp_path):
    images = smooth_images(12, 0, size=28)
    ref = write_npz(tmp_path / "r.npz", smooth_images(12, 1, size=28))
    settings = classifier_settings(classifier, tmp_path / "cache")
    with pytest.raises(ValueError, match="value_range"):
        evaluate_fid(str(tmp_path / "bad"), ref, samples=images.float() / 255, settings=settings)
    with pytest.raises(ValueError, match="outside the declared"):
        evaluate_fid(str(tmp_path / "bad"), ref, samples=images.float() / 127.5, value_range=(0, 1), settings=settings)
    assert not os.path.exists(tmp_path / "bad")
    with pytest.warns(UserWarning):
        from_tensor = evaluate_fid(str(tmp_path / "t"), ref, samples=images.float() / 127.5 - 1, value_range=(-1, 1),
                                   settings=settings)
        from_npz = evaluate_fid(str(tmp_path / "n"), ref, samples=write_npz(tmp_path / "s.npz", images),
                                settings=settings)
    assert from_tensor["metrics"]["fid"] == pytest.approx(from_npz["metrics"]["fid"], rel=1e-9)
    assert from_tensor["protocol"]["samples"] == "tensor"


def test_pipeline_evaluation_records_the_protocol(classifier, tmp_path):
    pipe = tmp_path / "pipe"
    tiny_pipeline("gpt").save_pretrained(pipe)
    ref = write_npz(tmp_path / "r.npz", smooth_images(12, 1, size=28))
    with pytest.warns(UserWarning, match="rank-deficient"):
        report = evaluate_fid(str(tmp_path / "e"), ref, pipeline=str(pipe), num_samples=6, class_balanced=True,
                              settings=classifier_settings(classifier, tmp_path / "cache"), npz=True,
                              guidance_scale=1.5, seed=3)
    p = report["protocol"]
    assert p["num_samples"] == 6 and p["seed"] == 3 and p["labels"].startswith("class-balanced")
    assert p["sampling"]["guidance_scale"] == 1.5 and "temperature" in p["sampling"]
    assert sorted(f for f in os.listdir(tmp_path / "e" / "samples") if f.endswith(".png"))[-1] == "000005.png"
    assert np.load(tmp_path / "e" / "samples" / "samples.npz")["arr_0"].shape == (6, 28, 28, 3)
    with pytest.raises(ValueError, match="drawn otherwise.*seed: 3 -> 4"):  # the same folder, another seed
        evaluate_fid(str(tmp_path / "e"), ref, pipeline=str(pipe), num_samples=6,
                     settings=classifier_settings(classifier, tmp_path / "cache"), seed=4, class_balanced=True,
                     guidance_scale=1.5)


def test_missing_inception_weights_offline_fail_before_sampling(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    pipe = tmp_path / "pipe"
    tiny_pipeline("gpt").save_pretrained(pipe)
    with pytest.raises(ValueError, match="Inception weights are not available.*--inception-weights"):
        evaluate_fid(str(tmp_path / "e"), "fashion-mnist-test", pipeline=str(pipe), num_samples=4)
    assert not os.path.exists(tmp_path / "e")
    with pytest.raises(ValueError, match="does not exist"):
        MeasureSettings(extractor=ExtractorSpec(weights_path=str(tmp_path / "nope.pth"))).check()


@pytest.mark.parametrize("case,match", [
    ("metric", "metrics must be"),
    ("both", "exactly one of"),
    ("no-count", "num_samples must be > 0"),
    ("not-pipeline", "not a saved lcgen pipeline"),
    ("kid-on-stats", "KID, precision/recall and class_fid need reference images"),
    ("dims", "cannot be compared"),
    ("mixed", "mixed sizes"),
    ("float-npz", "expected uint8"),
    ("missing-ref", "does not exist"),
])
def test_bad_inputs_fail_before_work(classifier, tmp_path, case, match):
    samples = write_npz(tmp_path / "s.npz", smooth_images(4, 0))
    np.savez(tmp_path / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    np.savez(tmp_path / "stats128.npz", mu=np.zeros(128), sigma=np.eye(128))
    write_folder(tmp_path / "mixed", smooth_images(2, 0, size=32))
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "mixed" / "x.png")
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((2, 8, 8, 3), np.float32))
    settings = classifier_settings(classifier, tmp_path / "cache")
    kwargs = {"output": str(tmp_path / "e"), "reference": samples, "samples": samples, "settings": settings}
    if case == "metric":
        kwargs["settings"] = classifier_settings(classifier, tmp_path / "cache", metrics=("fid", "ppl"))
    elif case == "both":
        kwargs["pipeline"] = str(tmp_path)
    elif case in ("no-count", "not-pipeline"):
        kwargs.update(samples=None, pipeline=str(tmp_path), num_samples=None if case == "no-count" else 4)
    elif case == "kid-on-stats":
        kwargs.update(reference=str(tmp_path / "stats128.npz"),
                      settings=classifier_settings(classifier, tmp_path / "cache", metrics=("kid",)))
    elif case == "dims":
        kwargs["reference"] = str(tmp_path / "stats.npz")
    elif case == "mixed":
        kwargs["samples"] = str(tmp_path / "mixed")
    elif case == "float-npz":
        kwargs["samples"] = str(tmp_path / "float.npz")
    elif case == "missing-ref":
        kwargs["reference"] = str(tmp_path / "none.npz")
    with pytest.raises(FileNotFoundError if case == "missing-ref" else ValueError, match=match):
        evaluate_fid(**kwargs)
    assert not os.path.exists(tmp_path / "e")  # nothing written


def test_reference_of_another_resolution_is_named_in_the_report(classifier, tmp_path):
    samples = write_npz(tmp_path / "s.npz", smooth_images(12, 0, size=32))
    ref = write_npz(tmp_path / "r.npz", smooth_images(12, 1, size=28))
    with pytest.warns(UserWarning, match="samples are 32x32 but the reference images 28x28"):
        report = evaluate_fid(str(tmp_path / "e"), ref, samples=samples,
                              settings=classifier_settings(classifier, tmp_path / "cache"))
    assert any("32x32 but the reference images 28x28" in w for w in report["warnings"])
    same = write_npz(tmp_path / "r32.npz", smooth_images(12, 1, size=32))
    with pytest.warns(UserWarning):  # rank-deficient only
        report = evaluate_fid(str(tmp_path / "e2"), same, samples=samples,
                              settings=classifier_settings(classifier, tmp_path / "cache"))
    assert not any("reference images" in w for w in report["warnings"])


def adm_spatial_features(weights, images_u8):
    """ADM's sFID features computed another way: the first 7 channels of torch-fidelity's whole
    Mixed_6d output (its 1x1 branch comes first in the block's concatenation), channels-last."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)
    grabbed = []
    model.Mixed_6d.register_forward_hook(lambda m, a, out: grabbed.append(out[:, :7].permute(0, 2, 3, 1)))
    with torch.no_grad():
        model(images_u8)
    x = torch.cat(grabbed)
    assert x.shape[1:] == (17, 17, 7)
    return x.reshape(len(x), -1).double().numpy()


@pytest.mark.slow
def test_sfid_is_adm_spatial_frechet_and_uses_the_npz_mu_s(inception, tmp_path):
    a, b = smooth_images(N, 0), smooth_images(N, 1, brightness=0.3)
    settings = inception_settings(inception, tmp_path / "cache", ("fid", "sfid"))
    write_folder(tmp_path / "a", a)
    write_folder(tmp_path / "b", b)
    report = evaluate_fid(str(tmp_path / "eval"), str(tmp_path / "b"), samples=str(tmp_path / "a"), settings=settings)
    fa, fb = adm_spatial_features(inception, a), adm_spatial_features(inception, b)
    expected = frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    assert report["metrics"]["sfid"] == pytest.approx(expected, rel=1e-4)
    assert report["metrics"]["sfid"] > 0 and "Mixed_6d.branch1x1" in report["protocol"]["sfid"]
    # an ADM-style reference npz: its mu_s / sigma_s are what sFID compares with
    npz = tmp_path / "ref.npz"
    ref_pool = report_stats(tmp_path / "cache", "2048")
    np.savez(npz, mu=ref_pool[0], sigma=ref_pool[1], mu_s=fb.mean(0), sigma_s=np.cov(fb, rowvar=False))
    again = evaluate_fid(str(tmp_path / "eval2"), str(npz), samples=str(tmp_path / "a"), settings=settings)
    assert again["metrics"]["sfid"] == pytest.approx(expected, rel=1e-4)
    assert again["metrics"]["fid"] == pytest.approx(report["metrics"]["fid"], rel=1e-6)
    np.savez(tmp_path / "no-spatial.npz", mu=ref_pool[0], sigma=ref_pool[1])
    with pytest.raises(ValueError, match="no mu_s/sigma_s"):
        evaluate_fid(str(tmp_path / "eval3"), str(tmp_path / "no-spatial.npz"), samples=str(tmp_path / "a"),
                     settings=settings)
    assert not (tmp_path / "eval3").exists()


def report_stats(cache, layer):
    """The reference's cached statistics of `layer` (the only entry of a fresh cache)."""
    (path,) = cache.glob(f"*/stats-{layer}.npz")
    with np.load(path) as z:
        return z["mu"], z["sigma"]


def test_sfid_needs_inception(classifier, tmp_path):
    with pytest.raises(ValueError, match="sfid needs Inception"):
        MeasureSettings(metrics=("sfid",), extractor=ExtractorSpec(FASHION_MNIST, classifier)).check()
