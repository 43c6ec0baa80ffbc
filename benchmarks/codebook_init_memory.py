"""Peak memory of the VQGAN-LC codebook initialisation against the number of images.

    python benchmarks/codebook_init_memory.py [--images 6000 15000 30000 60000] [--json out.json]

Each measurement runs in a fresh process and reports its peak resident memory (ru_maxrss), minus the
same process's footprint after loading the data and the encoder (the baseline), for:
- lcgen: `build_lc_codebook(per_class=True)`, which holds one class's patch features at a time;
- all-at-once: the previous recipe's memory shape, every image's features concatenated before k-means
  (measured by building exactly that tensor, without the k-means).
Encoder: an lcgen ImageClassifier with random weights (memory does not depend on them), 49 x 64-d
patch features per Fashion-MNIST image; K = 1,000 (100 per class).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(mode: str, images: int, encoder: str, output: str) -> None:
    import torch

    from lcgen.tokenizer.codebook_init import DatasetImages, build_lc_codebook
    from lcgen.tokenizer.patch_encoders import load_patch_encoder

    source = DatasetImages("fashion-mnist", "train", max_samples=images)
    enc = load_patch_encoder(encoder)
    enc(source.load(range(2)))  # warm the encoder's kernels into the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "lcgen":
        build_lc_codebook(encoder, None, 1000, output, per_class=True, dataset="fashion-mnist", max_samples=images,
                          epochs=1, batch_size=500)
    else:
        feats = torch.cat([enc(source.load(range(i, min(i + 500, images)))).reshape(-1, enc.dim)
                           for i in range(0, images, 500)])
        assert feats.shape[0] == images * 49
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "images": images, "peak_mb": round((peak - base) / 1024, 1)}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, nargs="*", default=[6000, 15000, 30000, 60000])
    p.add_argument("--json", default=None)
    p.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        mode, images, encoder, output = args.child
        return child(mode, int(images), encoder, output)
    from lcgen.eval.classifier import ImageClassifier

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ImageClassifier().save_pretrained(os.path.join(tmp, "encoder"))
        for n in args.images:
            row = {"images": n, "all_features_mb": round(n * 49 * 64 * 4 / 2 ** 20, 1)}
            for mode in ("lcgen", "all-at-once"):
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", mode, str(n),
                                      os.path.join(tmp, "encoder"), os.path.join(tmp, "c.safetensors")],
                                     capture_output=True, text=True, check=True, cwd=REPO_ROOT)
                row[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
            rows.append(row)
            print(json.dumps(row))
    print("| images | all features (MB) | all-at-once peak (MB) | lcgen per-class peak (MB) | ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']:,} | {r['all_features_mb']:.0f} | {r['all-at-once']:.0f} | {r['lcgen']:.0f} | "
              f"{r['all-at-once'] / max(r['lcgen'], 1e-9):.1f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
