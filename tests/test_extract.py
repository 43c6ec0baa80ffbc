"""Token extraction: shards hold exactly what the tokenizer computes (both views), statistics are
right, an interrupted extraction resumes without redoing finished shards, and the dataset reader
draws views reproducibly."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_tokenizer

import lcgen.priors.extract as extract_module
from lcgen.data import build_dataset
from lcgen.priors.extract import extract
from lcgen.priors.shards import TokenShardDataset, read_meta, shard_name


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "model"
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def test_shards_match_the_tokenizer(tok_dir, tmp_path):
    meta = extract(tok_dir, "fashion-mnist", str(tmp_path), max_samples=70, shard_size=32, batch_size=16,
                   flip_view=True, latent_dtype="float32")
    assert meta["complete"] and meta["num_shards"] == 3 and meta["num_images"] == 70
    assert meta["index_shape"] == [7, 7, 4] and meta["latent_shape"] == [16, 7, 7] and meta["tokens_per_position"] == 4
    tok = tiny_tokenizer().from_pretrained(tok_dir).eval()
    ds = build_dataset("fashion-mnist", "train", channels=1, max_samples=70)
    images = torch.stack([ds[i]["pixel_values"] for i in range(70)])
    with torch.no_grad():
        enc, flipped = tok.encode(images), tok.encode(torch.flip(images, dims=[-1]))
    shards = [load_file(os.path.join(tmp_path, shard_name(k))) for k in range(3)]
    lat = torch.cat([s["latents"] for s in shards])
    idx = torch.cat([s["indices"] for s in shards])
    torch.testing.assert_close(lat[:, 0], enc.latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lat[:, 1], flipped.latents, rtol=1e-4, atol=1e-5)
    assert torch.equal(idx[:, 0].long(), enc.indices) and torch.equal(idx[:, 1].long(), flipped.indices)
    assert torch.equal(torch.cat([s["labels"] for s in shards]), torch.tensor([ds[i]["label"] for i in range(70)]))
    both = torch.stack([enc.latents, flipped.latents]).double()
    assert abs(meta["latent_mean"] - both.mean().item()) < 1e-6
    assert abs(meta["latent_std"] - both.std(unbiased=False).item()) < 1e-5


def test_interrupted_extraction_resumes(tok_dir, tmp_path, monkeypatch):
    clean = extract(tok_dir, "fashion-mnist", str(tmp_path / "clean"), max_samples=50, shard_size=20, batch_size=10)
    real_write, calls = extract_module._write_shard, []

    def failing_write(out, k, tensors, metadata):
        if k == 1:
            raise KeyboardInterrupt  # interrupted while shard 1 was being written
        real_write(out, k, tensors, metadata)

    monkeypatch.setattr(extract_module, "_write_shard", failing_write)
    with pytest.raises(KeyboardInterrupt):
        extract(tok_dir, "fashion-mnist", str(tmp_path / "run"), max_samples=50, shard_size=20, batch_size=10)
    with pytest.raises(ValueError, match="incomplete"):
        read_meta(str(tmp_path / "run"))
    monkeypatch.setattr(extract_module, "_write_shard", real_write)
    real_encode = extract_module._encode_views
    monkeypatch.setattr(extract_module, "_encode_views", lambda *a: calls.append(a[1].shape[0]) or real_encode(*a))
    meta = extract(tok_dir, "fashion-mnist", str(tmp_path / "run"), max_samples=50, shard_size=20, batch_size=10)
    assert sum(calls) == 30  # shards 1 and 2 only: shard 0 (20 images) was not encoded again
    for k in range(3):
        a, b = load_file(tmp_path / "clean" / shard_name(k)), load_file(tmp_path / "run" / shard_name(k))
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert meta["latent_mean"] == clean["latent_mean"] and meta["complete"]


def test_rerun_with_other_arguments_is_refused(tok_dir, tmp_path):
    extract(tok_dir, "fashion-mnist", str(tmp_path), max_samples=20, shard_size=20)
    with pytest.raises(ValueError, match="other arguments"):
        extract(tok_dir, "fashion-mnist", str(tmp_path), max_samples=20, shard_size=10)


def test_a_retrained_tokenizer_at_the_same_path_does_not_reuse_the_shards(tmp_path):
    # the demo retrains its tokenizer into the same folder: the old shards are another tokenizer's
    path = str(tmp_path / "tok")
    tiny_tokenizer().save_pretrained(path)
    extract(path, "fashion-mnist", str(tmp_path / "shards"), max_samples=20, shard_size=20)
    retrained = tiny_tokenizer()
    with torch.no_grad():
        next(retrained.parameters()).add_(0.01)
    retrained.save_pretrained(path)  # new weights, same path
    with pytest.raises(ValueError, match="tokenizer_weights"):
        extract(path, "fashion-mnist", str(tmp_path / "shards"), max_samples=20, shard_size=20)


@pytest.mark.parametrize("kwargs,match", [({"store": ["codes"]}, "store"), ({"latent_dtype": "int8"}, "latent_dtype"),
                                          ({"shard_size": 0}, "shard_size"), ({"tokenizer": "/nonexistent"}, "tokenizer")])
def test_bad_arguments_before_any_write(tok_dir, tmp_path, kwargs, match):
    args = {"tokenizer": tok_dir, "dataset": "fashion-mnist", "output_dir": str(tmp_path / "out"), **kwargs}
    with pytest.raises(ValueError, match=match):
        extract(**args)
    assert not (tmp_path / "out").exists()


def test_dataset_views_are_seeded_and_both_used(tok_dir, tmp_path):
    extract(tok_dir, "fashion-mnist", str(tmp_path), max_samples=40, shard_size=40, flip_view=True)
    ds = TokenShardDataset(str(tmp_path), "indices", seed=3)
    data = load_file(tmp_path / shard_name(0))["indices"]
    views = []
    for i in range(40):
        item = ds[i]
        matches = [v for v in range(2) if torch.equal(item["indices"], data[i, v].long())]
        assert matches
        views.append(matches[0])
    assert 5 < sum(views) < 35  # both views drawn
    again = TokenShardDataset(str(tmp_path), "indices", seed=3)
    assert all(torch.equal(again[i]["indices"], ds[i]["indices"]) for i in range(40))
    with pytest.raises(ValueError, match="was extracted without"):
        extract(tok_dir, "fashion-mnist", str(tmp_path / "idx-only"), max_samples=10, store=["indices"])
        TokenShardDataset(str(tmp_path / "idx-only"), "latents")
    assert json.load(open(tmp_path / "extraction.json"))["views"] == 2
