"""Reproduction table on Fashion-MNIST (VQ-VAE backbone, d = 128): every method trained with the
same budget (steps x batch), then evaluated on the whole test split.

    python benchmarks/reproduce_fashion_mnist.py --steps 200 --batch-size 128 --output runs/repro

Methods: the presets vq-vae-1024x128, cvq-vae, looc-256x4, pq, and at K = 100,000 the VQGAN-LC
quantizer (frozen codebook + projector, D' = 8) against vq / ema / fc. No CLIP weights are
reachable offline, so the LC codebook is k-means over Fashion-MNIST encoder-side features: the
pre-quantisation latents of the trained vq-vae-1024x128 encoder on the training split.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks.results_file import load_results, machine, record  # noqa: E402

from lcgen.data import build_dataset  # noqa: E402
from lcgen.eval.evaluate_tokenizer import run as evaluate  # noqa: E402
from lcgen.tokenizer import VQTokenizer  # noqa: E402
from lcgen.tokenizer.kmeans import kmeans  # noqa: E402
from lcgen.tokenizer.train import parse_config, train  # noqa: E402

BIG_K = 100_000
RUNS = [  # name, preset, overrides
    ("vq-vae-1024x128", "vq-vae-1024x128", []),
    ("cvq-vae", "cvq-vae", []),
    ("looc-256x4", "looc-256x4", []),
    ("pq", "pq", []),
    ("lc-100k", "vq-vae-1024x128", ["--quantizer_kind", "lc", "--codebook_size", str(BIG_K),
                                     "--quantizer_options", "{commitment_weight: 1.0, codebook_weight: 0.33}"]),
    ("vq-100k", "vq-vae-1024x128", ["--codebook_size", str(BIG_K)]),
    ("ema-100k", "vq-vae-1024x128", ["--quantizer_kind", "ema", "--codebook_size", str(BIG_K),
                                      "--quantizer_options", "{commitment_weight: 0.25}"]),
    ("fc-100k", "vq-vae-1024x128", ["--quantizer_kind", "fc", "--codebook_size", str(BIG_K),
                                     "--quantizer_options", "{commitment_weight: 0.25, codebook_weight: 1.0}"]),
]


# LooC paper, Table 1 (Fashion-MNIST, 500 epochs): l1 / SSIM / PSNR; '-' where the paper has no row
PAPER = {"vq-vae-1024x128": (0.0377, 0.9140, 23.93), "cvq-vae": (0.0344, 0.9233, 24.66),
         "looc-256x4": (0.0103, 0.9924, 35.34)}


def markdown_table(results: dict) -> str:
    rows = ["| run | K | l1 | PSNR (dB) | SSIM | utilisation | perplexity | epochs | train s | paper l1 / SSIM / PSNR |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        paper = " / ".join(str(v) for v in PAPER[name]) if name in PAPER else "-"
        rows.append(f"| {name} | {r['codebook_size']:,} | {r['l1']:.4f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                    f"{r['utilisation']:.1%} | {r['perplexity']:.1f} | {r['epochs']:.2f} | {r['train_seconds']:.0f} | "
                    f"{paper} |")
    return "\n".join(rows)


@torch.no_grad()
def encoder_features(model_dir: str, num_points: int, seed: int = 0) -> torch.Tensor:
    """num_points pre-quantisation latent vectors (d = 128) of the training split."""
    model = VQTokenizer.from_pretrained(model_dir).eval()
    ds = build_dataset("fashion-mnist", "train", channels=1)
    g = torch.Generator().manual_seed(seed)
    feats = []
    for i in range(0, len(ds), 1000):
        x = torch.stack([ds[j]["pixel_values"] for j in range(i, min(i + 1000, len(ds)))])
        z = model.encode_latents(x)  # (B, 128, 7, 7)
        feats.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
    feats = torch.cat(feats)
    return feats[torch.randperm(len(feats), generator=g)[:num_points]]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--output", default=os.path.join(REPO_ROOT, "runs", "repro"))
    p.add_argument("--kmeans-points", type=int, default=200_000)
    p.add_argument("--kmeans-iters", type=int, default=3)
    p.add_argument("--only", nargs="*", default=None, help="run only these names")
    p.add_argument("--table", action="store_true", help="print the markdown table of the results so far and exit")
    args = p.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    results = load_results(args.output)
    if args.table:
        print(markdown_table(results))
        return
    for name, preset, overrides in RUNS:
        if args.only and name not in args.only:
            continue
        if name in results:
            print(f"{name}: done already")
            continue
        out = os.path.join(args.output, name)
        extra = []
        if name == "lc-100k":
            codebook = os.path.join(args.output, "fmnist-encoder-kmeans-100k.safetensors")
            if not os.path.isfile(codebook):
                t0 = time.time()
                feats = encoder_features(os.path.join(args.output, "vq-vae-1024x128", "model"), args.kmeans_points)
                centroids = kmeans(feats, BIG_K, iters=args.kmeans_iters, seed=0)
                from safetensors.torch import save_file

                save_file({"codebook": centroids.contiguous()}, codebook,
                          metadata={"source": "k-means of vq-vae-1024x128 encoder latents, Fashion-MNIST train"})
                print(f"k-means codebook: {time.time() - t0:.0f} s")
            extra = ["--init_codebook", codebook]
        cfg = parse_config(["--config", os.path.join(REPO_ROOT, "configs", f"{preset}.yaml"), *overrides, *extra,
                            "--output_dir", out, "--max_train_steps", str(args.steps), "--batch_size",
                            str(args.batch_size), "--checkpointing_steps", str(args.steps), "--report_to", "none"])
        t0 = time.time()
        model_dir = train(cfg)
        train_s = time.time() - t0
        m = evaluate(model_dir, "fashion-mnist", "test", output_dir=os.path.join(out, "eval"), lpips="auto")
        row = {"l1": m["l1"], "psnr": m["psnr"], "ssim": m["ssim"], "lpips": m.get("lpips"),
               "utilisation": m["utilisation"], "perplexity": m["perplexity"],
               "codebook_size": m["codebook_size"], "steps": args.steps, "batch_size": args.batch_size,
               "epochs": args.steps * args.batch_size / 60000, "train_seconds": round(train_s, 1),
               "eval_seconds": m["seconds"], "machine": machine()}
        record(results, args.output, name, row)
    print(markdown_table(results))


if __name__ == "__main__":
    main()
