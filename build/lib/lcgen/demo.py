"""The main job, `lcgen demo`: both stages end to end on Fashion-MNIST on the CPU.

1. train the small LooC tokenizer (K = 256, d* = 4, d = 16: 7x7 positions x 4 indices, a 16x7x7
   latent the size of the image) and evaluate its reconstructions on the test split;
2. extract its tokens and latents from the training split (`priors.extract`);
3. train a Fashion-MNIST classifier on the real training set (the judge of the samples);
4. train GPT, LDM, DiT and SiT priors on the shards and save them as pipelines under
   <output>/pipelines/<family>;
5. sample every class through each pipeline, save the grids, and report the classifier's accuracy
   on the samples (does `pipe(class_id=k)` draw class k?).
"""
from __future__ import annotations

import json
import os
import shutil
import time

from torchvision.utils import save_image

from lcgen.eval.classifier import ImageClassifier, sample_class_accuracy, train_classifier
from lcgen.eval.evaluate_tokenizer import run as evaluate_tokenizer
from lcgen.pipelines import load_pipeline
from lcgen.priors.extract import extract
from lcgen.priors.train import parse_config as prior_config
from lcgen.priors.train import train as train_prior
from lcgen.tokenizer.train import parse_config as tokenizer_config
from lcgen.tokenizer.train import train as train_tokenizer

TOKENIZER_PRESET = "fashion-mnist-looc-d16-cpu"  # presets ship inside the package (lcgen.configs)
FAMILIES = ("gpt", "ldm", "dit", "sit")

# (tokenizer steps, tokenizer eval images, extracted train images, classifier images/epochs,
#  prior steps, samples per class)
BUDGETS = {
    "full": dict(tokenizer_steps=1000, eval_images=None, extract_images=None, classifier_images=None,
                 classifier_epochs=2, prior_steps=500, samples_per_class=20),
    "quick": dict(tokenizer_steps=150, eval_images=2000, extract_images=10000, classifier_images=10000,
                  classifier_epochs=1, prior_steps=60, samples_per_class=4),
}


def prior_preset(family: str) -> str:
    return f"fashion-mnist-{family}-cpu"


def run_demo(output: str, quick: bool = False, families=FAMILIES, lpips: str = "auto",
             lpips_vgg_weights: str | None = None) -> dict:
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise ValueError(f"unknown prior families {bad}; expected some of {FAMILIES}")
    b = BUDGETS["quick" if quick else "full"]
    out = os.path.abspath(output)
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
    report["classifier"] = train_classifier(clf_dir, epochs=b["classifier_epochs"], max_samples=b["classifier_images"])
    classifier = ImageClassifier.from_pretrained(clf_dir).eval()
    t0 = stamp("classifier", t0)

    report["priors"] = {}
    os.makedirs(os.path.join(out, "samples"), exist_ok=True)
    for family in families:
        run_dir = os.path.join(out, "runs", family)
        trained = train_prior(prior_config(["--config", prior_preset(family), "--shards", shards,
                                            "--output_dir", run_dir, "--max_train_steps", str(b["prior_steps"]),
                                            "--checkpointing_steps", str(b["prior_steps"])]))
        final = os.path.join(out, "pipelines", family)
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(trained, final)
        t_train = time.time() - t0
        pipe = load_pipeline(final)
        pipe.set_progress_bar_config(disable=True)
        t1 = time.time()
        acc = sample_class_accuracy(pipe, classifier, b["samples_per_class"])
        t_sample = time.time() - t1
        images = acc.pop("images")
        n = b["samples_per_class"]
        # one row per class
        save_image(images.view(pipe.num_classes, n, *images.shape[1:]).transpose(0, 1).reshape(-1, *images.shape[1:]),
                   os.path.join(out, "samples", f"{family}.png"), nrow=pipe.num_classes)
        with open(os.path.join(run_dir, "train_summary.json")) as f:
            summary = json.load(f)
        report["priors"][family] = {"pipeline": final, "size": summary["prior"], "train_steps": summary["train_steps"],
                                    "train_seconds": round(t_train, 1), "sample_seconds": round(t_sample, 1),
                                    "last_loss": summary["last_loss"], "sampling": pipe.default_sampling(),
                                    "class_accuracy": acc["accuracy"], "per_class_accuracy": acc["per_class"],
                                    "samples": os.path.join(out, "samples", f"{family}.png")}
        t0 = time.time()
        del pipe
    report["class_names"] = report["classifier"].pop("class_names")
    report["total_seconds"] = round(time.time() - start, 1)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def format_report(report: dict, out: str) -> str:
    m = report["tokenizer_metrics"]
    lines = [f"tokenizer (LooC 256x4, d=16, {report['tokenizer_steps']} steps): PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}, "
             f"utilisation {m['utilisation']:.1%} on {m['images']} test images",
             f"classifier: {report['classifier']['test_accuracy']:.1%} test accuracy "
             f"({report['classifier']['train_images']} training images)",
             f"{'prior':6} {'size':9} {'steps':>5} {'train s':>8} {'sample s':>8} {'class acc':>9}"]
    for family, r in report["priors"].items():
        lines.append(f"{family:6} {r['size']:9} {r['train_steps']:5d} {r['train_seconds']:8.1f} {r['sample_seconds']:8.1f} "
                     f"{r['class_accuracy']:9.1%}")
    lines.append(f"total {report['total_seconds']:.0f} s; report: {out}/report.json, grids: {out}/samples/")
    return "\n".join(lines)
