"""Generation FID/IS/KID/PR of a pipeline (sampled at scale by eval.sampling) or of existing samples (a
folder or an ADM `.npz`) against a reference (eval.reference). Everything is checked before sampling:
the metrics, the feature-extractor weights, the reference, the sample source and the sample count.

Resumption: samples already on disk are not redrawn, feature shards already written are not
recomputed, and the reference's statistics come from the cache.
"""
from __future__ import annotations

import os
import warnings

import torch

from lcgen.checks import check_output_folder
from .extractors import LAYERS, SPATIAL_CHANNELS, SPATIAL_DIM, build_extractor
from .feature_store import rank_deficiency_warning
from .image_inputs import UINT8_RULES, FolderImages, NpzImages, TensorImages
from .measure import MeasureSettings, check_reference, distributed_state, feature_dim, measure
from .reference import resolve_reference
from .sampling import generate


def _open_samples(samples, value_range):
    if isinstance(samples, torch.Tensor):
        return TensorImages(samples, value_range)
    if samples.endswith(".npz"):
        return NpzImages(samples)
    if os.path.isdir(samples):
        return FolderImages(samples)
    raise ValueError(f"samples {samples!r} is neither an image folder nor an .npz file")


def evaluate_fid(output: str, reference: str, pipeline: str | None = None, samples: str | None = None,
                 num_samples: int | None = None, settings: MeasureSettings | None = None, seed: int = 0,
                 class_balanced: bool = False, sampling_batch_size: int | None = None, npz: bool = False,
                 data_dir: str | None = None, preprocessing: str = "adm", reference_resolution: int | None = None,
                 reference_max_samples: int | None = None, value_range: tuple | None = None,
                 uint8_rule: str = "round", overwrite_samples: bool = False, **sample_kwargs) -> dict | None:
    """Sample (if `pipeline`), extract features, compare with `reference`; writes <output>/report.json.

    Args:
        output: the evaluation folder (samples/, features/, report.json); rerun to resume.
        reference: a split (imagenet-256-val ...), a statistics .npz (ADM) or an image folder / .npz.
        pipeline / samples: what to evaluate — a saved lcgen pipeline, or a folder / .npz of samples, or
            a (N, C, H, W) tensor: uint8, or floats with their value_range (-1, 1) or (0, 1).
        num_samples: images to draw from the pipeline (50,000 for published numbers).
        settings: metrics, feature extractor, batch sizes, cache (eval.measure.MeasureSettings).
        seed, class_balanced, sampling_batch_size, npz, uint8_rule, overwrite_samples, **sample_kwargs:
            as eval.sampling.generate.
        data_dir, preprocessing, reference_resolution, reference_max_samples: for split references.
    """
    if uint8_rule not in UINT8_RULES:
        raise ValueError(f"uint8_rule must be one of {sorted(UINT8_RULES)}, got {uint8_rule!r}")
    if (pipeline is None) == (samples is None):
        raise ValueError("give exactly one of pipeline (to sample) or samples (a folder or .npz)")
    if pipeline is not None:
        if not num_samples or num_samples <= 0:
            raise ValueError(f"num_samples must be > 0 to sample a pipeline, got {num_samples}")
        if not os.path.isfile(os.path.join(pipeline, "model_index.json")):
            raise ValueError(f"{pipeline!r} is not a saved lcgen pipeline (no model_index.json)")
    elif sample_kwargs or num_samples:
        raise ValueError("num_samples and sampling options apply to a pipeline, not to existing samples")
    if isinstance(samples, str) and not os.path.exists(samples):
        raise FileNotFoundError(f"samples do not exist: {samples}")
    if isinstance(reference, str) and (reference.endswith(".npz") or os.sep in reference) \
            and not os.path.exists(reference):  # a file or folder, not a split name
        raise FileNotFoundError(f"reference does not exist: {reference}")
    check_output_folder("output", output)
    settings = (settings or MeasureSettings()).check()  # after the cheap checks: it resolves the extractor's weights
    ref = resolve_reference(reference, data_dir, preprocessing, reference_resolution, reference_max_samples)
    check_reference(ref, settings)
    source = None if pipeline is not None else _open_samples(samples, value_range)
    state = distributed_state()

    dim = feature_dim(build_extractor(settings.extractor, [LAYERS[settings.extractor.name]["pool"]]), "cpu")
    if ref.has_statistics and len(ref.mu) != dim:
        raise ValueError(f"{reference!r} holds {len(ref.mu)}-dimensional statistics but {settings.extractor.name} "
                         f"gives {dim}-dimensional features: they cannot be compared")
    if "sfid" in settings.metrics and ref.mu_s is not None and len(ref.mu_s) != SPATIAL_DIM:
        raise ValueError(f"{reference!r} holds {len(ref.mu_s)}-dimensional spatial statistics (mu_s); ADM's sFID "
                         f"features have {SPATIAL_DIM} (17 x 17 x {SPATIAL_CHANNELS})")
    n = num_samples if pipeline else len(source)
    if (note := rank_deficiency_warning(n, dim)) and state.is_main_process:  # warn before the long part
        warnings.warn(f"samples: {note}")
    protocol = {"evaluation": "generation"}
    if pipeline:
        sample_dir = os.path.join(output, "samples")
        result = generate(pipeline, sample_dir, num_samples, sampling_batch_size or settings.batch_size, seed,
                          class_balanced, npz, uint8_rule=uint8_rule, overwrite_samples=overwrite_samples,
                          require_classes="class_fid" in settings.metrics, **sample_kwargs)
        source = FolderImages(sample_dir, names=[f"{i:06d}.png" for i in range(num_samples)])
        protocol.update({"pipeline": os.path.abspath(pipeline), "num_samples": num_samples, "seed": seed,
                         "labels": "class-balanced (i mod C)" if class_balanced else "uniform random per image",
                         "sampling": result["sampling"], "uint8": f"{uint8_rule}: {UINT8_RULES[uint8_rule]}, PNG",
                         "npz": result.get("npz")})
    else:
        protocol.update({"samples": os.path.abspath(samples) if isinstance(samples, str) else "tensor"})
    meta = dict(source.description)
    meta.update(source.fingerprint())
    return measure(source, meta, ref, output, settings, protocol, state=state, notes=_resolution_notes(source, ref))


def _resolution_notes(source, ref) -> list[str]:
    """A warning for the report when samples and reference images differ in size: the extractor
    resizes both, so the distance then measures the resolution gap as well as the images."""
    if ref.images is None:  # statistics only: the reference's resolution is not known
        return []
    sample_size, ref_size = tuple(source[0].shape[-2:]), tuple(ref.images[0].shape[-2:])
    if sample_size == ref_size:
        return []
    return [f"samples are {sample_size[0]}x{sample_size[1]} but the reference images {ref_size[0]}x{ref_size[1]}: "
            "both are resized to the feature extractor's input, so the metrics also measure the size gap"]
