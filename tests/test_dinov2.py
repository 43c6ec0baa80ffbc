"""FD-DINOv2 with local weights: a synthetic checkpoint in the official dinov2 layout, loaded through
lcgen, gives the features of an independent forward written here from the official network's
definition (fused qkv, layer scale, bicubic position-embedding resize by scale factor (n + 0.1) / M,
CLS after the final norm) behind torch-fidelity's own preprocessing; the transformers-folder route
gives the same features; the evaluation runs end to end and refuses what DINOv2 cannot do."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from test_fid_evaluation import smooth_images, write_npz
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

import lcgen.eval.dinov2 as dinov2
from lcgen.eval.extractors import ExtractorSpec, build_extractor
from lcgen.eval.fid import frechet_distance
from lcgen.eval.generation_fid import evaluate_fid
from lcgen.eval.measure import MeasureSettings

WIDTH, DEPTH, HEADS = 32, 2, 2


def official_state(swiglu: bool, seed: int = 0) -> dict:
    """Random weights under facebookresearch/dinov2's key names and shapes (37 x 37 position grid)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    hidden = (int(WIDTH * 4 * 2 / 3) + 7) // 8 * 8 if swiglu else WIDTH * 4
    s = {"cls_token": r(1, 1, WIDTH), "pos_embed": r(1, 1 + 37 * 37, WIDTH), "mask_token": r(1, WIDTH),
         "patch_embed.proj.weight": r(WIDTH, 3, 14, 14, scale=0.05), "patch_embed.proj.bias": r(WIDTH),
         "norm.weight": 1 + r(WIDTH), "norm.bias": r(WIDTH)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        s.update({b + "norm1.weight": 1 + r(WIDTH), b + "norm1.bias": r(WIDTH), b + "norm2.weight": 1 + r(WIDTH),
                  b + "norm2.bias": r(WIDTH), b + "attn.qkv.weight": r(3 * WIDTH, WIDTH), b + "attn.qkv.bias": r(3 * WIDTH),
                  b + "attn.proj.weight": r(WIDTH, WIDTH), b + "attn.proj.bias": r(WIDTH),
                  b + "ls1.gamma": 1 + r(WIDTH), b + "ls2.gamma": 1 + r(WIDTH)})
        if swiglu:
            s.update({b + "mlp.w12.weight": r(2 * hidden, WIDTH), b + "mlp.w12.bias": r(2 * hidden),
                      b + "mlp.w3.weight": r(WIDTH, hidden), b + "mlp.w3.bias": r(WIDTH)})
        else:
            s.update({b + "mlp.fc1.weight": r(hidden, WIDTH), b + "mlp.fc1.bias": r(hidden),
                      b + "mlp.fc2.weight": r(WIDTH, hidden), b + "mlp.fc2.bias": r(WIDTH)})
    return s


def reference_features(s: dict, u8: torch.Tensor, swiglu: bool) -> torch.Tensor:
    """The official forward, written out: torch-fidelity's resize and normalisation, then the ViT."""
    x = interpolate_bilinear_2d_like_tensorflow1x(u8.float(), size=(224, 224), align_corners=False)
    x = torchvision.transforms.functional.normalize(x, [255 * m for m in (0.485, 0.456, 0.406)],
                                                    [255 * v for v in (0.229, 0.224, 0.225)])
    t = F.conv2d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=14).flatten(2).transpose(1, 2)
    grid = s["pos_embed"][:, 1:].reshape(1, 37, 37, WIDTH).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic", antialias=False)
    pos = torch.cat([s["pos_embed"][:, :1], grid.permute(0, 2, 3, 1).reshape(1, 256, WIDTH)], 1)
    t = torch.cat([s["cls_token"].expand(len(t), -1, -1), t], 1) + pos
    for i in range(DEPTH):
        b = f"blocks.{i}."
        h = F.layer_norm(t, (WIDTH,), s[b + "norm1.weight"], s[b + "norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"]).reshape(
            len(t), -1, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / (WIDTH // HEADS) ** 0.5, -1) @ v
        t = t + s[b + "ls1.gamma"] * F.linear(a.transpose(1, 2).reshape(t.shape), s[b + "attn.proj.weight"],
                                              s[b + "attn.proj.bias"])
        h = F.layer_norm(t, (WIDTH,), s[b + "norm2.weight"], s[b + "norm2.bias"], eps=1e-6)
        if swiglu:
            x1, x2 = F.linear(h, s[b + "mlp.w12.weight"], s[b + "mlp.w12.bias"]).chunk(2, -1)
            h = F.linear(F.silu(x1) * x2, s[b + "mlp.w3.weight"], s[b + "mlp.w3.bias"])
        else:
            h = F.linear(F.gelu(F.linear(h, s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"])), s[b + "mlp.fc2.weight"],
                         s[b + "mlp.fc2.bias"])
        t = t + s[b + "ls2.gamma"] * h
    return F.layer_norm(t, (WIDTH,), s["norm.weight"], s["norm.bias"], eps=1e-6)[:, 0]


@pytest.fixture
def tiny_archs(monkeypatch):
    """The dinov2-vit-s-14 and -g-14 names at a test size (their MLP kinds kept: GELU and SwiGLU)."""
    monkeypatch.setitem(dinov2.ARCHS, "dinov2-vit-s-14", (WIDTH, DEPTH, HEADS, False))
    monkeypatch.setitem(dinov2.ARCHS, "dinov2-vit-g-14", (WIDTH, DEPTH, HEADS, True))


@pytest.mark.parametrize("name,swiglu", [("dinov2-vit-s-14", False), ("dinov2-vit-g-14", True)])
def test_official_checkpoint_gives_the_official_forward(tiny_archs, tmp_path, name, swiglu):
    state = official_state(swiglu)
    torch.save(state, tmp_path / "w.pth")
    extractor = build_extractor(ExtractorSpec(name, str(tmp_path / "w.pth")).resolve(), ["dinov2"])
    u8 = torch.randint(0, 256, (3, 3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, expected = extractor(u8)[0], reference_features(state, u8, swiglu)
    assert ours.shape == (3, WIDTH)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    # a transformers folder of the same network: the same features
    extractor.model.model.save_pretrained(tmp_path / "hf")
    folder = build_extractor(ExtractorSpec(name, str(tmp_path / "hf")).resolve(), ["dinov2"])
    with torch.no_grad():
        torch.testing.assert_close(folder(u8)[0], ours, rtol=0, atol=0)


def test_fd_dinov2_end_to_end(tiny_archs, tmp_path):
    torch.save(official_state(False), tmp_path / "w.pth")
    fake, real = smooth_images(8, 0), smooth_images(8, 1, brightness=0.1)
    settings = MeasureSettings(metrics=("fid", "kid"), extractor=ExtractorSpec("dinov2-vit-s-14", str(tmp_path / "w.pth")),
                               cache_root=str(tmp_path / "cache"), kid_subset_size=4)
    with pytest.warns(UserWarning, match="rank-deficient"):
        report = evaluate_fid(str(tmp_path / "e"), write_npz(tmp_path / "r.npz", real),
                              samples=write_npz(tmp_path / "s.npz", fake), settings=settings)
    state = official_state(False)
    with torch.no_grad():
        a, b = reference_features(state, fake, False).double().numpy(), reference_features(state, real, False).double().numpy()
    expected = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert report["metrics"]["fid"] == pytest.approx(expected, rel=1e-3)
    assert report["protocol"]["feature_extractor"]["layers"] == ["dinov2"]
    assert "224x224" in report["protocol"]["inception_resize"]


@pytest.mark.parametrize("case,match", [
    ("no-weights", "needs --feature-extractor-weights"),
    ("missing-file", "needs --feature-extractor-weights"),
    ("wrong-checkpoint", "is not the official dinov2-vit-s-14 checkpoint"),
    ("inception-score", "needs class logits"),
    ("sfid", "sfid needs Inception"),
])
def test_dinov2_bad_inputs_fail_before_work(tiny_archs, tmp_path, case, match):
    torch.save(official_state(False), tmp_path / "w.pth")
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1)}, tmp_path / "inception.pth")
    weights = {"no-weights": None, "missing-file": str(tmp_path / "none.pth"),
               "wrong-checkpoint": str(tmp_path / "inception.pth")}.get(case, str(tmp_path / "w.pth"))
    metrics = {"inception-score": ("fid", "isc"), "sfid": ("sfid",)}.get(case, ("fid",))
    samples = write_npz(tmp_path / "s.npz", smooth_images(4, 0))
    with pytest.raises(ValueError, match=match):
        settings = MeasureSettings(metrics=metrics, extractor=ExtractorSpec("dinov2-vit-s-14", weights),
                                   cache_root=str(tmp_path / "cache"))
        evaluate_fid(str(tmp_path / "e"), samples, samples=samples, settings=settings)
    assert not os.path.exists(tmp_path / "e") and not os.path.exists(tmp_path / "cache")
