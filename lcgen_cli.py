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


DEMO_PRESET = os.path.join(ROOT, "configs", "fashion-mnist-looc-cpu.yaml")


def cmd_demo(args):
    """The main job: train a small LooC tokenizer on Fashion-MNIST on the CPU, evaluate it on the
    test split and write the report (metrics.json, reconstructions.png, code_usage.png)."""
    import json
    import time

    from eval.evaluate_tokenizer import run as evaluate
    from tokenizer.train import parse_config, train

    out = os.path.abspath(args.output)
    steps, eval_samples = (150, 2000) if args.quick else (1500, None)
    start = time.time()
    cfg = parse_config(["--config", DEMO_PRESET, "--output_dir", os.path.join(out, "tokenizer"),
                        "--max_train_steps", str(steps), "--checkpointing_steps", "300"])
    model_dir = train(cfg)
    trained = time.time() - start
    metrics = evaluate(model_dir, "fashion-mnist", "test", output_dir=os.path.join(out, "eval"),
                       max_samples=eval_samples, lpips=args.lpips, lpips_vgg_weights=args.lpips_vgg_weights)
    report = {"tokenizer": model_dir, "preset": os.path.relpath(DEMO_PRESET, ROOT), "train_steps": steps,
              "train_seconds": round(trained, 1), "total_seconds": round(time.time() - start, 1),
              "test_metrics": metrics}
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nLooC 256x4 on Fashion-MNIST, {steps} steps ({trained:.0f} s): "
          f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, l1 {metrics['l1']:.4f}, "
          f"utilisation {metrics['utilisation']:.1%}, perplexity {metrics['perplexity']:.1f} "
          f"on {metrics['images']} test images\nreport: {out}/report.json, {out}/eval/")


def cmd_train_tokenizer(args, extra):
    from tokenizer.train import parse_config, train

    train(parse_config((["--config", args.config] if args.config else []) + extra))


def cmd_evaluate_tokenizer(args):
    import json

    from eval.evaluate_tokenizer import run

    metrics = run(args.model, args.dataset, args.split, args.output, args.batch_size, args.resolution,
                  args.data_dir, args.max_samples, args.lpips, args.lpips_vgg_weights, args.device)
    print(json.dumps(metrics, indent=2))


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

    d = sub.add_parser("demo", help="the main job: train + evaluate a small LooC tokenizer on Fashion-MNIST")
    d.add_argument("--quick", action="store_true", help="a smaller run for smoke tests (about 1-2 minutes)")
    d.add_argument("--output", default="outputs/demo", help="report folder")
    d.add_argument("--lpips", choices=["auto", "on", "off", "random"], default="auto",
                   help="LPIPS needs the torchvision VGG16 weights; auto skips it when they are unavailable")
    d.add_argument("--lpips-vgg-weights", default=None, help="local torchvision vgg16 weights file")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train-tokenizer", help="train a tokenizer in this process (same code as "
                       "`accelerate launch -m tokenizer.train`); other --key value pairs override the preset")
    t.add_argument("--config", default=None, help="a preset, e.g. configs/looc-256x4.yaml")
    t.set_defaults(func=cmd_train_tokenizer, takes_extra=True)

    e = sub.add_parser("evaluate-tokenizer", help="l1, PSNR, SSIM, LPIPS, utilisation and perplexity over a split")
    e.add_argument("model", help="a saved VQTokenizer folder (<run>/model)")
    e.add_argument("--dataset", default="fashion-mnist")
    e.add_argument("--split", default="test")
    e.add_argument("--output", default=None, help="report folder (default: <run>/eval)")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--resolution", type=int, default=None)
    e.add_argument("--data-dir", default=None, help="for --dataset imagefolder")
    e.add_argument("--max-samples", type=int, default=None)
    e.add_argument("--lpips", choices=["auto", "on", "off", "random"], default="auto")
    e.add_argument("--lpips-vgg-weights", default=None)
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=cmd_evaluate_tokenizer)

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
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args, extra) if getattr(args, "takes_extra", False) else args.func(args)
    except (ValueError, TypeError) as e:  # bad input: one clear line, no traceback
        raise SystemExit(f"lcgen {args.command}: error: {e}")


if __name__ == "__main__":
    main()
