"""VQGAN-LC codebook initialisation with a tiny randomly initialised CLIP saved by the test."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from lcgen.tokenizer.codebook_init import build_lc_codebook, clip_patch_features, load_clip_vision
from lcgen.tokenizer.kmeans import kmeans
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
    meta = build_lc_codebook(tiny_clip, image_folder, codebook_size=8, output=out, per_class=True, iters=5)
    assert meta["skipped_images"] == "1" and meta["images"] == "12"
    with safe_open(out, framework="pt") as f:
        assert f.get_tensor("codebook").shape == (8, 24)
        assert f.metadata()["per_class"] == "True"
    q = build_quantizer("lc", dim=8, codebook_size=8, init_codebook=out)
    assert q.codebook.frozen.shape == (8, 24)


def test_build_codebook_rejects_bad_requests_before_work(tiny_clip, image_folder, tmp_path):
    with pytest.raises(ValueError, match="safetensors"):
        build_lc_codebook(tiny_clip, image_folder, 8, str(tmp_path / "codebook.pth"))
    with pytest.raises(ValueError, match="divisible"):
        build_lc_codebook(tiny_clip, image_folder, 7, str(tmp_path / "c.safetensors"), per_class=True)
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
