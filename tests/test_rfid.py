"""rFID of a tokenizer: equal to the Fréchet distance between features of its reconstructions and of
the split, computed by hand; the real statistics are the generation reference's cache entry; the
VQGAN-LC-style protocol is a separate entry and says it is not comparable."""
import os

import numpy as np
import pytest
import torch
from tiny import randomize, tiny_tokenizer

from lcgen.eval.classifier import ImageClassifier
from lcgen.data.fashion_mnist import DEBIAN_DIR, load_fashion_mnist
from lcgen.eval.extractors import FASHION_MNIST, ExtractorSpec
from lcgen.eval.feature_store import uniform_subset
from lcgen.eval.fid import frechet_distance
from lcgen.eval.generation_fid import evaluate_fid
from lcgen.eval.image_inputs import float_to_uint8
from lcgen.eval.measure import MeasureSettings
from lcgen.eval.rfid import evaluate_rfid

N = 40


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rfid")
    torch.manual_seed(0)
    ImageClassifier().eval().save_pretrained(root / "clf")
    tok = tiny_tokenizer()
    randomize(tok, 0.05)
    tok.save_pretrained(root / "tok")
    return root


def settings(root, **kw):
    return MeasureSettings(extractor=ExtractorSpec(FASHION_MNIST, str(root / "clf")), cache_root=str(root / "cache"),
                           shard_size=16, **kw)


def test_rfid_equals_the_frechet_distance_of_reconstructions(setup, tmp_path):
    with pytest.warns(UserWarning, match="rank-deficient"):
        report = evaluate_rfid(str(setup / "tok"), str(tmp_path / "e"), "fashion-mnist", "test", 28, "adm",
                               max_samples=N, settings=settings(setup))
    from lcgen.tokenizer import VQTokenizer

    tok = VQTokenizer.from_pretrained(setup / "tok").eval()
    clf = ImageClassifier.from_pretrained(setup / "clf").eval()
    images, _ = load_fashion_mnist("test", DEBIAN_DIR)
    rows = torch.from_numpy(uniform_subset(len(images), N))  # max_samples: a uniform subset of the split
    x = images[rows, None].float() / 127.5 - 1  # 28 px: ADM's crop at 28 is the identity
    with torch.no_grad():
        recon = float_to_uint8(tok.decode(tok.encode(x).quantized).clamp(-1, 1))
        f_real = clf.features(x).double().numpy()
        f_fake = clf.features(recon.float() / 127.5 - 1).double().numpy()
    expected = frechet_distance(f_fake.mean(0), np.cov(f_fake, rowvar=False), f_real.mean(0),
                                np.cov(f_real, rowvar=False))
    assert report["metrics"]["fid"] == pytest.approx(expected, rel=1e-4)
    assert report["metrics"]["fid"] > 0
    assert report["protocol"]["protocol"] == "adm" and report["protocol"]["comparable_to"].startswith("LlamaGen")
    # the same split as a generation reference reuses the cached real statistics
    np.savez(tmp_path / "s.npz", arr_0=images[rows, :, :, None].expand(-1, -1, -1, 3).numpy())
    with pytest.warns(UserWarning):
        gen = evaluate_fid(str(tmp_path / "g"), "fashion-mnist-28-test", samples=str(tmp_path / "s.npz"),
                           reference_max_samples=N, settings=settings(setup))
    assert gen["reference_cache"] == report["reference_cache"]
    assert abs(gen["metrics"]["fid"]) < 1e-6  # the split against itself


def test_vqgan_lc_protocol_is_separate_and_labelled(setup, tmp_path):
    with pytest.warns(UserWarning):
        adm = evaluate_rfid(str(setup / "tok"), str(tmp_path / "a"), "fashion-mnist", "test", 28, "adm",
                            max_samples=N, settings=settings(setup))
        lc = evaluate_rfid(str(setup / "tok"), str(tmp_path / "b"), "fashion-mnist", "test", 28, "vqgan-lc",
                           max_samples=N, settings=settings(setup))
    assert lc["reference_cache"] != adm["reference_cache"]
    assert "not comparable" in lc["protocol"]["comparable_to"]
    assert lc["protocol"]["reference"]["preprocessing"] == "stretch" and lc["protocol"]["reference"]["resolution"] == 299
    assert np.isfinite(lc["metrics"]["fid"]) and lc["metrics"]["fid"] != pytest.approx(adm["metrics"]["fid"])
    # each protocol's own uint8 rule, named: DiT/LlamaGen's rounding for adm, VQGAN-LC's truncation
    assert adm["protocol"]["uint8"].startswith("round: uint8(clamp(127.5 x + 128")
    assert lc["protocol"]["uint8"].startswith("truncate: ")


@pytest.mark.parametrize("kwargs,match", [
    ({"protocol": "clean"}, "protocol must be"),
    ({"tokenizer": "."}, "not a saved VQTokenizer"),
    ({"metrics": ("fid", "isc")}, "Inception Score"),
    ({"resolution": 0}, "resolution must be"),
    ({"uint8_rule": "nearest"}, "uint8_rule must be"),
])
def test_bad_rfid_arguments(setup, tmp_path, kwargs, match):
    args = {"tokenizer": str(setup / "tok"), "output": str(tmp_path / "e"), "dataset": "fashion-mnist",
            "split": "test", "resolution": 28, "protocol": "adm", "max_samples": N,
            "settings": settings(setup, metrics=kwargs.pop("metrics", ("fid",)))}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate_rfid(**args)
    assert not os.path.exists(tmp_path / "e")
