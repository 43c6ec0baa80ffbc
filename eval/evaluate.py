"""`lcgen evaluate fid|rfid ...`, also `accelerate launch -m lcgen.eval.evaluate fid|rfid ...` to spread
sampling and feature extraction over processes / GPUs. Prints the metrics; the full report (every
protocol choice) is <output>/report.json.

    accelerate launch -m lcgen.eval.evaluate fid --pipeline DIR --reference VIRTUAL_imagenet256_labeled.npz \\
        --num-samples 50000 --batch-size 125 --output outputs/fid-dit --npz
    accelerate launch -m lcgen.eval.evaluate rfid --tokenizer RUN/model --dataset imagenet --split validation \\
        --resolution 256 --output outputs/rfid
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from lcgen.log import configure as configure_logging

from .extractors import INCEPTION, LAYERS, ExtractorSpec
from .generation_fid import evaluate_fid
from .measure import IS_SPLITS, METRICS, MeasureSettings
from .image_inputs import UINT8_RULES
from .rfid import evaluate_rfid
from .sampling import add_sample_file_flags

logger = logging.getLogger(__name__)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="evaluation folder (rerun the same command to resume)")
    p.add_argument("--metrics", default="fid", help=f"comma-separated subset of {','.join(METRICS)}")
    p.add_argument("--batch-size", type=int, default=64, help="feature-extraction batch (and sampling batch)")
    p.add_argument("--feature-extractor", default=INCEPTION, choices=sorted(LAYERS))
    p.add_argument("--inception-weights", "--feature-extractor-weights", dest="weights", default=None,
                   help="local Inception .pth (torch-fidelity's format); for lcgen-fashion-mnist, the classifier folder; "
                   "for dinov2-vit-*-14 (FD-DINOv2), the official dinov2_vit?14_pretrain.pth or a transformers folder")
    p.add_argument("--float64-features", action="store_true", help="Inception internals in float64 (batch-size "
                   "independent features, slower)")
    p.add_argument("--cache-dir", default=None, help="reference statistics cache (default ~/.cache/lcgen/fid-references "
                   "or $LCGEN_FID_CACHE)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per feature shard (the resume unit)")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading workers")
    p.add_argument("--keep-reference-features", action="store_true",
                   help="keep the reference's feature shards after its statistics are cached")
    p.add_argument("--is-splits", default="adm", choices=sorted(IS_SPLITS),
                   help="Inception Score parts: adm (consecutive 5,000-image parts, ADM's evaluator) or "
                   "torch-fidelity (10 shuffled parts); the same at 50,000 samples only")
    p.add_argument("--data-dir", default=None, help="local copy of the dataset (imagefolder or a Hub dataset's files)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="use N images of the split: a fixed-seed uniform subset of all of it (not its first N)")
    p.add_argument("--kid-prc-reference-images", type=int, default=10_000,
                   help="KID/PR compare with a fixed-seed uniform subset of this many reference images (ADM's "
                   "10,000-image reference batch; 0: all of them)")


def build_parser(prog: str = "lcgen.eval.evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="FID / IS / KID / precision-recall and rFID via torch-fidelity")
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("fid", help="generation metrics of a pipeline or of samples against a reference")
    f.add_argument("--reference", required=True, help="imagenet-256-train, imagenet-256-val, ffhq-256-train, "
                   "fashion-mnist-test, ..., a mu/sigma .npz (ADM's VIRTUAL_imagenet256_labeled.npz), or a folder")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--pipeline", help="a saved lcgen pipeline: sampled with per-image seeds, resumably")
    src.add_argument("--samples", help="an existing folder of images or an ADM .npz (arr_0)")
    f.add_argument("--num-samples", type=int, default=None, help="images to sample (50000 for published numbers)")
    f.add_argument("--class-balanced", action="store_true", help="class i mod C for image i (default: uniform random)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--npz", action="store_true", help="also pack the samples into ADM's samples.npz")
    f.add_argument("--guidance-scale", type=float, default=None)
    f.add_argument("--num-inference-steps", type=int, default=None)
    f.add_argument("--preprocessing", default="adm", choices=["adm", "center", "stretch"],
                   help="how a dataset reference is cropped to its resolution (ADM center_crop_arr by default)")
    f.add_argument("--reference-resolution", type=int, default=None,
                   help="resolution for references named without one, and for folders of mixed sizes")
    add_sample_file_flags(f)
    _common(f)
    r = sub.add_parser("rfid", help="rFID of a tokenizer: reconstructions of a split vs the split")
    r.add_argument("--tokenizer", required=True, help="a saved VQTokenizer folder (<run>/model)")
    r.add_argument("--dataset", default="imagenet")
    r.add_argument("--split", default="validation")
    r.add_argument("--resolution", type=int, default=256)
    r.add_argument("--protocol", default="adm", choices=["adm", "vqgan-lc"],
                   help="adm: ADM center crop on both sides (LlamaGen); vqgan-lc: clean-fid-style, not comparable")
    r.add_argument("--uint8-rule", default=None, choices=sorted(UINT8_RULES),
                   help="reconstructions to pixels: round (DiT/LlamaGen) or truncate (ADM/VQGAN-LC); "
                   "default: the protocol's (adm: round, vqgan-lc: truncate)")
    _common(r)
    return p


def run(args) -> dict | None:
    settings = MeasureSettings(
        metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
        extractor=ExtractorSpec(args.feature_extractor, args.weights, "float64" if args.float64_features else "float32"),
        batch_size=args.batch_size, shard_size=args.shard_size, num_workers=args.num_workers,
        cache_root=args.cache_dir, keep_reference_features=args.keep_reference_features,
        is_splits=args.is_splits, reference_subset=args.kid_prc_reference_images or None)
    if args.what == "rfid":
        return evaluate_rfid(args.tokenizer, args.output, args.dataset, args.split, args.resolution, args.protocol,
                             args.data_dir, args.max_samples, settings, args.uint8_rule)
    sample_kwargs = {k: v for k, v in {"guidance_scale": args.guidance_scale,
                                       "num_inference_steps": args.num_inference_steps}.items() if v is not None}
    return evaluate_fid(args.output, args.reference, args.pipeline, args.samples, args.num_samples, settings,
                        args.seed, args.class_balanced, None, args.npz, args.data_dir, args.preprocessing,
                        args.reference_resolution, args.max_samples, uint8_rule=args.uint8_rule,
                        overwrite_samples=args.overwrite_samples, **sample_kwargs)


def main(argv=None, prog: str = "lcgen.eval.evaluate") -> None:
    args = build_parser(prog).parse_args(argv)
    configure_logging()
    try:
        report = run(args)
    except ValueError as e:
        raise SystemExit(f"{prog}: error: {e}")
    if report is not None:  # the main process
        print(json.dumps(report["metrics"], indent=2))
        for w in report["warnings"]:
            logger.warning(w)
        logger.info(f"report: {args.output}/report.json")


if __name__ == "__main__":
    main(sys.argv[1:])
