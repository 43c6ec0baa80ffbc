"""Where code vectors come from. Every codebook exposes `weight()` -> (G, K, d): G codebooks
(1 when shared by all chunks, m for product quantisation) of K entries of size d."""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from lcgen.cpu_linear import Linear

from .distributed import all_reduce_sum


class LearnedCodebook(nn.Module):
    """Trainable codebook, uniform(-1/K, 1/K) as in taming, CVQ-VAE and LooC."""

    def __init__(self, num_codebooks: int, codebook_size: int, code_dim: int):
        super().__init__()
        w = torch.empty(num_codebooks, codebook_size, code_dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        self.embed = nn.Parameter(w)

    def weight(self) -> torch.Tensor:
        return self.embed

    @torch.no_grad()
    def assign(self, new: torch.Tensor) -> None:
        """Overwrite the code vectors (online clustering); invisible to autograd like the official `.data =`."""
        self.embed.data.copy_(new)


def load_init_codebook(init_codebook, codebook_size: int) -> torch.Tensor:
    """A (K, D) float tensor from a tensor or a safetensors file, checked before any use."""
    if isinstance(init_codebook, (str, os.PathLike)):
        path = os.fspath(init_codebook)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"init_codebook file not found: {path!r}")
        if not path.endswith(".safetensors"):
            raise ValueError(f"init_codebook must be a .safetensors file (never a pickle), got {path!r}")
        try:
            with safe_open(path, framework="pt") as f:
                keys = list(f.keys())
                key = "codebook" if "codebook" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise ValueError(f"{path!r} holds tensors {keys}; expected one named 'codebook'")
                init_codebook = f.get_tensor(key)
        except SafetensorError as e:
            raise ValueError(f"init_codebook {path!r} is not a readable safetensors file (truncated?): {e}") from None
    if not isinstance(init_codebook, torch.Tensor):
        raise TypeError(f"init_codebook must be a tensor or a .safetensors path, got {type(init_codebook).__name__}")
    if init_codebook.ndim != 2 or init_codebook.shape[0] != codebook_size:
        raise ValueError(f"init_codebook must have shape (codebook_size={codebook_size}, D), got {tuple(init_codebook.shape)}")
    if not init_codebook.is_floating_point():
        raise TypeError(f"init_codebook must be floating point, got {init_codebook.dtype}")
    if not torch.isfinite(init_codebook).all():
        raise ValueError("init_codebook contains NaN or inf")
    return init_codebook.detach().float().clone()


PROJECTOR_INITS = ("vqgan-lc", "latent-stats")
# VQGAN-LC's --use_cblinear 1 (one Linear, the paper's and the README's) and 2 (Linear(D, 256) -> ReLU ->
# Linear(256, D'), torch's default initialisation, as the official code leaves it)
PROJECTORS = ("linear", "mlp")
MLP_HIDDEN = 256


class FrozenProjectedCodebook(nn.Module):
    """VQGAN-LC: a frozen (K, D_init) codebook (e.g. k-means of CLIP features) mapped into the
    latent space by one trainable projector, recomputed every forward so that training the
    projector moves every code at once (the reason utilisation stays above 99%).

    projector "linear" (VQGAN-LC's default) or "mlp" (its --use_cblinear 2).
    projector_init "vqgan-lc": the linear weight N(0, D'^-0.5), torch's default bias, as the official
    code (the MLP keeps torch's defaults, as there). "latent-stats" (an lcgen option, not the paper's):
    the same draw, then on the first training batch the last layer rescaled so the projected codes have
    the latents' spread and shifted onto their mean (`align_to`), so that training starts with codes
    and latents on one scale."""

    def __init__(self, codebook_size: int, code_dim: int, init_codebook=None, frozen_dim: int = 768,
                 projector_init: str = "vqgan-lc", projector: str = "linear"):
        super().__init__()
        if projector_init not in PROJECTOR_INITS:
            raise ValueError(f"projector_init must be one of {PROJECTOR_INITS}, got {projector_init!r}")
        if projector not in PROJECTORS:
            raise ValueError(f"projector must be one of {PROJECTORS}, got {projector!r}")
        self.projector_init = projector_init
        if projector_init == "latent-stats":  # saved with the weights: a loaded or resumed model is not re-aligned
            self.register_buffer("aligned", torch.tensor(False))
        if init_codebook is None:
            # VQGAN-LC's `--tuning_codebook -2` ("Random Fix"): a frozen uniform(-1/K, 1/K) table
            warnings.warn("lc quantizer built without init_codebook: using a frozen uniform(-1/K, 1/K) codebook as "
                          "VQGAN-LC's --tuning_codebook -2 (its Table 6: rFID 108.7 against 2.62 with k-means "
                          "features); build one with `lcgen init-codebook`")
            frozen = torch.empty(codebook_size, frozen_dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        else:
            frozen = load_init_codebook(init_codebook, codebook_size)
        self.register_buffer("frozen", frozen)
        if projector == "linear":
            self.projector = Linear(frozen.shape[1], code_dim)  # 100,000 x 768 -> 8 a step: lcgen.cpu_linear
            nn.init.normal_(self.projector.weight, std=code_dim ** -0.5)  # VQGAN-LC; bias keeps torch default
        else:
            self.projector = nn.Sequential(Linear(frozen.shape[1], MLP_HIDDEN), nn.ReLU(), Linear(MLP_HIDDEN, code_dim))

    @property
    def output_layer(self) -> nn.Linear:
        """The projector's last Linear, which `align_to` rescales and shifts."""
        return self.projector[-1] if isinstance(self.projector, nn.Sequential) else self.projector

    def weight(self) -> torch.Tensor:
        with torch.autocast(device_type=self.frozen.device.type, enabled=False):
            return self.projector(self.frozen).unsqueeze(0)  # (1, K, d)

    @property
    def needs_alignment(self) -> bool:
        return self.projector_init == "latent-stats" and not bool(self.aligned)

    @torch.no_grad()
    def align_to(self, latents: torch.Tensor) -> None:
        """"latent-stats": scale the projector so the codes' RMS spread about their mean equals the
        latents' (n, d) and shift them onto the latents' mean; statistics summed over data-parallel
        ranks, so every rank makes the same change."""
        x = latents.detach().float().reshape(-1, latents.shape[-1])
        stats = torch.cat([x.sum(0), x.pow(2).sum(0), x.new_tensor([x.shape[0]])])
        all_reduce_sum(stats)
        d = x.shape[1]
        n = stats[-1]
        mean = stats[:d] / n
        latent_spread = (stats[d:2 * d] / n - mean.pow(2)).sum().clamp_min(0).sqrt()
        codes = self.projector(self.frozen.float())
        code_spread = (codes - codes.mean(0)).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
        self.output_layer.weight.mul_(latent_spread / code_spread)
        self.output_layer.bias.add_(mean - self.projector(self.frozen.float()).mean(0))
        self.aligned.fill_(True)
