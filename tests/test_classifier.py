"""The judge (`lcgen.eval.classifier`): bad settings refused before work; bf16-autocast training on real
Fashion-MNIST saves an ordinary fp32 model that loads and beats chance by far."""
import os

import pytest
import torch

from lcgen.data.fashion_mnist import debian_files_present
from lcgen.eval.classifier import ImageClassifier, bf16_is_fast, predict, train_classifier


@pytest.mark.parametrize("kwargs, match", [(dict(mixed_precision="fp16"), "mixed_precision"),
                                           (dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size")])
def test_bad_settings_fail_before_work(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_classifier(str(tmp_path / "clf"), **kwargs)
    assert not (tmp_path / "clf").exists()


@pytest.mark.skipif(not debian_files_present(), reason="Debian dataset-fashion-mnist not installed")
def test_bf16_training_saves_an_fp32_model_that_judges(tmp_path):
    metrics = train_classifier(str(tmp_path / "clf"), epochs=1, max_samples=3000, mixed_precision="bf16")
    assert metrics["mixed_precision"] == "bf16" and metrics["test_accuracy"] > 0.5  # chance is 0.1
    model = ImageClassifier.from_pretrained(str(tmp_path / "clf"))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    from lcgen.data import build_dataset

    test = build_dataset("fashion-mnist", "test", channels=1, max_samples=500)
    x = torch.stack([test[i]["pixel_values"] for i in range(500)])
    y = torch.tensor([test[i]["label"] for i in range(500)])
    assert (predict(model, x) == y).float().mean() > 0.5
    assert os.path.isfile(tmp_path / "clf" / "metrics.json")


@pytest.mark.skipif(not debian_files_present(), reason="Debian dataset-fashion-mnist not installed")
@pytest.mark.parametrize("fast", [False, True])
def test_auto_precision_takes_bf16_only_where_it_is_fast(tmp_path, monkeypatch, fast):
    """bf16 autocast is 9x slower than fp32 on a CPU without native bf16 (measured, AVX2-only EPYC)."""
    import lcgen.eval.classifier as classifier

    monkeypatch.setattr(classifier, "bf16_is_fast", lambda device_type: fast)
    metrics = train_classifier(str(tmp_path / "clf"), epochs=1, max_samples=256, mixed_precision="auto")
    assert metrics["mixed_precision"] == ("bf16" if fast else "no")
    assert isinstance(bf16_is_fast("cpu"), bool) and bf16_is_fast("cuda")
