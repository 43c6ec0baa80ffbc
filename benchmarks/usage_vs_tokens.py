"""Codebook utilisation against the number of tokens counted per code, for one trained tokenizer.

Utilisation is a count of codes hit at least once, so it depends on how many tokens are counted:
VQGAN-LC's 99.9% at K = 100,000 counts 50,000 ImageNet images x 256 tokens (128 per code), while
the Fashion-MNIST training split gives 60,000 x 49 (29 per code at K = 100,000). This prints the
utilisation over growing prefixes of the training split, then over the split again in variants of
each image (1-pixel shifts, background-padded, then the mirror image and its shifts: 10 variants,
294 tokens per code at K = 100,000), counted cumulatively, with the codes hit exactly once beside it.

    python benchmarks/usage_vs_tokens.py runs/vqgan-lc-repro/lc-aligned-100000/model [--variants 10]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lcgen.data import build_dataset, collate_skipping_bad  # noqa: E402
from lcgen.eval.metrics import CodebookUsage  # noqa: E402
from lcgen.tokenizer import VQTokenizer  # noqa: E402

# (mirror, dy, dx): the image, its four 1-pixel shifts, then the same for its mirror image
VARIANTS = [(mirror, dy, dx) for mirror in (False, True) for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))]
PREFIXES = (1 / 24, 1 / 12, 1 / 6, 1 / 3, 2 / 3, 1.0)  # of the split: 2,500 ... 60,000 Fashion-MNIST images


def shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Images moved by (dy, dx) pixels, the uncovered border filled with the background (-1)."""
    out = torch.full_like(images, -1.0)
    h, w = images.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        images[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def usage_row(usage: CodebookUsage, **extra) -> dict:
    """The evaluation's utilisation and perplexity, with tokens per code and the codes hit exactly once."""
    hits = usage.counts.sum(0) if usage.shared_codebook else usage.counts  # what one code's use is
    summary = usage.summary()
    return {**extra, "tokens_per_code": round(int(hits.sum()) / hits.numel(), 2), "utilisation": summary["utilisation"],
            "perplexity": summary["perplexity"], "codes_hit_once": int((hits == 1).sum())}


@torch.no_grad()
def measure(model_dir: str, dataset: str = "fashion-mnist", variants: int = len(VARIANTS),
            max_images: int | None = None, batch_size: int = 1000) -> list[dict]:
    model = VQTokenizer.from_pretrained(model_dir).eval()
    data = build_dataset(dataset, "train", channels=model.config.in_channels, max_samples=max_images)

    def indices(transform):  # (N, H, W[, m]) for the whole split
        return torch.cat([model.encode(transform(b["pixel_values"])).indices
                          for b in DataLoader(data, batch_size=batch_size, collate_fn=collate_skipping_bad)])

    plain = indices(lambda x: x)
    rows = []
    for share in PREFIXES:
        n = max(1, round(share * len(plain)))
        prefix = CodebookUsage.for_quantizer(model.quantizer)
        prefix.update(plain[:n])
        rows.append(usage_row(prefix, images=n, variants=1))
    usage = CodebookUsage.for_quantizer(model.quantizer)  # cumulative over the variants
    usage.update(plain)
    for v, (mirror, dy, dx) in enumerate(VARIANTS[1:variants], start=2):
        usage.update(indices(lambda x, m=mirror, a=dy, b=dx: shifted(x.flip(-1) if m else x, a, b)))
        rows.append(usage_row(usage, images=len(plain), variants=v, last={"mirror": mirror, "dy": dy, "dx": dx}))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--variants", type=int, default=len(VARIANTS), help=f"1 (the split only) to {len(VARIANTS)}")
    p.add_argument("--max-images", type=int, default=None, help="the split's first N images (default: all)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not 1 <= args.variants <= len(VARIANTS):
        p.error(f"--variants must be in [1, {len(VARIANTS)}], got {args.variants}")
    if args.max_images is not None and args.max_images <= 0:
        p.error("--max-images must be positive")
    if not os.path.isfile(os.path.join(args.model_dir, "config.json")):
        p.error(f"{args.model_dir} holds no tokenizer (config.json)")
    rows = measure(args.model_dir, args.dataset, args.variants, args.max_images)
    for r in rows:
        print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
