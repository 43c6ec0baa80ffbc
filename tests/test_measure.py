"""Metric functions of the evaluation core: ADM's Inception Score splits against a direct computation,
precision/recall orientation on the installed torch-fidelity, and the version check before work."""
import numpy as np
import pytest
import torch

from lcgen.eval import measure
from lcgen.eval.measure import MeasureSettings, check_torch_fidelity, precision_recall
from lcgen.eval.metrics import inception_score


def adm_inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """guided-diffusion's compute_inception_score, written out over softmax probabilities in numpy."""
    e = np.exp(logits - logits.max(1, keepdims=True))
    preds = e / e.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i:i + split_size]
        kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


@pytest.mark.parametrize("n", [12000, 3000, 10000])
def test_adm_split_rule_matches_a_direct_computation(n):
    logits = torch.randn(n, 50, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * 3
    mean, _ = inception_score(logits)
    assert mean == pytest.approx(adm_inception_score(logits.numpy()), rel=1e-10)


def test_split_rule_changes_the_score_away_from_50000():
    # consecutive 5,000 vs torch-fidelity's 10 shuffled parts (1,200 each at 12,000 samples): differ
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.randn(12000, 1000, generator=torch.Generator().manual_seed(0)) * 3  # ImageNet's 1,000 classes
    adm, _ = inception_score(logits)
    tf = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)["inception_score_mean"]
    assert adm > tf * 1.02  # larger parts estimate p(y) better: measured 32.7 against 31.6
    # at equal consecutive parts the two rules agree
    tf_ordered = isc_features_to_metric(logits[:10000], splits=2, shuffle=False)["inception_score_mean"]
    assert inception_score(logits[:10000])[0] == pytest.approx(tf_ordered, rel=1e-5)


def test_inception_score_limits():
    assert inception_score(torch.zeros(100, 10))[0] == pytest.approx(1.0)  # one uniform p(y|x)
    sharp = torch.full((1000, 10), -50.0)
    sharp[torch.arange(1000), torch.arange(1000) % 10] = 50.0  # certain and balanced over 10 classes
    assert inception_score(sharp)[0] == pytest.approx(10.0, rel=1e-6)
    with pytest.raises(ValueError, match="logits"):
        inception_score(torch.zeros(10))


def test_precision_recall_orientation_on_mode_collapse():
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(1000, 16, generator=g)
    collapsed = reference[:5].repeat(200, 1) + 0.01 * torch.randn(1000, 16, generator=g)
    pr = precision_recall(collapsed, reference)
    assert pr["precision"] > 0.95  # every sample sits on the real manifold ...
    assert pr["recall"] < 0.1  # ... but covers almost none of it


def test_old_torch_fidelity_is_refused_before_any_work(monkeypatch):
    import torch_fidelity

    assert check_torch_fidelity() == torch_fidelity.__version__
    monkeypatch.setattr(torch_fidelity, "__version__", "0.3.0")
    with pytest.raises(ValueError, match="0.4.0"):
        MeasureSettings().check()


def test_is_splits_is_checked_and_named():
    with pytest.raises(ValueError, match="is_splits"):
        MeasureSettings(is_splits="ten").check()
    assert set(measure.IS_SPLITS) == {"adm", "torch-fidelity"}


def test_kid_and_pr_use_a_uniform_subset_of_a_large_reference(tmp_path):
    from types import SimpleNamespace

    from lcgen.eval.extractors import LAYERS
    from lcgen.eval.feature_store import FeatureStore, uniform_subset
    from lcgen.eval.image_inputs import TensorImages

    layers = [LAYERS["inception-v3-compat"]["pool"], LAYERS["inception-v3-compat"]["logits"]]
    g = torch.Generator().manual_seed(0)

    def store(name, n):
        s = FeatureStore(str(tmp_path / name), {"what": name}, n, shard_size=7)
        s.prepare()
        images = TensorImages(torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g))
        s.extract(images, lambda x: (x.float().flatten(1)[:, :8], x.float().flatten(1)[:, :10]), layers, 5,
                  progress=False)
        return s

    samples, ref_store = store("samples", 20), store("reference", 30)
    settings = MeasureSettings(metrics=("kid", "prc"), kid_subset_size=5, reference_subset=12)
    out, notes = measure.compute_metrics(samples, SimpleNamespace(has_statistics=False), ref_store, settings)
    assert out["kid_prc_reference_images"] == 12 and any("12-image uniform subset" in n for n in notes)
    expected = precision_recall(samples.features(layers[0]), ref_store.features(layers[0])[uniform_subset(30, 12)])
    assert out["precision"] == expected["precision"] and out["recall"] == expected["recall"]
    settings.reference_subset = None
    out, notes = measure.compute_metrics(samples, SimpleNamespace(has_statistics=False), ref_store, settings)
    assert out["kid_prc_reference_images"] == 30 and not notes


def test_inception_score_alone_needs_no_reference_features():
    from types import SimpleNamespace

    split = SimpleNamespace(has_statistics=False, images=object(), spec="fashion-mnist-test")
    assert measure.check_reference(split, MeasureSettings(metrics=("isc",))) is False
    assert measure.check_reference(split, MeasureSettings(metrics=("isc", "fid"))) is True
