"""The `lcgen` command line: one entry per job, thin wrappers over the Python functions. Results
(metrics, reports) go to stdout; status goes through `logging` (the `lcgen` logger, on stderr)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import sys

import torch
from torchvision.utils import save_image

from lcgen.checks import check_output_folder
from lcgen.convert import SOURCES as CONVERT_SOURCES
from lcgen.convert import convert
from lcgen.demo import format_report, run_demo
from lcgen.eval.classifier import train_classifier
from lcgen.eval.evaluate import main as evaluate_main
from lcgen.eval.evaluate_tokenizer import run as evaluate_tokenizer
from lcgen.eval.sampling import COMPILE_HELP
from lcgen.log import configure as configure_logging
from lcgen.pipelines import load_pipeline
from lcgen.priors.extract import extract
from lcgen.priors.train import main as train_prior_main
from lcgen.tokenizer.codebook_init import build_lc_codebook
from lcgen.tokenizer.patch_encoders import PATCH_ENCODERS
from lcgen.tokenizer.train import main as train_tokenizer_main

# the source checkout (benchmarks/ is not part of the installed package)
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_HELP = "torch device (default: cuda when available, else cpu)"
logger = logging.getLogger(__name__)


def default_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _run_benchmark(argv):
    path = os.path.join(CHECKOUT, "benchmarks", "search_throughput.py")
    if not os.path.isfile(path):
        raise SystemExit(f"benchmark script not found at {path} (run lcgen from a source checkout)")
    sys.path.insert(0, CHECKOUT)
    module = runpy.run_path(path)
    return module["main"](argv)


def cmd_demo(args):
    """The main job: tokenizer, token extraction, classifier, four priors as pipelines, per-class
    samples and their class accuracy, on Fashion-MNIST on the CPU (lcgen/demo.py)."""
    families = tuple(args.priors.split(",")) if args.priors else None
    report = run_demo(args.output, args.quick, **({"families": families} if families else {}), lpips=args.lpips,
                      lpips_vgg_weights=args.lpips_vgg_weights)
    print("\n" + format_report(report, os.path.abspath(args.output)))


def cmd_extract(args):
    store = tuple(s.strip() for s in args.store.split(","))
    meta = extract(args.tokenizer, args.dataset, args.output, args.split, args.resolution, args.data_dir,
                   args.max_samples, args.flip_view, store, args.latent_dtype, args.batch_size, args.shard_size,
                   default_device(args.device), args.num_workers)
    logger.info(f"wrote {meta['num_shards']} shard(s) of {meta['num_images']} images to {args.output} "
          f"(indices {meta['index_shape']}, latents {meta['latent_shape']}, {meta['views']} view(s))")


def cmd_train_prior(args, extra):
    train_prior_main(extra + args.rest, prog="lcgen train-prior")


def cmd_sample(args):
    if args.num_images <= 0:
        raise ValueError(f"--num-images must be > 0, got {args.num_images}")
    check_output_folder("--output", args.output)
    device = default_device(args.device)
    pipe = load_pipeline(args.pipeline).to(device)
    class_ids = None
    if args.class_id:
        class_ids = [int(c) if c.strip().lstrip("-").isdigit() else c.strip() for c in args.class_id.split(",")]
    kwargs = {k: v for k, v in dict(guidance_scale=args.guidance_scale, num_inference_steps=args.num_inference_steps,
                                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p).items()
              if v is not None}
    if pipe.family == "gpt":
        kwargs.pop("num_inference_steps", None)
    else:
        for k in ("temperature", "top_k", "top_p"):
            kwargs.pop(k, None)
    images = pipe(class_id=class_ids, num_images_per_class=args.num_images, output_type="pt",
                  generator=torch.Generator(device).manual_seed(args.seed), compile=args.compile, **kwargs).images
    os.makedirs(args.output, exist_ok=True)  # after sampling: bad arguments leave nothing behind
    for i, img in enumerate(images):
        save_image(img, os.path.join(args.output, f"{i:05d}.png"))
    save_image(images, os.path.join(args.output, "grid.png"), nrow=args.num_images)
    logger.info(f"wrote {len(images)} images and grid.png to {args.output}")


def cmd_train_classifier(args):
    m = train_classifier(args.output, args.dataset, args.epochs, args.batch_size, max_samples=args.max_samples,
                         mixed_precision=args.mixed_precision)
    logger.info(f"test accuracy {m['test_accuracy']:.4f} on {m['test_images']} images; saved {args.output}")


def cmd_train_tokenizer(args, extra):
    train_tokenizer_main(extra + args.rest, prog="lcgen train-tokenizer")


def cmd_evaluate_tokenizer(args):
    metrics = evaluate_tokenizer(args.model, args.dataset, args.split, args.output, args.batch_size, args.resolution,
                  args.data_dir, args.max_samples, args.lpips, args.lpips_vgg_weights, default_device(args.device))
    print(json.dumps(metrics, indent=2))


def cmd_evaluate(args, extra):
    evaluate_main(extra + args.rest, prog="lcgen evaluate")  # argparse leaves a leading -h in `extra`


def cmd_benchmark_search(args):
    _run_benchmark(["--size", args.size, "--rounds", str(args.rounds)] + (["--json", args.json] if args.json else []))


def cmd_init_codebook(args):
    meta = build_lc_codebook(args.encoder, args.image_folder, args.codebook_size, args.output,
                             per_class=args.per_class, pool=args.pool, epochs=args.epochs,
                             batch_size=args.batch_size, seed=args.seed, dataset=args.dataset, split=args.split,
                             encoder_kind=args.encoder_kind, kmeans_batch=args.kmeans_batch)
    logger.info(f"wrote {args.output}: {meta['codebook_size']} codes from {meta['images']} images "
          f"({meta['skipped_images']} skipped)")


def cmd_convert(args):
    out = convert(args.source, args.checkpoint, args.output, config=args.config, codebook=args.codebook,
                  tokenizer=args.tokenizer,
                  model=args.model, image_size=args.image_size, num_heads=args.num_heads, overwrite=args.overwrite,
                  push_to_hub=args.push_to_hub)
    print(out)


def _forwarding(sub, name: str, func, help: str) -> None:
    """A subcommand whose arguments (and -h) go to its module's own parser."""
    f = sub.add_parser(name, help=help, add_help=False)
    f.add_argument("rest", nargs=argparse.REMAINDER)
    f.set_defaults(func=func, takes_extra=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lcgen", description="Large-codebook image tokenizers and generators.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the main job: tokenizer + four priors as pipelines on Fashion-MNIST, on the CPU")
    d.add_argument("--quick", action="store_true", help="a smaller run for smoke tests (under 3 minutes)")
    d.add_argument("--output", default="outputs/demo", help="report folder")
    d.add_argument("--priors", default=None, help="comma-separated subset of gpt,ldm,dit,sit (default: all)")
    d.add_argument("--lpips", choices=["auto", "on", "off", "random"], default="auto",
                   help="LPIPS needs the torchvision VGG16 weights; auto skips it when they are unavailable")
    d.add_argument("--lpips-vgg-weights", default=None, help="local torchvision vgg16 weights file")
    d.set_defaults(func=cmd_demo)

    x = sub.add_parser("extract", help="encode a dataset once with a tokenizer: token/latent shards for the priors")
    x.add_argument("tokenizer", help="a saved VQTokenizer folder")
    x.add_argument("--dataset", default="fashion-mnist")
    x.add_argument("--split", default="train")
    x.add_argument("--output", required=True, help="the shard folder (rerun with the same arguments to resume)")
    x.add_argument("--resolution", type=int, default=None)
    x.add_argument("--data-dir", default=None)
    x.add_argument("--max-samples", type=int, default=None)
    x.add_argument("--flip-view", action="store_true", help="also store the horizontally flipped view (LlamaGen)")
    x.add_argument("--store", default="indices,latents", help="indices (GPT), latents (LDM/DiT/SiT) or both")
    x.add_argument("--latent-dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    x.add_argument("--batch-size", type=int, default=256)
    x.add_argument("--shard-size", type=int, default=10_000)
    x.add_argument("--device", default=None, help=DEVICE_HELP)
    x.add_argument("--num-workers", type=int, default=0)
    x.set_defaults(func=cmd_extract)

    _forwarding(sub, "train-prior", cmd_train_prior, "train a GPT/LDM/DiT/SiT prior in this process (same code as "
                "`accelerate launch -m lcgen.priors.train`): --config PRESET_OR_FILE, then --key value overrides "
                "(`lcgen train-prior -h` lists every key)")

    s = sub.add_parser("sample", help="sample a saved pipeline: PNGs and a grid")
    s.add_argument("pipeline", help="a saved pipeline folder or Hub repo id")
    s.add_argument("--class-id", default=None, help="comma-separated class ids or names (none: unconditional)")
    s.add_argument("--num-images", type=int, default=8, help="images per class")
    s.add_argument("--output", required=True)
    s.add_argument("--guidance-scale", type=float, default=None)
    s.add_argument("--num-inference-steps", type=int, default=None)
    s.add_argument("--temperature", type=float, default=None)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=None, help=DEVICE_HELP)
    s.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    s.set_defaults(func=cmd_sample)

    k = sub.add_parser("train-classifier", help="the Fashion-MNIST classifier that judges samples")
    k.add_argument("--output", required=True)
    k.add_argument("--dataset", default="fashion-mnist")
    k.add_argument("--epochs", type=int, default=4, help="4 reach 92%% test accuracy (benchmarks/RESULTS.md)")
    k.add_argument("--batch-size", type=int, default=128)
    k.add_argument("--max-samples", type=int, default=None)
    k.add_argument("--mixed-precision", choices=("no", "bf16"), default="no",
                   help="bf16: autocast training, 2.5x faster steps on this CPU (evaluation stays fp32)")
    k.set_defaults(func=cmd_train_classifier)

    _forwarding(sub, "train-tokenizer", cmd_train_tokenizer, "train a tokenizer in this process (same code as "
                "`accelerate launch -m lcgen.tokenizer.train`): --config PRESET_OR_FILE, then --key value overrides "
                "(`lcgen train-tokenizer -h` lists every key)")

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
    e.add_argument("--device", default=None, help=DEVICE_HELP)
    e.set_defaults(func=cmd_evaluate_tokenizer)

    _forwarding(sub, "evaluate", cmd_evaluate, "FID / IS / KID / precision-recall of a pipeline or samples, or rFID "
                "of a tokenizer, via torch-fidelity (`lcgen evaluate fid -h`, `lcgen evaluate rfid -h`); the same as "
                "`accelerate launch -m lcgen.eval.evaluate ...` in one process")

    b = sub.add_parser("benchmark-search", help="nearest-code search vs faiss and the naive full matrix")
    b.add_argument("--size", choices=["smallest", "lc", "full"], default="full")
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--json", default=None)
    b.set_defaults(func=cmd_benchmark_search)

    v = sub.add_parser("convert", help="a published checkpoint (VQGAN-LC, LlamaGen VQ/GPT, taming) -> an lcgen folder",
                       description="vqgan-lc: vqgan-lc-100K-f16-dim8.pth + --codebook codebook-100K.pth + --config "
                                   "f16|f8 -> a VQTokenizer folder; gpt-lc: gpt-lc-100K-f16.pth (it holds its tokenizer: --codebook "
                                   "and --config as for vqgan-lc, or --tokenizer) -> a VQGPTPipeline folder with GPT-LC's "
                                   "sampling; dit-lc: a DiT-LC (or DiT) checkpoint + "
                                   "--tokenizer (a converted VQGAN-LC f16) -> a VQDiTPipeline folder with DiT-LC's "
                                   "DDPM-250 learned-variance protocol; sit-lc: the same for SiT-LC -> a "
                                   "VQSiTPipeline; llamagen-vq: vq_ds16_c2i.pt / vq_ds8_c2i.pt -> a VQTokenizer folder; "
                                   "llamagen-gpt: c2i_B_256.pt ... + --tokenizer (a converted VQ) -> a VQGPTPipeline "
                                   "folder; taming: last.ckpt + --config model.yaml -> a VQTokenizer folder. Files are "
                                   "opened weights-only; the folder is written atomically.")
    v.add_argument("source", choices=CONVERT_SOURCES)
    v.add_argument("--checkpoint", required=True, help="the official .pt / .ckpt file")
    v.add_argument("--output", required=True, help="the folder to write")
    v.add_argument("--config", default=None, help="vqgan-lc / gpt-lc: f16 (default) or f8; taming: the checkpoint's "
                                                  "model.yaml")
    v.add_argument("--codebook", default=None, help="vqgan-lc / gpt-lc: the frozen codebook file (codebook-100K.pth), when "
                                                    "the checkpoint does not hold tok_embeddings.weight")
    v.add_argument("--tokenizer", default=None, help="llamagen-gpt / dit-lc / sit-lc (gpt-lc: optional): the converted "
                                                     "tokenizer folder")
    v.add_argument("--model", default=None, help="VQ-16 | VQ-8, or GPT-B ... GPT-XXXL (default: from the file name)")
    v.add_argument("--image-size", type=int, default=None, help="default: from the file name (c2i_B_384 -> 384), else 256")
    v.add_argument("--num-heads", type=int, default=None, help="llamagen-gpt / gpt-lc / dit-lc: heads, for a width "
                                                               "no named size has")
    v.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    v.add_argument("--push_to_hub", "--push-to-hub", default=None, metavar="REPO", help="also upload to this Hub repo")
    v.set_defaults(func=cmd_convert)

    c = sub.add_parser("init-codebook", help="VQGAN-LC frozen codebook: k-means over a pretrained encoder's "
                                             "patch features")
    c.add_argument("--encoder", default="openai/clip-vit-large-patch14",
                   help="local path or Hub id of a transformers CLIP vision model, or an lcgen ImageClassifier "
                        "folder (`lcgen train-classifier`)")
    c.add_argument("--encoder-kind", default="auto", choices=("auto", *PATCH_ENCODERS),
                   help="auto: an ImageClassifier folder is read as one, anything else as CLIP")
    images = c.add_mutually_exclusive_group(required=True)
    images.add_argument("--image-folder", help="folder of images; sub-folders are classes")
    images.add_argument("--dataset", help="an lcgen dataset name with labels in memory (e.g. fashion-mnist)")
    c.add_argument("--split", default="train", help="the --dataset split (default train)")
    c.add_argument("--codebook-size", type=int, default=100_000)
    c.add_argument("--output", required=True, help="a .safetensors file")
    c.add_argument("--per-class", action="store_true", help="k-means per class, K/num_classes each (VQGAN-LC)")
    c.add_argument("--pool", type=int, default=None,
                   help="average pooling of the patch grid (default: 4 for CLIP as VQGAN-LC, 1 for a classifier)")
    c.add_argument("--epochs", type=int, default=3, help="mini-batch k-means passes over the features")
    c.add_argument("--kmeans-batch", type=int, default=4096, help="features per mini-batch k-means step")
    c.add_argument("--batch-size", type=int, default=32, help="images per encoder batch")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_init_codebook)
    return p


def main(argv=None):
    configure_logging()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args, extra) if getattr(args, "takes_extra", False) else args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:  # bad input: one clear line, no traceback
        raise SystemExit(f"lcgen {args.command}: error: {e}")


if __name__ == "__main__":
    main()
