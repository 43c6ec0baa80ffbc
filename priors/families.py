"""The four prior families behind one training loop: how each is built from a named size and the
token-shard metadata, what it reads ("indices" or "latents"), its loss, and its pipeline."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from .dit import DiTModel, parse_dit_size
from .gpt import GPT_SIZES, GPTPrior
from .ldm import build_ldm_unet
from .latent_space import LatentSpace
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
    if options.get("learn_sigma"):
        raise ValueError("learn_sigma is for converted DiT/SiT checkpoints: lcgen's training loop has no "
                         "variational-bound term to train the variance half (train with learn_sigma false)")
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


PREDICTION_TYPES = ("epsilon", "v_prediction")


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023), per sample: min(SNR, γ) / SNR for an ε target and
    min(SNR, γ) / (SNR + 1) for a v target, with SNR = ᾱ_t / (1 − ᾱ_t)."""
    snr = compute_snr(noise_scheduler, timesteps)
    clipped = snr.clamp(max=gamma)
    return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)


class PriorObjective:
    """loss(model, batch) for a family. Latents enter the prior's space first (`LatentSpace`). LDM and
    DiT regress ε or v (`prediction_type`) at DDPM timesteps, optionally min-SNR-γ weighted; SiT
    regresses the transport velocity; GPT is next-token cross-entropy."""

    def __init__(self, family: str, num_classes: int, class_dropout_prob: float, noise_scheduler=None,
                 path_type: str = "linear", latent_space: LatentSpace | None = None, loss_chunk_size: int = 4096,
                 snr_gamma: float | None = None):
        self.family, self.num_classes, self.p = family, num_classes, class_dropout_prob
        self.noise_scheduler, self.interpolant = noise_scheduler, Interpolant(path_type)
        self.latent_space, self.chunk, self.snr_gamma = latent_space or LatentSpace(), loss_chunk_size, snr_gamma

    def __call__(self, model, batch) -> torch.Tensor:
        labels = drop_labels(batch["labels"], self.p if self.num_classes else 0.0, self.num_classes)
        if self.num_classes == 0:
            labels = torch.zeros_like(labels)  # the only class row is the null row
        if self.family == "gpt":
            return model(batch["indices"], labels, return_loss=True, loss_chunk_size=self.chunk)
        x = self.latent_space.to_prior(batch["latents"].float())
        noise = torch.randn_like(x)
        if self.family == "sit":
            t = torch.rand(x.shape[0], device=x.device)
            xt, target = self.interpolant.interpolate(x, noise, t)
            pred = model(xt, t * 1000.0, class_labels=labels)
            return F.mse_loss(pred.float(), target.float())
        sched = self.noise_scheduler
        t = torch.randint(0, sched.config.num_train_timesteps, (x.shape[0],), device=x.device)
        xt = sched.add_noise(x, noise, t)
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(x, noise, t)
        pred = model(xt, t, class_labels=labels)
        pred = pred.sample if hasattr(pred, "sample") else pred
        per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        if self.snr_gamma:
            per_sample = per_sample * min_snr_weights(sched, t, self.snr_gamma, sched.config.prediction_type)
        return per_sample.mean()
