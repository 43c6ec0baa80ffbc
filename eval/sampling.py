"""Sample a pipeline at scale for FID: `accelerate launch -m lcgen.eval.sampling --pipeline DIR --output DIR
--num-samples 50000 [--class-balanced] [--npz]`.

Image i (0 <= i < N) gets its own generator seeded by (seed, i) and its own class (i mod C when
class-balanced, else drawn from that generator, as DiT's sample_ddp.py draws uniformly), so the
images do not depend on the number of processes or the batch size. Rank r makes the images
i = r, r + W, ... that are not on disk yet: an interrupted run resumes without redoing finished
images, and no two ranks write the same image. PNGs are written atomically (tmp + rename); with
`--npz` the main process packs them, in index order, into ADM's evaluator format: `arr_0` uint8
(N, H, W, 3), `arr_1` int64 labels. Pixels follow `--uint8-rule` (`image_inputs.UINT8_RULES`):
"round", uint8(clamp(127.5 x + 128)) of x in [-1, 1] as DiT and LlamaGen, or "truncate",
uint8(clamp((x + 1) 127.5)) as ADM's image_sample.py; grayscale is repeated to 3 channels.

samples.json records what the images depend on: a digest of the pipeline's weights, its sampling
settings resolved (saved defaults merged with this run's overrides), the seed, the labels rule and
the uint8 rule. A folder drawn with anything else is refused with what changed, or, with
`--overwrite-samples`, its images are deleted and redrawn.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import zipfile

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from tqdm.auto import tqdm

from lcgen.checks import check_bool, check_output_folder
from lcgen.log import configure as configure_logging
from lcgen.pipelines import load_pipeline

from .image_inputs import UINT8_RULES, float_to_uint8

PNG = "{:06d}.png"
COMPILE_HELP = "run the prior through torch.compile (traced once per batch size; the same samples)"


def image_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2 ** 63)


def class_for(index: int, num_classes: int, seed: int, balanced: bool) -> int | None:
    if num_classes == 0:
        return None
    if balanced:
        return index % num_classes
    g = torch.Generator().manual_seed(image_seed(seed, index) ^ 0x5EED)
    return int(torch.randint(num_classes, (1,), generator=g))


def to_uint8(images01: torch.Tensor, rule: str = "round") -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W, 3) uint8 by `rule` applied to x = 2y - 1."""
    u8 = float_to_uint8(images01.float() * 2 - 1, rule).permute(0, 2, 3, 1).cpu().numpy()
    return np.repeat(u8, 3, axis=-1) if u8.shape[-1] == 1 else u8


def weights_digest(pipe) -> str:
    """sha256 over every tensor of the pipeline's modules (names, shapes, dtypes and bytes): new
    weights saved into the same folder give a new digest."""
    h = hashlib.sha256()
    for name, component in sorted(pipe.components.items()):
        if isinstance(component, torch.nn.Module):
            for key, t in sorted(component.state_dict().items()):
                h.update(f"{name}.{key}:{tuple(t.shape)}:{t.dtype};".encode())
                h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def resolved_sampling(pipe, overrides: dict) -> dict:
    """The pipeline's saved sampling settings with this run's overrides: what the samples used."""
    saved = {k: v for k, v in pipe.config.items() if not k.startswith("_") and k not in pipe.components
             and k not in ("id2label", "info")}
    return json.loads(json.dumps({**saved, **overrides}, default=str))


def _describe_change(key: str, old, new) -> str:
    if key == "weights":
        return "the pipeline's weights changed"
    if isinstance(old, dict) and isinstance(new, dict):
        return ", ".join(f"{key}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                         if old.get(k) != new.get(k))
    return f"{key}: {old!r} -> {new!r}"


def _check_resumable(output: str, settings: dict, overwrite: bool = False) -> None:
    """Images already in `output` are reused only if they were drawn with the same settings; with
    `overwrite`, images drawn otherwise are deleted (only the files this module writes)."""
    path = os.path.join(output, "samples.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        old = json.load(f)
    changed = [k for k in settings if json.loads(json.dumps(settings[k])) != old.get(k)]
    if not changed:
        return
    if not overwrite:
        what = "; ".join(_describe_change(k, old.get(k), settings[k]) for k in changed)
        raise ValueError(f"{output!r} holds samples drawn otherwise ({what}): pass --overwrite-samples to redraw "
                         "them, or use a new output folder")
    for name in os.listdir(output):
        stem = name[:-len(".png")] if name.endswith(".png") else ""
        if (stem.isdigit() and len(stem) == 6) or name in ("samples.json", "samples.npz"):
            os.remove(os.path.join(output, name))


def generate(pipeline: str, output: str, num_samples: int, batch_size: int = 64, seed: int = 0,
             class_balanced: bool = False, npz: bool = False, device: str | None = None, uint8_rule: str = "round",
             overwrite_samples: bool = False, require_classes: bool = False, compile: bool = False,
             **sample_kwargs) -> dict:
    """Make the missing images of [0, num_samples) on this rank; returns counts, the resolved sampling
    settings (and the npz path). require_classes: refuse an unconditional pipeline before sampling
    (per-class FID needs a class per image). compile: the pipelines' `compile=True` (speed only: not
    part of the recorded settings, so a run may resume with or without it)."""
    from PIL import Image

    if num_samples <= 0 or batch_size <= 0:
        raise ValueError(f"num_samples and batch_size must be > 0, got {num_samples} and {batch_size}")
    if uint8_rule not in UINT8_RULES:
        raise ValueError(f"uint8_rule must be one of {sorted(UINT8_RULES)}, got {uint8_rule!r}")
    check_bool("compile", compile)
    check_output_folder("output", output)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as Accelerator() reads it
    pipe = load_pipeline(pipeline)
    pipe.check_sampling(**sample_kwargs)  # a bad option fails here, not after samples.json is written
    if require_classes and not pipe.num_classes:
        raise ValueError(f"{pipeline!r} is unconditional: class_fid needs a class-conditional pipeline")
    settings = {"pipeline": os.path.abspath(pipeline), "weights": weights_digest(pipe), "seed": seed,
                "class_balanced": class_balanced, "sampling": resolved_sampling(pipe, sample_kwargs),
                "uint8_rule": uint8_rule}
    if overwrite_samples:  # the main process deletes what was drawn otherwise, then every rank checks
        if state.is_main_process:
            _check_resumable(output, settings, overwrite=True)
        state.wait_for_everyone()
    _check_resumable(output, settings)
    pipe = pipe.to(device or state.device)
    os.makedirs(output, exist_ok=True)
    if state.is_main_process and not os.path.isfile(os.path.join(output, "samples.json")):
        _write_json(os.path.join(output, "samples.json"), settings)  # first: an interrupted run is checked too
    pipe.set_progress_bar_config(disable=True)
    n_cls = pipe.num_classes
    mine = [i for i in range(state.process_index, num_samples, state.num_processes)
            if not os.path.isfile(os.path.join(output, PNG.format(i)))]
    made = 0
    for start in tqdm(range(0, len(mine), batch_size), disable=not state.is_local_main_process, desc="sampling"):
        idx = mine[start:start + batch_size]
        gens = [torch.Generator(pipe._execution_device).manual_seed(image_seed(seed, i)) for i in idx]
        labels = [class_for(i, n_cls, seed, class_balanced) for i in idx]
        # one generator per image: its noise does not depend on its batch mates or on the rank
        if n_cls:
            out = pipe(class_id=labels, generator=gens, output_type="pt", compile=compile, **sample_kwargs).images
        else:
            out = pipe(num_images_per_class=len(idx), generator=gens, output_type="pt", compile=compile,
                       **sample_kwargs).images
        for i, arr in zip(idx, to_uint8(out, uint8_rule)):
            path = os.path.join(output, PNG.format(i))
            Image.fromarray(arr).save(path + ".tmp.png")
            os.replace(path + ".tmp.png", path)
        made += len(idx)
    state.wait_for_everyone()
    result = {"made": made, "rank": state.process_index, "processes": state.num_processes,
              "sampling": settings["sampling"], "uint8_rule": uint8_rule}
    if state.is_main_process:
        labels = [class_for(i, n_cls, seed, class_balanced) for i in range(num_samples)]
        _write_json(os.path.join(output, "samples.json"), {**settings, "num_samples": num_samples, "labels": labels})
        if npz:
            result["npz"] = pack_npz(output, num_samples, [-1 if c is None else c for c in labels])
    return result


def _write_json(path: str, obj) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)  # atomic: other ranks may be reading it


def pack_npz(output: str, num_samples: int, labels: list[int]) -> str:
    """samples.npz (ADM: arr_0 uint8 (N, H, W, 3), arr_1 labels) written image by image through a
    memory-mapped .npy, so packing 50,000 images never holds them all in memory."""
    from PIL import Image

    first = np.asarray(Image.open(os.path.join(output, PNG.format(0))).convert("RGB"))
    tmp = os.path.join(output, "arr_0.tmp.npy")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(num_samples, *first.shape))
    for i in range(num_samples):
        arr[i] = np.asarray(Image.open(os.path.join(output, PNG.format(i))).convert("RGB"))
    arr.flush()
    del arr
    path = os.path.join(output, "samples.npz")
    with zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_STORED, allowZip64=True) as z:  # as np.savez
        z.write(tmp, "arr_0.npy")
        with z.open("arr_1.npy", "w") as f:
            np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))
    os.remove(tmp)
    os.replace(path + ".tmp", path)
    return path


def add_sample_file_flags(p: argparse.ArgumentParser) -> None:
    """--uint8-rule and --overwrite-samples, shared with `lcgen evaluate fid`."""
    p.add_argument("--uint8-rule", default="round", choices=sorted(UINT8_RULES),
                   help="round: clamp(127.5 x + 128) as DiT/LlamaGen; truncate: (x + 1) 127.5 as ADM/VQGAN-LC")
    p.add_argument("--overwrite-samples", action="store_true",
                   help="redraw the images of a folder drawn with other weights or settings (else refused)")


def main(argv=None):
    p = argparse.ArgumentParser(prog="lcgen.eval.sampling", description=__doc__.split("\n")[0])
    p.add_argument("--pipeline", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--num-samples", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class-balanced", action="store_true")
    p.add_argument("--npz", action="store_true")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--num-inference-steps", type=int, default=None)
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    add_sample_file_flags(p)
    a = p.parse_args(argv)
    configure_logging()
    kwargs = {k: v for k, v in {"guidance_scale": a.guidance_scale,
                                "num_inference_steps": a.num_inference_steps}.items() if v is not None}
    try:
        r = generate(a.pipeline, a.output, a.num_samples, a.batch_size, a.seed, a.class_balanced, a.npz,
                     uint8_rule=a.uint8_rule, overwrite_samples=a.overwrite_samples, compile=a.compile, **kwargs)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"lcgen.eval.sampling: error: {e}")
    print(json.dumps(r))


if __name__ == "__main__":
    main(sys.argv[1:])
