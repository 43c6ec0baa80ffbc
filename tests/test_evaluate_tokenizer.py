"""evaluate-tokenizer: metrics over a whole split equal the per-image metrics computed directly,
and the report files are written."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lcgen import cli
from lcgen.data import build_dataset
from lcgen.eval.evaluate_tokenizer import evaluate_tokenizer
from lcgen.eval.metrics import CodebookUsage, psnr, ssim
from lcgen.eval.metrics.perceptual import load_lpips, lpips_distance
from lcgen.tokenizer import VQTokenizer


def _model():
    torch.manual_seed(0)
    return VQTokenizer(backbone="vqvae", in_channels=1, hidden_channels=16, residual_channels=4, embed_dim=16,
                       quantizer_kind="looc", codebook_size=32).eval()


def test_metrics_equal_direct_computation_and_files_written(tmp_path):
    model = _model()
    ds = build_dataset("fashion-mnist", "test", channels=1, max_samples=50)
    lp = load_lpips(random_trunk=True)
    m = evaluate_tokenizer(model, ds, str(tmp_path), batch_size=16, lpips_model=lp)
    x = torch.stack([ds[i]["pixel_values"] for i in range(50)])
    with torch.no_grad():
        enc = model.encode(x)
        y = model.decode(enc.quantized).clamp(-1, 1)
    usage = CodebookUsage(32, 4)
    usage.update(enc.indices)
    assert m["images"] == 50 and m["tokens"] == 50 * 49
    assert m["psnr"] == pytest.approx(psnr((x + 1) / 2, (y + 1) / 2).mean().item(), rel=1e-6)
    assert m["ssim"] == pytest.approx(ssim((x + 1) / 2, (y + 1) / 2).mean().item(), rel=1e-6)
    assert m["l1"] == pytest.approx(((x - y).abs() / 2).mean().item(), rel=1e-5)
    assert m["lpips"] == pytest.approx(lpips_distance(lp, x, y).mean().item(), rel=1e-4)
    assert m["utilisation"] == pytest.approx(usage.utilisation())
    assert json.loads((tmp_path / "metrics.json").read_text())["images"] == 50
    for png in ("reconstructions.png", "code_usage.png"):
        assert Image.open(tmp_path / png).size[0] > 50


def test_cli_on_saved_model_and_image_folder(tmp_path, capsys):
    model = _model()
    model.save_pretrained(tmp_path / "run" / "model")
    folder = tmp_path / "imgs" / "shirts"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"nope")
    cli.main(["evaluate-tokenizer", str(tmp_path / "run" / "model"), "--dataset", "imagefolder", "--split",
                    "train", "--data-dir", str(tmp_path / "imgs"), "--lpips", "off"])
    report = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert report["images"] == 3 and report["skipped_images"] == 1 and "lpips" not in report


def test_cli_rejects_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(SystemExit, match="not a saved VQTokenizer"):
        cli.main(["evaluate-tokenizer", str(tmp_path)])
