"""VQGAN-LC codebook initialisation with a tiny randomly initialised CLIP (and judge) saved by the test."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from lcgen.data.fashion_mnist import debian_files_present
from lcgen.tokenizer.codebook_init import build_lc_codebook
from lcgen.tokenizer.kmeans import MiniBatchKMeans, kmeans, kmeans_plus_plus, minibatch_kmeans
from lcgen.tokenizer.patch_encoders import clip_patch_features, load_clip_vision, load_patch_encoder
from lcgen.tokenizer.quantizers import build_quantizer


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    path = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=4, projection_dim=24)
    CLIPVisionModelWithProjection(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    (root / "dog" / "broken.png").write_bytes(b"not an image")
    return str(root)


def test_patch_features_follow_vqgan_lc(tiny_clip):
    model, _ = load_clip_vision(tiny_clip)
    pixels = torch.randn(2, 3, 32, 32)
    feats = clip_patch_features(model, pixels, pool=4)
    assert feats.shape == (2, 4, 24)  # 8x8 patches pooled 4x4 -> 2x2, projection_dim 24
    # independent: every token through post_layernorm + projection, CLS dropped, mean of 4x4 blocks
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=pixels).last_hidden_state
        tok = model.visual_projection(model.vision_model.post_layernorm(hidden))[:, 1:].reshape(2, 8, 8, 24)
    top_left = tok[:, :4, :4].mean(dim=(1, 2))
    bottom_right = tok[:, 4:, 4:].mean(dim=(1, 2))
    assert torch.allclose(feats[:, 0], top_left, atol=1e-5)
    assert torch.allclose(feats[:, 3], bottom_right, atol=1e-5)


def test_build_codebook_per_class_and_load_into_lc(tiny_clip, image_folder, tmp_path):
    out = str(tmp_path / "codebook.safetensors")
    meta = build_lc_codebook(tiny_clip, image_folder, codebook_size=8, output=out, per_class=True, epochs=2)
    assert meta["skipped_images"] == "1" and meta["images"] == "12"
    with safe_open(out, framework="pt") as f:
        assert f.get_tensor("codebook").shape == (8, 24)
        assert f.metadata()["per_class"] == "True"
    q = build_quantizer("lc", dim=8, codebook_size=8, init_codebook=out)
    assert q.codebook.frozen.shape == (8, 24)
    # a K that the classes do not divide: the first K mod C classes take one centre more
    build_lc_codebook(tiny_clip, image_folder, codebook_size=7, output=out, per_class=True, epochs=1)
    with safe_open(out, framework="pt") as f:
        assert f.get_tensor("codebook").shape == (7, 24)


def test_build_codebook_rejects_bad_requests_before_work(tiny_clip, image_folder, tmp_path):
    with pytest.raises(ValueError, match="safetensors"):
        build_lc_codebook(tiny_clip, image_folder, 8, str(tmp_path / "codebook.pth"))
    with pytest.raises(ValueError, match="at least one centre per class"):
        build_lc_codebook(tiny_clip, image_folder, 1, str(tmp_path / "c.safetensors"), per_class=True)
    with pytest.raises(ValueError, match="image folder not found"):
        build_lc_codebook(tiny_clip, str(tmp_path / "nope"), 8, str(tmp_path / "c.safetensors"))
    assert not list(tmp_path.glob("*.safetensors"))


def test_kmeans_recovers_separated_clusters_and_fills_empty_ones():
    torch.manual_seed(0)
    true = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    pts = torch.cat([c + 0.1 * torch.randn(200, 2) for c in true])
    centres = kmeans(pts, 3, iters=20, seed=3)
    matched = torch.cdist(true, centres).min(1).values
    assert (matched < 0.1).all()
    # 5 centres on 3 distinct points duplicated: empty clusters are re-seeded, never NaN
    dup = true.repeat(10, 1)
    centres = kmeans(dup, 5, iters=5)
    assert torch.isfinite(centres).all()
    with pytest.raises(ValueError, match="num_centres"):
        kmeans(pts, 10_000)



def test_kmeans_plus_plus_seeds_one_centre_in_each_far_cluster():
    """D^2 seeding: with three tight clusters 100 apart, the chance of a second pick in an already
    seeded cluster is about (0.1 / 100)^2 -- every cluster gets exactly one centre."""
    true = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    pts = torch.cat([c + 0.1 * torch.randn(50, 2, generator=torch.Generator().manual_seed(i)) for i, c in enumerate(true)])
    for seed in range(5):
        centres = kmeans_plus_plus(pts, 3, torch.Generator().manual_seed(seed))
        assert sorted(torch.cdist(centres, true).argmin(1).tolist()) == [0, 1, 2]
        assert all(any(torch.equal(c, p) for p in pts) for c in centres)  # centres are data points


def test_minibatch_centre_is_the_running_mean_of_its_points():
    """One centre: after any sequence of batches it is exactly the mean of every point fed (Sculley's
    per-centre step 1/count), whatever it was seeded at."""
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 3, generator=g) for n in (7, 1, 12)]
    km = MiniBatchKMeans(1, seed=0)
    km.initialise(torch.full((1, 3), 50.0))
    for b in batches:
        km.partial_fit(b)
    assert torch.allclose(km.centres[0], torch.cat(batches).mean(0), atol=1e-6)
    assert km.counts.tolist() == [20.0]


def test_minibatch_reseeds_a_centre_no_point_reached():
    km = MiniBatchKMeans(2, seed=0)
    km.initialise(torch.tensor([[0.0, 0.0], [1000.0, 1000.0]]))  # the second centre is far from all data
    pts = torch.cat([torch.zeros(10, 2), torch.full((1, 2), 5.0)])
    km.partial_fit(pts)
    assert km.end_epoch() == 1 and km.reseeded == 1
    far = int((km.centres - torch.tensor([0.4545, 0.4545])).abs().sum(1).argmax())  # k-means++ may order them either way
    assert torch.equal(km.centres[far], torch.tensor([5.0, 5.0]))  # re-seeded with the worst-fitted point
    assert torch.allclose(km.centres[1 - far], torch.full((2,), 5 / 11))  # the other: the mean of all 11 points
    km.partial_fit(pts)
    assert km.end_epoch() == 0


def test_minibatch_kmeans_recovers_separated_clusters():
    torch.manual_seed(0)
    true = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    pts = torch.cat([c + 0.1 * torch.randn(300, 2) for c in true])
    centres = minibatch_kmeans(pts, 4, epochs=3, batch_size=100, seed=1).centres
    assert (torch.cdist(true, centres).min(1).values < 0.05).all()
    with pytest.raises(ValueError, match="num_centres"):
        minibatch_kmeans(pts, 5000)


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    from lcgen.eval.classifier import ImageClassifier

    path = tmp_path_factory.mktemp("judge")
    torch.manual_seed(0)
    ImageClassifier(width=4, feature_dim=8).save_pretrained(path)
    return str(path)


def test_classifier_patch_features_are_its_last_conv_map(tiny_judge):
    enc = load_patch_encoder(tiny_judge)  # auto: the folder's config names ImageClassifier
    assert enc.kind == "lcgen-classifier" and enc.dim == 8 and enc.pool == 1
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    feats = enc(x)
    assert feats.shape == (3, 49, 8)
    with torch.no_grad():
        body = enc.model.body  # conv block, pool, conv block, pool, conv block, adaptive pool -> (B, 8, 7, 7)
        want = body[5](body[4](body[3](body[2](body[1](body[0](x))))))
    assert torch.allclose(feats, want.flatten(2).transpose(1, 2), atol=1e-6)
    assert load_patch_encoder(tiny_judge, pool=7)(x).shape == (3, 1, 8)


@pytest.mark.skipif(not debian_files_present(), reason="Debian dataset-fashion-mnist not installed")
def test_codebook_from_the_judge_on_fashion_mnist_per_class_and_global(tiny_judge, tmp_path):
    out = str(tmp_path / "judge.safetensors")
    meta = build_lc_codebook(tiny_judge, None, codebook_size=20, output=out, per_class=True, dataset="fashion-mnist",
                             max_samples=300, epochs=2)
    assert meta["encoder_kind"] == "lcgen-classifier" and meta["images"] == "300"
    assert len(json.loads(meta["classes"])) == 10
    with safe_open(out, framework="pt") as f:
        book = f.get_tensor("codebook")
    assert book.shape == (20, 8) and torch.isfinite(book).all()
    q = build_quantizer("lc", dim=8, codebook_size=20, init_codebook=out)
    assert q.codebook.frozen.shape == (20, 8)
    glob = build_lc_codebook(tiny_judge, None, codebook_size=16, output=str(tmp_path / "g.safetensors"),
                             dataset="fashion-mnist", max_samples=64, epochs=2, batch_size=16)
    assert glob["per_class"] == "False" and glob["classes"] == "[]"
    with pytest.raises(ValueError, match="exactly one of image_folder and dataset"):
        build_lc_codebook(tiny_judge, None, 16, str(tmp_path / "n.safetensors"))
