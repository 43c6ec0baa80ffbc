"""The four prior families behind one training loop: how each is built from a named size and the
token-shard metadata, what it reads ("indices" or "latents"), its loss, and its pipeline."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dit import DiTModel, parse_dit_size
from .gpt import GPT_SIZES, GPTPrior
from .ldm import build_ldm_unet
from .transport import Interpolant

FAMILIES = ("gpt", "ldm", "dit", "sit")
SIZE_PREFIX = {"gpt": "GPT-", "ldm": "LDM-", "dit": "DiT-", "sit": "SiT-"}


def data_key(family: str) -> str:
    return "indices" if family == "gpt" else "latents"


def check_family(family: str, size: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"prior.family must be one of {FAMILIES}, got {family!r}")
    if not size.startswith(SIZE_PREFIX[family]):
        raise ValueError(f"prior.size {size!r} does not name a {family} size (expected {SIZE_PREFIX[family]}...)")
    if family == "gpt" and size not in GPT_SIZES:
        raise ValueError(f"unknown GPT size {size!r}: expected one of {sorted(GPT_SIZES)}")
    if family in ("dit", "sit"):
        parse_dit_size(size)


def build_prior(family: str, size: str, num_classes: int, meta: dict, options: dict | None = None):
    """A freshly initialised prior for the shards described by `meta` (extraction.json)."""
    check_family(family, size)
    options = dict(options or {})
    if family == "gpt":
        layers, heads, width = GPT_SIZES[size]
        h, w = meta["index_shape"][:2]
        kwargs = dict(codebook_size=meta["codebook_size"], grid_height=h, grid_width=w,
                      tokens_per_position=meta["tokens_per_position"], num_classes=num_classes,
                      hidden_size=width, num_layers=layers, num_heads=heads)
        return GPTPrior(**{**kwargs, **options})
    channels, side, side_w = meta["latent_shape"]
    if side != side_w:
        raise ValueError(f"the latent priors need square latents, got {side}x{side_w}")
    if family == "ldm":
        return build_ldm_unet(size, side, channels, num_classes, **options)
    depth, width, heads, patch = parse_dit_size(size)
    kwargs = dict(sample_size=side, patch_size=patch, in_channels=channels, hidden_size=width, num_layers=depth,
                  num_heads=heads, num_classes=num_classes)
    return DiTModel(**{**kwargs, **options})


def drop_labels(labels: torch.Tensor, prob: float, null_class: int) -> torch.Tensor:
    """Classifier-free guidance training: each label becomes the null class with probability `prob`."""
    if prob <= 0:
        return labels
    return torch.where(torch.rand(labels.shape, device=labels.device) < prob, torch.full_like(labels, null_class),
                       labels)


class PriorObjective:
    """loss(model, batch) for a family. Latents are normalised as (z - shift) * scale first."""

    def __init__(self, family: str, num_classes: int, class_dropout_prob: float, noise_scheduler=None,
                 path_type: str = "linear", latent_shift: float = 0.0, latent_scale: float = 1.0,
                 loss_chunk_size: int = 4096):
        self.family, self.num_classes, self.p = family, num_classes, class_dropout_prob
        self.noise_scheduler, self.interpolant = noise_scheduler, Interpolant(path_type)
        self.shift, self.scale, self.chunk = latent_shift, latent_scale, loss_chunk_size

    def __call__(self, model, batch) -> torch.Tensor:
        labels = drop_labels(batch["labels"], self.p if self.num_classes else 0.0, self.num_classes)
        if self.num_classes == 0:
            labels = torch.zeros_like(labels)  # the only class row is the null row
        if self.family == "gpt":
            return model(batch["indices"], labels, return_loss=True, loss_chunk_size=self.chunk)
        x = (batch["latents"] - self.shift) * self.scale
        noise = torch.randn_like(x)
        if self.family == "sit":
            t = torch.rand(x.shape[0], device=x.device)
            xt, target = self.interpolant.interpolate(x, noise, t)
            pred = model(xt, t * 1000.0, class_labels=labels)
        else:
            t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x.shape[0],), device=x.device)
            xt, target = self.noise_scheduler.add_noise(x, noise, t), noise
            pred = model(xt, t, class_labels=labels)
            pred = pred.sample if hasattr(pred, "sample") else pred
        return F.mse_loss(pred.float(), target.float())
