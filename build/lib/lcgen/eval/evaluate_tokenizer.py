"""Reconstruction evaluation of a tokenizer over a whole split (`lcgen evaluate-tokenizer`).

Metrics, per image then averaged, on reconstructions clamped to [-1, 1] and compared in [0, 1]:
l1, PSNR (peak 1, RGB / gray), SSIM (Gaussian 11 / 1.5), LPIPS-VGG (inputs in [-1, 1]); codebook
utilisation and perplexity over every token of the split. Writes `metrics.json`,
`reconstructions.png` (originals on odd rows, reconstructions below) and `code_usage.png`
(code frequencies sorted, log scale).
"""
from __future__ import annotations

import json
import logging
import os
import time

import torch
from torch.utils.data import DataLoader
from torchvision.utils import save_image
from tqdm.auto import tqdm

from lcgen.data import build_dataset, collate_skipping_bad
from lcgen.tokenizer import VQTokenizer
from lcgen.training.grids import reconstruction_grid
from .metrics import CodebookUsage, l1_error, psnr, ssim
from .metrics.perceptual import load_lpips, lpips_distance

logger = logging.getLogger(__name__)


def save_usage_plot(counts: torch.Tensor, path: str, title: str):
    """Sorted code frequencies (log scale) of the pooled counts (K,)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    freq = counts.double() / counts.sum().clamp_min(1)
    freq = freq.sort(descending=True).values.cpu().numpy()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    ax.plot(range(1, len(freq) + 1), freq, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("code rank")
    ax.set_ylabel("frequency")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@torch.no_grad()
def evaluate_tokenizer(model, dataset, output_dir: str, batch_size: int = 256, lpips_model=None,
                       grid_images: int = 16, device: str | torch.device = "cpu") -> dict:
    """Evaluate `model` (a VQTokenizer) on every image of `dataset`; write the report to output_dir."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir {output_dir!r} exists and is not a directory")
    model = model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_skipping_bad)
    usage = CodebookUsage.for_quantizer(model.quantizer)
    sums = {"l1": 0.0, "psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
    n, skipped, start = 0, 0, time.time()
    grid_x, grid_y = [], []
    for batch in tqdm(loader, desc="evaluating", leave=False):
        skipped += int(batch["num_skipped"])
        x = batch["pixel_values"].to(device)
        if x.numel() == 0:
            continue
        enc = model.encode(x)
        y = model.decode(enc.quantized).float().clamp(-1, 1)
        usage.update(enc.indices)
        x01, y01 = (x + 1) / 2, (y + 1) / 2
        sums["l1"] += float(l1_error(x01, y01).sum())
        sums["psnr"] += float(psnr(x01, y01).sum())
        sums["ssim"] += float(ssim(x01, y01).sum())
        if lpips_model is not None:
            sums["lpips"] += float(lpips_distance(lpips_model.to(device), x, y).sum())
        n += len(x)
        if sum(len(g) for g in grid_x) < grid_images:
            grid_x.append(x.cpu())
            grid_y.append(y.cpu())
    if n == 0:
        raise ValueError("no decodable image in the dataset")
    summary = usage.summary()
    metrics = {k: v / n for k, v in sums.items() if k != "lpips" or lpips_model is not None}
    metrics.update({"utilisation": summary["utilisation"], "perplexity": summary["perplexity"], "images": n,
                    "skipped_images": skipped, "tokens": summary["tokens"], "codebook_size": summary["codebook_size"],
                    "quantizer": model.config.quantizer_kind, "seconds": round(time.time() - start, 1),
                    "conventions": "pixels in [0,1]; PSNR peak 1 per image; SSIM gaussian 11/1.5 valid; "
                                   "LPIPS vgg on [-1,1]; reconstructions clamped"})
    if "per_chunk_utilisation" in summary:
        metrics["per_chunk_utilisation_min"] = min(summary["per_chunk_utilisation"])
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    gx, gy = torch.cat(grid_x)[:grid_images], torch.cat(grid_y)[:grid_images]
    save_image(reconstruction_grid(gx, gy), os.path.join(output_dir, "reconstructions.png"))
    save_usage_plot(usage.counts.sum(0) if usage.shared_codebook else usage.counts.flatten(),
                    os.path.join(output_dir, "code_usage.png"),
                    f"{model.config.quantizer_kind}, K={usage.codebook_size}: utilisation {summary['utilisation']:.1%}")
    return metrics


def run(model_dir: str, dataset: str = "fashion-mnist", split: str = "test", output_dir: str | None = None,
        batch_size: int = 256, resolution: int | None = None, data_dir: str | None = None,
        max_samples: int | None = None, lpips: str = "auto", lpips_vgg_weights: str | None = None,
        device: str = "cpu") -> dict:
    """CLI body: load the tokenizer and the split, evaluate, return the metrics."""
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ValueError(f"{model_dir!r} is not a saved VQTokenizer (no config.json); pass <run>/model")
    if lpips not in ("auto", "on", "off", "random"):
        raise ValueError(f"lpips must be auto, on, off or random, got {lpips!r}")
    model = VQTokenizer.from_pretrained(model_dir)
    ds = build_dataset(dataset, split, resolution=resolution, channels=model.config.in_channels,
                       data_dir=data_dir, max_samples=max_samples)
    lpips_model = None
    if lpips != "off":
        try:
            lpips_model = load_lpips(lpips_vgg_weights, random_trunk=(lpips == "random"))
        except ValueError:
            if lpips == "on":
                raise
            logger.warning("LPIPS skipped: VGG16 weights unavailable offline (pass --lpips-vgg-weights FILE)")
    out = output_dir or os.path.join(os.path.dirname(os.path.abspath(model_dir)), "eval")
    return evaluate_tokenizer(model, ds, out, batch_size, lpips_model, device=device)
