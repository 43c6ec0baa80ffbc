"""The shared core of generation FID and rFID: features of an image set and of a reference, each in a
resumable `FeatureStore` (the reference's in a cache keyed by what it depends on), then FID / IS /
KID / precision-recall through torch-fidelity's metric functions, and a JSON report.

FID is computed by `eval.fid.frechet_distance` (float64) on streamed statistics and cross-checked
against torch-fidelity's `fid_statistics_to_metric` on the same statistics; both land in the report.
Multi-process: every rank extracts its shards, the main process computes and writes the metrics.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from .class_fid import PROTOCOL as CLASS_FID_PROTOCOL
from .class_fid import class_fid, require_labels
from .extractors import INCEPTION, LAYERS, SPATIAL_CHANNELS, ExtractorSpec, build_extractor
from .feature_store import SUBSET_SEED, FeatureStore, rank_deficiency_warning, uniform_subset
from .fid import frechet_distance
from .metrics.inception_score import ADM_SPLIT_SIZE, inception_score
from .reference import default_cache_root

METRICS = ("fid", "sfid", "class_fid", "isc", "kid", "prc")
NEEDS_REFERENCE_FEATURES = {"kid", "prc", "class_fid"}  # metrics read the reference's features, not only its statistics
# how the Inception Score splits its samples, as each report names it
IS_SPLITS = {"adm": f"ADM: consecutive {ADM_SPLIT_SIZE:,}-image parts in sample order, mean over parts "
                    "(guided-diffusion evaluations/evaluator.py)",
             "torch-fidelity": "torch-fidelity: 10 equal parts after a shuffle with seed 2020"}
# how each extractor brings the uint8 images to its input, as the report names it
EXTRACTOR_INPUT = {INCEPTION: "TF1-compatible bilinear to 299x299 inside torch-fidelity's Inception, no antialiasing",
                   "lcgen-fashion-mnist": "grayscale, bilinear (antialiased) to 28x28",
                   "dinov2": "TF1-compatible bilinear to 224x224, ImageNet mean/std (torch-fidelity's DINOv2 "
                             "preprocessing; dgm-eval resizes with PIL instead, its pil_resize); features: the CLS token"}
MIN_TORCH_FIDELITY = (0, 4, 0)  # 0.3 has no precision/recall and ignores the float64 switch


def check_torch_fidelity() -> str:
    """torch-fidelity's version, or a clear error (before any work) when it is older than 0.4.0."""
    import torch_fidelity

    version = torch_fidelity.__version__
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:3])
    if numbers < MIN_TORCH_FIDELITY:
        raise ValueError(f"torch-fidelity {version} is too old: lcgen needs >= 0.4.0 (precision/recall, float64 "
                         "features); pip install 'torch-fidelity>=0.4.0'")
    return version


def precision_recall(sample_features: torch.Tensor, reference_features: torch.Tensor) -> dict:
    """Kynkaanniemi et al.'s k = 3 precision (share of samples inside the reference's manifold) and
    recall (share of the reference inside the samples'), through torch-fidelity 0.4.0, whose input1 is
    the generated set: a mode-collapsed set has precision near 1 and recall near 0
    (tests/test_measure.py checks the orientation on the installed version)."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    return prc_features_to_metric(sample_features, reference_features, save_cpu_ram=True, verbose=False)


@dataclass
class MeasureSettings:
    metrics: tuple[str, ...] = ("fid",)
    extractor: ExtractorSpec = field(default_factory=ExtractorSpec)
    batch_size: int = 64
    shard_size: int = 1000
    num_workers: int = 0
    cache_root: str | None = None
    keep_reference_features: bool = False
    kid_subset_size: int = 1000
    is_splits: str = "adm"
    reference_subset: int | None = 10_000  # KID/PR reference rows (ADM's reference batch size); None: all

    def check(self) -> "MeasureSettings":
        check_torch_fidelity()
        metrics = tuple(dict.fromkeys(self.metrics))
        bad = [m for m in metrics if m not in METRICS]
        if not metrics or bad:
            raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {list(self.metrics)}")
        if self.reference_subset is not None and self.reference_subset <= 1:
            raise ValueError(f"reference_subset must be > 1 or None, got {self.reference_subset}")
        if self.is_splits not in IS_SPLITS:
            raise ValueError(f"is_splits must be one of {sorted(IS_SPLITS)}, got {self.is_splits!r}")
        if self.batch_size <= 0 or self.shard_size <= 0 or self.kid_subset_size <= 1:
            raise ValueError("batch_size and shard_size must be > 0 and kid_subset_size > 1")
        if "isc" in metrics and "logits" not in LAYERS.get(self.extractor.name, {"logits": None}):
            raise ValueError(f"the Inception Score needs class logits; {self.extractor.name!r} gives only features "
                             f"(use --feature-extractor {INCEPTION})")
        if "sfid" in metrics and "spatial" not in LAYERS.get(self.extractor.name, {}):
            raise ValueError(f"sfid needs Inception's spatial features (ADM's mixed_6/conv); {self.extractor.name!r} "
                             f"has none: use --feature-extractor {INCEPTION}")
        self.metrics = metrics
        self.extractor = self.extractor.resolve()  # weights present (or a clear error) before any work
        return self


def metric_layers(settings: MeasureSettings) -> list[str]:
    """The extractor layers a run stores: pool and logits always, the spatial features for sFID only
    (they are as wide as the pool features, so they are not kept when no one asked)."""
    names = LAYERS[settings.extractor.name]
    return [names["pool"]] + ([names["logits"]] if "logits" in names else []) + (
        [names["spatial"]] if "sfid" in settings.metrics else [])


def distributed_state():
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as Accelerator() reads it


def feature_dim(extractor, device) -> int:
    """The pool-feature width, from one dummy image (checks the extractor runs, too)."""
    with torch.no_grad():
        return int(extractor(torch.zeros(1, 3, 32, 32, dtype=torch.uint8, device=device))[0].shape[1])


def reference_store(reference, settings: MeasureSettings, layers) -> FeatureStore:
    """The cache entry of a reference image set: its folder name is a digest of what the features
    depend on; the source fingerprint is in the meta, so a changed source is stale, not reused."""
    key = {"reference": {k: v for k, v in reference.images.description.items() if k != "images"},
           "extractor": settings.extractor.fingerprint(), "layers": list(layers)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", reference.spec.rstrip("/").split("/")[-1])[:40].strip("-")
    root = settings.cache_root or default_cache_root()
    meta = {**key, "source": reference.images.fingerprint() if hasattr(reference.images, "fingerprint") else {}}
    return FeatureStore(os.path.join(root, f"{slug}-{settings.extractor.name}-{digest}"), meta,
                        len(reference.images), settings.shard_size)


def extract_all(stores_and_sources, settings: MeasureSettings, layers, state, device):
    """Every rank fills its missing shards of the (prepared) stores."""
    if any(store.missing_shards() for store, _, _ in stores_and_sources):
        extractor = build_extractor(settings.extractor, layers, device)
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 features
        try:
            for store, source, batch_fn in stores_and_sources:
                store.extract(source, extractor, layers, settings.batch_size, state.process_index,
                              state.num_processes, batch_fn, settings.num_workers, device,
                              progress=state.is_local_main_process)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    state.wait_for_everyone()


def _frechet(samples: FeatureStore, reference, ref_store, layer: str, mu_key: str, sigma_key: str):
    """The Fréchet distance of the samples' `layer` statistics to the reference's: its precomputed
    ones (an ADM npz's mu/sigma, or mu_s/sigma_s for sFID) or those of its cached features."""
    mu1, sigma1, n1 = samples.statistics(layer)
    if reference.has_statistics:
        mu2, sigma2, n2 = getattr(reference, mu_key), getattr(reference, sigma_key), None
    else:
        mu2, sigma2, n2 = ref_store.statistics(layer)
    notes = [f"{who}: {w}" for n, who in ((n1, "samples"), (n2, "reference"))
             if n is not None and (w := rank_deficiency_warning(n, len(mu1)))]
    return frechet_distance(mu1, sigma1, mu2, sigma2), notes, (mu1, sigma1, mu2, sigma2)


def compute_metrics(samples: FeatureStore, reference, ref_store: FeatureStore | None,
                    settings: MeasureSettings, labels: tuple | None = None) -> tuple[dict, list[str]]:
    """The requested metrics of samples (input1, generated) against the reference (input2, real); each
    torch-fidelity metric module is imported only when its metric is asked for. `labels`: the
    (samples, reference) classes, for class_fid."""
    pool, logits = LAYERS[settings.extractor.name]["pool"], LAYERS[settings.extractor.name].get("logits")
    out, notes = {}, []
    if "fid" in settings.metrics:
        out["fid"], fd_notes, (mu1, sigma1, mu2, sigma2) = _frechet(samples, reference, ref_store, pool, "mu", "sigma")
        notes += fd_notes
        from torch_fidelity.metric_fid import fid_statistics_to_metric

        out["fid_torch_fidelity"] = fid_statistics_to_metric({"mu": mu1, "sigma": sigma1},
                                                             {"mu": mu2, "sigma": sigma2}, False)[
            "frechet_inception_distance"]
    if "sfid" in settings.metrics:
        out["sfid"], fd_notes, _ = _frechet(samples, reference, ref_store, LAYERS[settings.extractor.name]["spatial"],
                                         "mu_s", "sigma_s")
        notes += [f"sFID {n}" for n in fd_notes]
    if "class_fid" in settings.metrics:
        per_class, class_notes = class_fid(samples, labels[0], ref_store, labels[1], pool)
        out.update(per_class)
        notes += class_notes
    if "isc" in settings.metrics:
        if settings.is_splits == "adm":
            out["inception_score_mean"], out["inception_score_std"] = inception_score(samples.features(logits))
        else:
            from torch_fidelity.metric_isc import isc_features_to_metric

            isc = isc_features_to_metric(samples.features(logits), splits=10, shuffle=True, rng_seed=2020)
            out["inception_score_mean"] = isc["inception_score_mean"]
            out["inception_score_std"] = isc["inception_score_std"]
    if {"kid", "prc"} & set(settings.metrics):
        n_ref = ref_store.num_items
        rows = uniform_subset(n_ref, settings.reference_subset) if settings.reference_subset else None
        f1, f2 = samples.features(pool), ref_store.features(pool, rows)
        out["kid_prc_reference_images"] = len(f2)
        if len(f2) < n_ref:
            notes.append(f"KID/PR against a {len(f2):,}-image uniform subset (seed {SUBSET_SEED}) of the "
                         f"{n_ref:,} reference images (reference_subset)")
        if "kid" in settings.metrics:
            size = min(settings.kid_subset_size, len(f1), len(f2))
            if size < settings.kid_subset_size:
                notes.append(f"KID subset size lowered to {size} (fewer images than {settings.kid_subset_size})")
            from torch_fidelity.metric_kid import kid_features_to_metric

            kid = kid_features_to_metric(f1, f2, kid_subset_size=size, verbose=False)
            out.update({k: kid[k] for k in ("kernel_inception_distance_mean", "kernel_inception_distance_std")})
        if "prc" in settings.metrics:
            out.update(precision_recall(f1, f2))
    return out, notes


def check_reference(reference, settings: MeasureSettings) -> bool:
    """Whether the reference's images are needed (never for the Inception Score alone, which does not
    look at the reference); an error if they are and there are none."""
    if "sfid" in settings.metrics and reference.has_statistics and reference.mu_s is None:
        raise ValueError(f"sfid needs the reference's spatial statistics: {reference.spec!r} has mu/sigma but no "
                         "mu_s/sigma_s (ADM's reference batches carry both); use a split or image reference")
    needs_images = bool(NEEDS_REFERENCE_FEATURES & set(settings.metrics)) or (bool({"fid", "sfid"} & set(settings.metrics))
                                                                     and not reference.has_statistics)
    if needs_images and reference.images is None:
        raise ValueError(f"KID, precision/recall and class_fid need reference images; {reference.spec!r} holds only "
                         "statistics")
    if "class_fid" in settings.metrics:
        require_labels(reference.images.labels(), "reference", reference.spec)
    return needs_images


def measure(source, source_meta: dict, reference, output: str, settings: MeasureSettings, protocol: dict,
            batch_fn=None, state=None, device=None, notes: list[str] | None = None) -> dict | None:
    """Features of `source` (uint8 images; batch_fn maps its batches first) in <output>/features, the
    reference's in the cache, metrics in <output>/report.json (with the caller's `notes` among its
    warnings). Returns the report on the main process."""
    start = time.time()
    state = state or distributed_state()
    device = device or state.device
    needs_ref_images = check_reference(reference, settings)
    labels = None
    if "class_fid" in settings.metrics:
        labels = (require_labels(source.labels(), "sample", source_meta.get("path", "the samples")),
                  reference.images.labels())
    layers = metric_layers(settings)
    samples = FeatureStore(os.path.join(output, "features"),
                           {"images": source_meta, "extractor": settings.extractor.fingerprint(), "layers": layers},
                           len(source), settings.shard_size)
    jobs = [(samples, source, batch_fn)]
    ref_store = reference_store(reference, settings, layers) if needs_ref_images else None
    if ref_store is not None:
        logits = LAYERS[settings.extractor.name].get("logits")  # the reference's logits are never read
        stats_ready = not NEEDS_REFERENCE_FEATURES & set(settings.metrics) and all(
            ref_store.has_statistics(layer) for layer in layers if layer != logits)
        if not stats_ready:
            jobs.append((ref_store, reference.images, None))
    if state.is_main_process:
        for store, _, _ in jobs:
            store.prepare()
    state.wait_for_everyone()
    # a shared hold on the cached reference while this run reads it: another run may add to it, none deletes it
    with ref_store.in_use() if ref_store is not None else contextlib.nullcontext():
        extract_all(jobs, settings, layers, state, device)
        if not state.is_main_process:
            return None
        metrics, metric_notes = compute_metrics(samples, reference, ref_store, settings, labels)
    notes = list(notes or []) + metric_notes
    if ref_store is not None and not settings.keep_reference_features and not ref_store.drop_shards():
        notes.append(f"reference features kept in {ref_store.folder}: another run is using them")
    for note in notes:
        warnings.warn(note)
    import torch_fidelity

    report = {"metrics": metrics, "warnings": notes,
              "protocol": {**protocol, "reference": {"spec": reference.spec, **reference.description},
                           "feature_extractor": {**settings.extractor.fingerprint(), "layers": layers,
                                                 "weights_path": settings.extractor.weights_path},
                           "inception_resize": EXTRACTOR_INPUT.get(settings.extractor.name, EXTRACTOR_INPUT["dinov2"]),
                           "num_images": len(source), "num_processes": state.num_processes,
                           "tf32": "disabled during feature extraction", "fid": "lcgen float64 eigh "
                           "(fid_torch_fidelity: torch-fidelity's eigvals on the same statistics)",
                           "sfid": (f"ADM's definition: Fréchet distance of mixed_6/conv (torch-fidelity Mixed_6d.branch1x1), "
                                    f"first {SPATIAL_CHANNELS} channels, 17x17, flattened channels-last"
                                    if "sfid" in settings.metrics else None),
                           "class_fid": CLASS_FID_PROTOCOL if "class_fid" in settings.metrics else None,
                           "kid_subsets": 100 if "kid" in settings.metrics else None,
                           "inception_score_splits": IS_SPLITS[settings.is_splits] if "isc" in settings.metrics
                           else None},
              "reference_cache": ref_store.folder if ref_store else None,
              "versions": {"torch": torch.__version__, "torch_fidelity": torch_fidelity.__version__,
                           "numpy": np.__version__},
              "seconds": round(time.time() - start, 1)}
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "report.json.tmp"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    os.replace(os.path.join(output, "report.json.tmp"), os.path.join(output, "report.json"))
    return report

