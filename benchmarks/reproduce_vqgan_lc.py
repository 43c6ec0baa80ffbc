"""VQGAN-LC's headline on Fashion-MNIST: utilisation of a frozen 100,000-entry codebook built from a
pretrained encoder's features and aligned by a trained projector, beside VQ, VQGAN-FC and VQGAN-EMA
at the same size, each with one equal budget.

    python benchmarks/reproduce_vqgan_lc.py [--quick] [--output DIR] [--only NAME ...] [--table]

1. The pretrained encoder: the Fashion-MNIST judge (`lcgen.eval.classifier`, trained on the real
   training split). CLIP is unreachable offline; the codebook goes through the same `init-codebook`
   path that takes CLIP on a GPU machine: the judge's last conv map (49 patch features an image),
   mini-batch k-means per class, K / 10 centres each.
2. Tokenizers: the preset `fashion-mnist-vqgan-lc-cpu` (VQGAN-LC's recipe scaled to this data),
   with the quantizer swapped per run: LC at K in {1,024; 16,384; 50,000; 100,000}, and VQ, FC, EMA
   at K = 100,000; `fashion-mnist-vqgan-lc-aligned-cpu` (the same + lcgen's projector_init
   "latent-stats") and `fashion-mnist-vqgan-lc-pull-cpu` (aligned + lcgen's revival "latent-pull")
   at K = 100,000. Every run: the same steps, batch and schedule.
3. Per run: utilisation and perplexity on the training split (full budget: all 60,000 x 49 tokens,
   29 per code at K = 100,000; quick: the first 10,000 images) and on the test split (with tokens
   per code beside it), PSNR, SSIM, rFID in the judge's feature space, and the code-to-latent scale
   ratio over training (first, last logged step).

Resumable: the judge, each codebook and each finished run are kept under --output and reused
(a run's results land in results.json only once it is evaluated).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks.results_file import load_results, machine, record  # noqa: E402

from torch.utils.data import DataLoader  # noqa: E402

from lcgen.data import build_dataset, collate_skipping_bad  # noqa: E402
from lcgen.eval.classifier import train_classifier  # noqa: E402
from lcgen.eval.metrics import CodebookUsage  # noqa: E402
from lcgen.tokenizer import VQTokenizer  # noqa: E402
from lcgen.eval.evaluate_tokenizer import run as evaluate  # noqa: E402
from lcgen.eval.extractors import FASHION_MNIST, ExtractorSpec  # noqa: E402
from lcgen.eval.measure import MeasureSettings  # noqa: E402
from lcgen.eval.rfid import evaluate_rfid  # noqa: E402
from lcgen.tokenizer.codebook_init import build_lc_codebook  # noqa: E402
from lcgen.tokenizer.train import parse_config, train  # noqa: E402
from lcgen.training.checkpointing import list_checkpoints  # noqa: E402

PRESET = "fashion-mnist-vqgan-lc-cpu"  # the paper's recipe
ALIGNED = "fashion-mnist-vqgan-lc-aligned-cpu"  # + lcgen's projector_init "latent-stats"
PULLED = "fashion-mnist-vqgan-lc-pull-cpu"  # + lcgen's revival "latent-pull" (dead codes pull their closest latents)
BIG_K = 100_000
# K = 100,000 first (the claim), then the smaller LC codebooks
RUNS = [("lc-100000", "lc", BIG_K, PRESET), ("lc-aligned-100000", "lc", BIG_K, ALIGNED),
        ("lc-pull-100000", "lc", BIG_K, PULLED),
        ("fc-100000", "fc", BIG_K, PRESET), ("vq-100000", "vq", BIG_K, PRESET), ("ema-100000", "ema", BIG_K, PRESET),
        ("lc-50000", "lc", 50_000, PRESET), ("lc-16384", "lc", 16_384, PRESET), ("lc-1024", "lc", 1024, PRESET)]
# steps of batch 256 (VQGAN-LC's global batch); judge epochs; k-means passes and images; images evaluated
# (test split) and counted for training-split usage (None: the whole split). Sized from measured costs
# on a 2-core CPU: a step of LC/FC at K = 100,000 (D' = 8, k-d tree search) 0.36 s, of VQ/EMA (D = 64,
# brute force) 2.7 s (its 12,544-token search; 4.8 s before the value-first block minimum); k-means++
# seeding ~5 s per class at 400 images a class. The quick budget is a smoke run of the whole table
# (2 tokens per code at K = 100,000: its utilisation cannot reach the claim); the full budget is the result.
BUDGETS = {
    "quick": dict(steps=40, judge_epochs=1, kmeans_epochs=1, kmeans_images=4_000, eval_images=1_000,
                  usage_images=4_000),
    "full": dict(steps=500, judge_epochs=4, kmeans_epochs=2, kmeans_images=None, eval_images=None,
                 usage_images=None),
}
# VQGAN-LC Table 2 (ImageNet, 256 tokens): utilisation %, rFID; None where the paper has no row
PAPER = {"lc-16384": (99.9, 3.01), "lc-50000": (99.9, 2.75), "lc-100000": (99.9, 2.62), "vq-100000": (0.5, 5.44),
         "fc-100000": (1.9, 4.65), "ema-100000": (24.2, 3.46)}


def scale_ratios(run_dir: str) -> tuple[float, float]:
    """The code-to-latent scale ratio at the first and the last logged step of a run."""
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    rows = [r for r in rows if "codebook/scale_ratio" in r]
    return rows[0]["codebook/scale_ratio"], rows[-1]["codebook/scale_ratio"]


@torch.no_grad()
def training_split_usage(model_dir: str, max_images: int | None) -> dict:
    """Utilisation and perplexity of the codes over the training split (its first `max_images`; usage
    only: no image metrics)."""
    model = VQTokenizer.from_pretrained(model_dir).eval()
    data = build_dataset("fashion-mnist", "train", channels=1, max_samples=max_images)
    usage = CodebookUsage.for_quantizer(model.quantizer)
    for batch in DataLoader(data, batch_size=1000, collate_fn=collate_skipping_bad):
        usage.update(model.encode(batch["pixel_values"]).indices)
    return {**usage.summary(), "images": len(data)}


def markdown_table(results: dict) -> str:
    rows = ["| run | K | util. train (tokens/code) | perplexity train | util. test (tokens/code) | PSNR (dB) | SSIM | "
            "rFID (judge) | scale ratio first → last | train s | paper util. / rFID (ImageNet) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        paper = PAPER.get(name)
        k = r["codebook_size"]
        util = lambda u: f"{u:.1%}" if u >= 0.001 else f"{round(u * k)} codes"  # noqa: E731
        rows.append(f"| {name} | {k:,} | {util(r['train_utilisation'])} ({r['train_tokens_per_code']:.0f}) | "
                    f"{r['train_perplexity']:,.0f} | {util(r['test_utilisation'])} ({r['test_tokens_per_code']:.1f}) | "
                    f"{r['psnr']:.2f} | {r['ssim']:.4f} | {r['rfid']:.2f} | {r['scale_ratio_first']:.3g} → "
                    f"{r['scale_ratio_last']:.3g} | {r['train_seconds']:.0f} | "
                    f"{f'{paper[0]}% / {paper[1]}' if paper else '-'} |")
    return "\n".join(rows)


def judge(out: str, epochs: int) -> str:
    path = os.path.join(out, "judge")
    if not os.path.isfile(os.path.join(path, "metrics.json")):
        m = train_classifier(path, epochs=epochs, mixed_precision="auto")
        print(f"judge: {m['test_accuracy']:.1%} test accuracy, {m['seconds']:.0f} s")
    return path


def codebook(out: str, judge_dir: str, k: int, epochs: int, images: int | None) -> str:
    path = os.path.join(out, "codebooks", f"judge-kmeans-{k}-{images or 'all'}x{epochs}.safetensors")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        t0 = time.time()
        build_lc_codebook(judge_dir, None, k, path, per_class=True, dataset="fashion-mnist", epochs=epochs,
                          batch_size=500, max_samples=images)
        print(f"codebook K={k}: {time.time() - t0:.0f} s")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=f"the quick budget {BUDGETS['quick']} (full: {BUDGETS['full']})")
    p.add_argument("--output", default=None, help="default: runs/vqgan-lc-repro (runs/vqgan-lc-repro-quick with --quick)")
    p.add_argument("--only", nargs="*", default=None, help="run only these names")
    p.add_argument("--steps", type=int, default=None, help="override the budget's training steps")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra tokenizer config override for every run (e.g. quantizer option), recorded")
    p.add_argument("--table", action="store_true", help="print the markdown table of the results so far and exit")
    args = p.parse_args(argv)
    budget = dict(BUDGETS["quick" if args.quick else "full"])
    if args.steps is not None:
        budget["steps"] = args.steps
    args.output = args.output or os.path.join(REPO_ROOT, "runs", "vqgan-lc-repro" + ("-quick" if args.quick else ""))
    os.makedirs(args.output, exist_ok=True)
    results = load_results(args.output)
    if args.table:
        print(markdown_table(results))
        return
    setting = {"budget": "quick" if args.quick else "full", "steps": budget["steps"], "options": args.option}
    for name, r in results.items():  # one table, one budget: finished runs are only reused under the same one
        if {key: r.get(key) for key in setting} != setting:
            p.error(f"{args.output} holds {name} run with {({key: r.get(key) for key in setting})}, not {setting}; "
                    "pass another --output")
    overrides = [a for kv in args.option for a in (f"--{kv.split('=', 1)[0]}", kv.split("=", 1)[1])]
    judge_dir = judge(args.output, budget["judge_epochs"])
    fid = MeasureSettings(metrics=("fid",), extractor=ExtractorSpec(FASHION_MNIST, judge_dir), batch_size=500,
                          cache_root=os.path.join(args.output, "fid-cache"), keep_reference_features=True)
    for name, kind, k, preset in RUNS:
        if args.only and name not in args.only:
            continue
        if name in results:
            print(f"{name}: done already")
            continue
        run_dir = os.path.join(args.output, name)
        extra = []
        if kind == "lc":
            extra = ["--init_codebook", codebook(args.output, judge_dir, k, budget["kmeans_epochs"], budget["kmeans_images"])]
        cfg = parse_config(["--config", preset, "--quantizer_kind", kind, "--codebook_size", str(k), *extra,
                            *overrides, "--output_dir", run_dir, "--max_train_steps", str(budget["steps"]),
                            "--lr_warmup_steps", str(budget["steps"] // 4),  # VQGAN-LC: 5 of 20 epochs
                            "--checkpointing_steps", str(max(budget["steps"] // 4, 1)), "--report_to", "none",
                            *(["--resume_from_checkpoint", "latest"] if list_checkpoints(run_dir) else [])])
        t0 = time.time()
        model_dir = train(cfg)
        train_s, t0 = time.time() - t0, time.time()
        test = evaluate(model_dir, "fashion-mnist", "test", output_dir=os.path.join(run_dir, "eval-test"), lpips="off",
                        max_samples=budget["eval_images"])
        trained = training_split_usage(model_dir, budget["usage_images"])
        rfid = evaluate_rfid(model_dir, os.path.join(run_dir, "rfid"), "fashion-mnist", "test", resolution=28,
                             max_samples=budget["eval_images"], settings=fid)["metrics"]["fid"]
        first, last = scale_ratios(run_dir)
        tokens = lambda m: m["images"] * 49 / k  # noqa: E731  (7 x 7 tokens an image)
        row = {"kind": kind, "preset": preset, "codebook_size": k, "steps": budget["steps"], "options": args.option,
               "train_utilisation": trained["utilisation"], "train_perplexity": trained["perplexity"],
               "train_tokens_per_code": tokens(trained), "test_utilisation": test["utilisation"],
               "test_perplexity": test["perplexity"], "test_tokens_per_code": tokens(test),
               "psnr": test["psnr"], "ssim": test["ssim"], "l1": test["l1"], "rfid": rfid,
               "scale_ratio_first": first, "scale_ratio_last": last, "train_seconds": round(train_s, 1),
               "eval_seconds": round(time.time() - t0, 1),
               "rfid_images": test["images"], "budget": "quick" if args.quick else "full", "machine": machine()}
        record(results, args.output, name, row)
    print(markdown_table(results))


if __name__ == "__main__":
    main()
