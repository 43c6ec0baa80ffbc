"""The `lcgen` command line: one entry per job, thin wrappers over the Python functions."""
from __future__ import annotations

import argparse
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))


def _run_benchmark(argv):
    path = os.path.join(ROOT, "benchmarks", "search_throughput.py")
    if not os.path.isfile(path):
        raise SystemExit(f"benchmark script not found at {path} (run lcgen from a source checkout)")
    sys.path.insert(0, ROOT)
    module = runpy.run_path(path)
    return module["main"](argv)


def cmd_demo(args):
    """The main job. For now: the nearest-code search benchmark at its smallest size."""
    argv = ["--size", "smallest"] + (["--tokens", "2048", "--rounds", "3"] if args.quick else [])
    _run_benchmark(argv)


def cmd_benchmark_search(args):
    _run_benchmark(["--size", args.size, "--rounds", str(args.rounds)] + (["--json", args.json] if args.json else []))


def cmd_init_codebook(args):
    from tokenizer.codebook_init import build_lc_codebook

    meta = build_lc_codebook(args.encoder, args.image_folder, args.codebook_size, args.output,
                             per_class=args.per_class, pool=args.pool, iters=args.iters,
                             batch_size=args.batch_size, seed=args.seed)
    print(f"wrote {args.output}: {meta['codebook_size']} codes from {meta['images']} images "
          f"({meta['skipped_images']} skipped)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lcgen", description="Large-codebook image tokenizers and generators.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the main job")
    d.add_argument("--quick", action="store_true", help="a smaller run for smoke tests")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("benchmark-search", help="nearest-code search vs faiss and the naive full matrix")
    b.add_argument("--size", choices=["smallest", "full"], default="full")
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--json", default=None)
    b.set_defaults(func=cmd_benchmark_search)

    c = sub.add_parser("init-codebook", help="VQGAN-LC frozen codebook: k-means over CLIP patch features")
    c.add_argument("--encoder", default="openai/clip-vit-large-patch14",
                   help="local path or Hub id of a transformers CLIP vision model")
    c.add_argument("--image-folder", required=True, help="folder of images; sub-folders are classes")
    c.add_argument("--codebook-size", type=int, default=100_000)
    c.add_argument("--output", required=True, help="a .safetensors file")
    c.add_argument("--per-class", action="store_true", help="k-means per class, K/num_classes each (VQGAN-LC)")
    c.add_argument("--pool", type=int, default=4, help="average pooling of the patch grid (VQGAN-LC: 4)")
    c.add_argument("--iters", type=int, default=20)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_init_codebook)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError) as e:  # bad input: one clear line, no traceback
        raise SystemExit(f"lcgen {args.command}: error: {e}")


if __name__ == "__main__":
    main()
