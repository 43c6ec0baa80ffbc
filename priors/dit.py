"""`DiTModel`: the DiT backbone (adaLN-Zero transformer on latent patches), used by the DiT
(ε-prediction) and SiT (velocity) priors.

Written as an own diffusers `ModelMixin` rather than diffusers' `DiTTransformer2DModel` because that
class gives every block its own timestep+label embedder (77.8 M duplicated parameters at XL/2) and
hard-codes label dropout 0.1 inside the model; here the embedders are shared as in the original
DiT, and label dropout is done by the training loop (null class = num_classes, any class count).
The variance is fixed by default: the output has `in_channels` channels, so guidance applies to every
channel (the original DiT/SiT guide only the first 3). `learn_sigma=True` (DiT's own option, used by the
published DiT-XL/2, DiT-LC and SiT-LC checkpoints) doubles the output: the prediction, then the
per-channel variance interpolation of improved DDPM (diffusers' `variance_type="learned_range"`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from lcgen.cpu_linear import Linear
from lcgen.strict_loading import StrictLoadingMixin

# (depth, width, heads) as the DiT paper; "T" is a small CPU size. Patch sizes 1, 2, 4, 8.
DIT_SIZES = {"T": (4, 128, 4), "S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def parse_dit_size(name: str) -> tuple[int, int, int, int]:
    """"DiT-XL/2" or "SiT-B/4" -> (depth, width, heads, patch)."""
    try:
        body, patch = name.split("-", 1)[1].split("/")
        return (*DIT_SIZES[body], int(patch))
    except (IndexError, KeyError, ValueError):
        raise ValueError(f"unknown size {name!r}: expected e.g. 'DiT-XL/2' with a body in {sorted(DIT_SIZES)} "
                         f"and a patch size") from None


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) float timesteps (DiT's TimestepEmbedder, cos first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table (grid*grid, dim), as DiT's get_2d_sincos_pos_embed."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1)[:, None].double() * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], 1)

    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([one_d(dim // 2, xs), one_d(dim // 2, ys)], 1).float()


def _modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class _DiTBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv, self.proj = Linear(dim, 3 * dim), Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(Linear(dim, hidden), nn.GELU(approximate="tanh"), Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(dim, 6 * dim))

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        b, n, d = x.shape
        q, k, v = self.qkv(_modulate(self.norm1(x), shift1, scale1)).view(b, n, 3, self.heads, d // self.heads) \
            .permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + gate1[:, None] * self.proj(a)
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class DiTModel(StrictLoadingMixin, ModelMixin, ConfigMixin):
    """DiT on (B, in_channels, sample_size, sample_size) latents.

    Args:
        sample_size: latent side (16 for f16 at 256 px); patch_size must divide it.
        in_channels: latent channels (8 for VQGAN-LC); the output has the same number.
        hidden_size, num_layers, num_heads, mlp_ratio: see DIT_SIZES.
        num_classes: classes; the label table has num_classes + 1 rows, the last is the null class
            (0 = unconditional). Timesteps are floats: DDPM steps in [0, 1000), SiT's t times the SiT
            pipeline's timestep_scale (1000 for lcgen's training, 1 for converted SiT checkpoints).
        learn_sigma: output 2 * in_channels channels (prediction, then the learned variance values).
    """

    @register_to_config
    def __init__(self, sample_size: int = 16, patch_size: int = 2, in_channels: int = 8, hidden_size: int = 1152,
                 num_layers: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0, num_classes: int = 1000,
                 learn_sigma: bool = False):
        super().__init__()
        if sample_size % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide sample_size {sample_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {num_classes}")
        self.grid = sample_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_2d(hidden_size, self.grid)[None], persistent=False)
        self.t_embedder = nn.Sequential(Linear(256, hidden_size), nn.SiLU(), Linear(hidden_size, hidden_size))
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size)
        self.blocks = nn.ModuleList(_DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.adaLN_out = nn.Sequential(nn.SiLU(), Linear(hidden_size, 2 * hidden_size))
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.proj_out = Linear(hidden_size, patch_size * patch_size * self.out_channels)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():  # DiT: xavier linears, zero biases
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        for m in (self.t_embedder[0], self.t_embedder[2]):
            nn.init.normal_(m.weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for m in (self.adaLN_out[-1], self.proj_out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        c = self.config
        b = sample.shape[0]
        if sample.ndim != 4 or tuple(sample.shape[1:]) != (c.in_channels, c.sample_size, c.sample_size):
            raise ValueError(f"sample must be (B, {c.in_channels}, {c.sample_size}, {c.sample_size}), got "
                             f"{tuple(sample.shape)}")
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        timestep = timestep.expand(b) if timestep.numel() == 1 else timestep
        x = self.patch_embed(sample).flatten(2).transpose(1, 2) + self.pos_embed.to(sample.dtype)
        cond = self.t_embedder(timestep_embedding(timestep, 256).to(sample.dtype)) + self.y_embedder(class_labels.long())
        for block in self.blocks:
            x = block(x, cond)
        shift, scale = self.adaLN_out(cond).chunk(2, dim=1)
        x = self.proj_out(_modulate(self.norm_out(x), shift, scale))  # (B, N, p*p*C)
        p, g = c.patch_size, self.grid
        o = self.out_channels
        return x.view(b, g, g, p, p, o).permute(0, 5, 1, 3, 2, 4).reshape(b, o, g * p, g * p)
