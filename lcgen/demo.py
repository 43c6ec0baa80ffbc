"""The main job, `lcgen demo`: both stages end to end on Fashion-MNIST on the CPU.

1. train the small LooC tokenizer (K = 256, d* = 4, d = 16: 7x7 positions x 4 indices, a 16x7x7
   latent the size of the image) and evaluate its reconstructions on the test split;
2. extract its tokens and latents from the training split (`lcgen.priors.extract`);
3. train the judge, a Fashion-MNIST classifier, on the real training set, and measure it on the real
   test images and on the tokenizer's reconstructions of them (the ceiling a prior can reach);
4. train GPT, LDM, DiT and SiT priors on the shards (their presets' recipes) and save them as
   pipelines under <output>/pipelines/<family>;
5. sample every class through each pipeline (class-balanced), report the judge's class accuracy and
   FID / precision / recall against the test images in the judge's feature space, and write
   report.json and index.html (lcgen/demo_page.py).
"""
from __future__ import annotations

import json
import os
import shutil
import time

import torch
from torch.utils.data import DataLoader

from lcgen.data import build_dataset, collate_skipping_bad
from lcgen.demo_page import FIGURES, labelled_grid, write_page
from lcgen.eval.classifier import ImageClassifier, predict, sample_class_accuracy, train_classifier
from lcgen.eval.evaluate_tokenizer import run as evaluate_tokenizer
from lcgen.eval.extractors import FASHION_MNIST, ExtractorSpec
from lcgen.eval.generation_fid import evaluate_fid
from lcgen.eval.measure import MeasureSettings
from lcgen.pipelines import load_pipeline
from lcgen.priors.extract import extract
from lcgen.priors.train import parse_config as prior_config
from lcgen.priors.train import train as train_prior
from lcgen.tokenizer import VQTokenizer
from lcgen.tokenizer.train import parse_config as tokenizer_config
from lcgen.tokenizer.train import train as train_tokenizer

TOKENIZER_PRESET = "fashion-mnist-looc-d16-cpu"  # presets ship inside the package (lcgen.configs)
FAMILIES = ("gpt", "ldm", "dit", "sit")

# prior_steps None: each prior preset's own max_train_steps (the calibrated recipe)
BUDGETS = {
    "full": dict(tokenizer_steps=700, eval_images=None, extract_images=None, classifier_images=None,
                 classifier_epochs=4, prior_steps=None, samples_per_class=200, grid_per_class=8),
    "quick": dict(tokenizer_steps=100, eval_images=2000, extract_images=5000, classifier_images=10000,
                  classifier_epochs=1, prior_steps=30, samples_per_class=13, grid_per_class=4),  # 130 > 128 features
}


def prior_preset(family: str) -> str:
    return f"fashion-mnist-{family}-cpu"


@torch.no_grad()
def judge_on_reconstructions(tokenizer_dir: str, classifier: ImageClassifier, max_samples: int | None = None) -> float:
    """The judge's accuracy on the tokenizer's reconstructions of the test split: a prior whose samples
    are decoded by this tokenizer cannot be expected to do better."""
    tok = VQTokenizer.from_pretrained(tokenizer_dir).eval()
    test = build_dataset("fashion-mnist", "test", channels=1, max_samples=max_samples)
    hits = total = 0
    for batch in DataLoader(test, batch_size=500, collate_fn=collate_skipping_bad):
        recon = tok(batch["pixel_values"]).sample.clamp(-1, 1)
        hits += int((predict(classifier, recon) == batch["labels"]).sum())
        total += len(batch["labels"])
    return hits / total


# what a demo run writes under its output folder; a rerun retrains the tokenizer and the judge, so every
# one of these from an earlier run is stale (shards of another tokenizer, features of another judge)
RUN_FOLDERS = ("tokenizer", "eval", "shards", "classifier", "runs", "pipelines", "fid", "fid-cache", FIGURES)
RUN_FILES = ("report.json", "index.html")


MARKER = ".lcgen-demo"  # written first by every run: a folder without it is not the demo's to clear


def clear_previous_run(out: str) -> None:
    """Remove an earlier demo run's stages from `out` (only the names the demo itself writes), or refuse a
    non-empty folder that an earlier demo run did not create; then mark `out` as a demo folder."""
    if os.path.isfile(out):
        raise ValueError(f"--output {out} is a file, not a folder")
    earlier = any(os.path.isfile(os.path.join(out, f)) for f in (MARKER, "report.json"))  # report: older demos
    if os.path.isdir(out) and os.listdir(out) and not earlier:
        raise ValueError(f"--output {out} is not empty and holds no earlier demo run ({MARKER}): pass a new or "
                         f"empty folder")
    for name in RUN_FOLDERS:
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    for name in RUN_FILES:
        if os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, MARKER), "w") as f:
        f.write("written by lcgen demo; a rerun replaces this folder's stages\n")


def run_demo(output: str, quick: bool = False, families=FAMILIES, lpips: str = "auto",
             lpips_vgg_weights: str | None = None) -> dict:
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise ValueError(f"unknown prior families {bad}; expected some of {FAMILIES}")
    b = BUDGETS["quick" if quick else "full"]
    out = os.path.abspath(output)
    clear_previous_run(out)
    report = {"budget": "quick" if quick else "full", **b}
    start = time.time()

    def stamp(name, since):
        report.setdefault("seconds", {})[name] = round(time.time() - since, 1)
        return time.time()

    t0 = time.time()
    tok_dir = train_tokenizer(tokenizer_config(
        ["--config", TOKENIZER_PRESET, "--output_dir", os.path.join(out, "tokenizer"),
         "--max_train_steps", str(b["tokenizer_steps"]), "--checkpointing_steps", "300"]))
    t0 = stamp("tokenizer_train", t0)
    report["tokenizer_metrics"] = evaluate_tokenizer(tok_dir, "fashion-mnist", "test", output_dir=os.path.join(out, "eval"),
                                                     max_samples=b["eval_images"], lpips=lpips,
                                                     lpips_vgg_weights=lpips_vgg_weights)
    t0 = stamp("tokenizer_eval", t0)
    shards = os.path.join(out, "shards")
    meta = extract(tok_dir, "fashion-mnist", shards, max_samples=b["extract_images"], shard_size=10_000)
    report["extraction"] = {k: meta[k] for k in ("num_images", "index_shape", "latent_shape", "latent_mean",
                                                 "latent_std")}
    t0 = stamp("extract", t0)
    clf_dir = os.path.join(out, "classifier")
    # bf16 autocast where the CPU has native bf16: 92 s instead of 212 s for the 4 epochs there, the same
    # 92.6% test accuracy; on an AVX2-only CPU bf16 is 9x slower than fp32, so "auto" keeps fp32 there
    report["classifier"] = train_classifier(clf_dir, epochs=b["classifier_epochs"], max_samples=b["classifier_images"],
                                            mixed_precision="auto")
    classifier = ImageClassifier.from_pretrained(clf_dir).eval()
    report["judge_on_reconstructions"] = judge_on_reconstructions(tok_dir, classifier, b["eval_images"])
    names = report["class_names"] = report["classifier"].pop("class_names")
    t0 = stamp("classifier", t0)

    # the reference features stay cached: precision/recall of each of the four priors reuses them
    # instead of re-extracting the 10,000 test images (about 5 s per prior here)
    fid_settings = MeasureSettings(metrics=("fid", "prc"), extractor=ExtractorSpec(FASHION_MNIST, clf_dir),
                                   batch_size=500, cache_root=os.path.join(out, "fid-cache"),
                                   keep_reference_features=True)
    report["priors"] = {}
    os.makedirs(os.path.join(out, FIGURES), exist_ok=True)
    for family in families:
        run_dir = os.path.join(out, "runs", family)
        steps = [] if b["prior_steps"] is None else ["--max_train_steps", str(b["prior_steps"]),
                                                     "--checkpointing_steps", str(b["prior_steps"])]
        trained = train_prior(prior_config(["--config", prior_preset(family), "--shards", shards,
                                            "--output_dir", run_dir, *steps]))
        final = os.path.join(out, "pipelines", family)
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(trained, final)
        t_train = time.time() - t0
        pipe = load_pipeline(final)
        pipe.set_progress_bar_config(disable=True)
        t1 = time.time()
        acc = sample_class_accuracy(pipe, classifier, b["samples_per_class"])
        t_sample = time.time() - t1
        images = acc.pop("images")  # (C * n, 1, H, W) in [0, 1], class-major
        fid_dir = os.path.join(out, "fid", family)
        shutil.rmtree(fid_dir, ignore_errors=True)  # these samples are new: nothing to resume
        fid = evaluate_fid(fid_dir, "fashion-mnist-test", samples=images, value_range=(0, 1),
                           settings=fid_settings)["metrics"]
        n, g = b["samples_per_class"], b["grid_per_class"]
        grid = os.path.join(FIGURES, f"{family}-samples.png")
        labelled_grid(images.view(len(names), n, *images.shape[1:])[:, :g].reshape(-1, *images.shape[1:]), names, g,
                      os.path.join(out, grid), f"{family}: pipe(class_id=k), one row per class")
        with open(os.path.join(run_dir, "train_summary.json")) as f:
            summary = json.load(f)
        report["priors"][family] = {"pipeline": final, "size": summary["prior"], "train_steps": summary["train_steps"],
                                    "train_seconds": round(t_train, 1), "sample_seconds": round(t_sample, 1),
                                    "eval_seconds": round(time.time() - t1 - t_sample, 1),
                                    "last_loss": summary["last_loss"], "sampling": pipe.default_sampling(),
                                    "class_accuracy": acc["accuracy"], "per_class_accuracy": acc["per_class"],
                                    "samples": len(images), "fid": fid["fid"], "precision": fid["precision"],
                                    "recall": fid["recall"], "grid": grid}
        t0 = time.time()
        del pipe
    report["total_seconds"] = round(time.time() - start, 1)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    write_page(report, out)
    return report


def format_report(report: dict, out: str) -> str:
    m = report["tokenizer_metrics"]
    judge = report["classifier"]["test_accuracy"]
    lines = [f"tokenizer (LooC 256x4, d=16, {report['tokenizer_steps']} steps): PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}, "
             f"utilisation {m['utilisation']:.1%} on {m['images']} test images",
             f"judge: {judge:.1%} on real test images, {report['judge_on_reconstructions']:.1%} on their reconstructions "
             f"({report['classifier']['train_images']} training images, {report['classifier']['epochs']} epochs)",
             f"{'prior':6} {'size':9} {'steps':>5} {'train s':>8} {'sample s':>8} {'class acc':>9} {'/judge':>7} "
             f"{'FID':>6} {'prec':>5} {'recall':>6}"]
    for family, r in report["priors"].items():
        lines.append(f"{family:6} {r['size']:9} {r['train_steps']:5d} {r['train_seconds']:8.1f} {r['sample_seconds']:8.1f} "
                     f"{r['class_accuracy']:9.1%} {r['class_accuracy'] / judge:7.1%} {r['fid']:6.2f} "
                     f"{r['precision']:5.2f} {r['recall']:6.2f}")
    lines.append(f"total {report['total_seconds']:.0f} s; report: {out}/report.json, page: {out}/index.html")
    return "\n".join(lines)
