"""rFID of a tokenizer: the reconstructions of a split against the same split.

Protocols:
- "adm" (default; LlamaGen's rFID): both the real and the reconstructed images are the split after
  ADM's `center_crop_arr` at R (256), reconstructions as uint8 by the "round" rule (clamp(127.5 x +
  128), DiT's and LlamaGen's; `--uint8-rule truncate` for ADM's own); torch-fidelity's Inception
  resizes both to 299 the same way. The real statistics are the same cache entry as the generation
  reference `<dataset>-R-<split>`, so they are computed once for every tokenizer and prior.
- "vqgan-lc": VQGAN-LC's published setup, approximated: reconstructions of SmallestMaxSize(R) +
  CenterCrop(R) images against the *uncropped* split, reconstructions truncated to uint8 as VQGAN-LC's
  eval_reconstruction.py (np.uint8 of (x + 1) 127.5 / 255 * 255; that float round trip can drop an
  exact integer by one, which lcgen does not copy), both stretched to 299x299 with PIL bicubic
  (clean-fid's resize). Differences from clean-fid: the stretched images are rounded to uint8 (clean-fid
  keeps floats) and the Inception is torch-fidelity's, not NVIDIA's TorchScript copy. The crop mismatch
  between the two sides inflates rFID; numbers from this protocol are NOT comparable to ADM-protocol
  rFID (nor exactly to VQGAN-LC's clean-fid values).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from lcgen.tokenizer import VQTokenizer

from .extractors import folder_digest
from .image_inputs import UINT8_RULES, SplitImages, float_to_uint8

from .measure import MeasureSettings, distributed_state, measure
from .reference import Reference

PROTOCOLS = ("adm", "vqgan-lc")
CLEAN_FID_SIZE = 299


def stretch_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, size, size) by PIL bicubic, per image, ignoring the aspect ratio."""
    from PIL import Image

    out = [np.asarray(Image.fromarray(img.permute(1, 2, 0).cpu().numpy()).resize((size, size), Image.BICUBIC))
           for img in images]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(images.device)


def reconstructor(tokenizer, stretch_to: int | None = None, uint8_rule: str = "round"):
    """uint8 batch -> uint8 reconstructions by `uint8_rule` (grayscale tokenizers see one channel, give
    back three)."""
    channels = tokenizer.config.in_channels

    @torch.no_grad()
    def fn(u8: torch.Tensor) -> torch.Tensor:
        x = u8.float() / 127.5 - 1
        x = x[:, :1] if channels == 1 else x
        y = tokenizer.decode(tokenizer.encode(x).quantized).float().clamp(-1, 1)
        out = float_to_uint8(y, uint8_rule).expand(-1, 3, -1, -1).contiguous()
        return stretch_uint8(out, stretch_to) if stretch_to else out

    return fn


def evaluate_rfid(tokenizer: str, output: str, dataset: str = "imagenet", split: str = "validation",
                  resolution: int = 256, protocol: str = "adm", data_dir: str | None = None,
                  max_samples: int | None = None, settings: MeasureSettings | None = None,
                  uint8_rule: str | None = None) -> dict | None:
    """Writes <output>/report.json with the rFID of the saved tokenizer folder `tokenizer`.
    uint8_rule: how reconstructions become pixels (`image_inputs.UINT8_RULES`); None: the protocol's,
    "round" for adm (LlamaGen), "truncate" for vqgan-lc (its eval_reconstruction.py)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    uint8_rule = uint8_rule or ("truncate" if protocol == "vqgan-lc" else "round")
    if uint8_rule not in UINT8_RULES:
        raise ValueError(f"uint8_rule must be one of {sorted(UINT8_RULES)}, got {uint8_rule!r}")
    if not resolution or resolution <= 0:
        raise ValueError(f"resolution must be > 0, got {resolution}")
    if not os.path.isfile(os.path.join(tokenizer, "config.json")):
        raise ValueError(f"{tokenizer!r} is not a saved VQTokenizer (no config.json); pass <run>/model")
    settings = (settings or MeasureSettings()).check()
    if set(settings.metrics) - {"fid", "class_fid", "kid", "prc"}:
        raise ValueError("rFID evaluates fid, class_fid, kid and prc (the Inception Score is not a reconstruction "
                         "metric)")
    state = distributed_state()
    if protocol == "adm":
        source = real = SplitImages(dataset, split, resolution, "adm", data_dir, max_samples)
        stretch = None
    else:
        source = SplitImages(dataset, split, resolution, "center", data_dir, max_samples)
        real = SplitImages(dataset, split, CLEAN_FID_SIZE, "stretch", data_dir, max_samples)
        stretch = CLEAN_FID_SIZE
    reference = Reference(f"{dataset}-{real.description['resolution']}-{split}", real, description=real.description)
    model = VQTokenizer.from_pretrained(tokenizer).to(state.device).eval()
    meta = {**source.description, **source.fingerprint(), "reconstructed_by": os.path.abspath(tokenizer),
            "tokenizer_sha256": folder_digest(tokenizer), "protocol": protocol, "uint8_rule": uint8_rule}
    report_protocol = {
        "evaluation": "rFID", "protocol": protocol, "tokenizer": os.path.abspath(tokenizer),
        "reconstructions": "ADM center_crop_arr" if protocol == "adm" else
        f"SmallestMaxSize({resolution}) + CenterCrop({resolution}), reconstructed, PIL-bicubic stretch to 299",
        "reals": "the same crop" if protocol == "adm" else "uncropped, PIL-bicubic stretch to 299",
        "comparable_to": "LlamaGen/ADM-style rFID" if protocol == "adm" else
        "nothing exactly: approximates VQGAN-LC's clean-fid setup (not comparable to ADM-protocol rFID)",
        "uint8": f"{uint8_rule}: {UINT8_RULES[uint8_rule]}, of reconstructions clamped to [-1, 1]"}
    return measure(source, meta, reference, output, settings, report_protocol,
                   batch_fn=reconstructor(model, stretch, uint8_rule), state=state)

