"""`VQTokenizer`: encoder -> pre-quant conv -> quantizer -> post-quant conv -> decoder.

A diffusers `ModelMixin` + `ConfigMixin`, so `save_pretrained` / `from_pretrained` / `push_to_hub`
come from diffusers and the weights (the frozen VQGAN-LC codebook and every quantizer buffer
included) are one safetensors file. Pixels are float in [-1, 1], channels-first.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from lcgen.checks import check_positive_int
from lcgen.strict_loading import StrictLoadingMixin

from .backbones import VQVAEDecoder, VQVAEEncoder, build_vqgan
from .quantizers import KINDS, build_quantizer
from .quantizers.codebooks import load_init_codebook

BACKBONES = ("vqgan", "vqvae")
RECONSTRUCTION_LOSSES = ("l1", "l2")


@dataclass
class TokenizerEncoding(BaseOutput):
    """latents: (B, C, h, w) pre-quantisation; quantized: (B, C, h, w) straight-through codes;
    indices: int64 (B, h, w) or (B, h, w, m); quantizer_loss: scalar."""

    latents: torch.Tensor
    # defaults let accelerate rebuild the output from a dict (its fp32 output conversion)
    quantized: torch.Tensor = None
    indices: torch.Tensor = None
    quantizer_loss: torch.Tensor = None


@dataclass
class TokenizerOutput(BaseOutput):
    """sample: reconstruction (B, in, H, W) in roughly [-1, 1] (not clamped);
    reconstruction_loss: l1/l2 per the config, divided by data_variance; quantizer_loss: scalar."""

    sample: torch.Tensor
    # defaults let accelerate rebuild the output from a dict (its fp32 output conversion)
    indices: torch.Tensor = None
    reconstruction_loss: torch.Tensor = None
    quantizer_loss: torch.Tensor = None


class VQTokenizer(StrictLoadingMixin, ModelMixin, ConfigMixin):
    """Image tokenizer. Backbones: "vqgan" (taming, f = 2^(len(ch_mult)-1)) or "vqvae" (CVQ/LooC, f = 4).

    Args:
        backbone: "vqgan" or "vqvae".
        in_channels: image channels (3, or 1 for grayscale data such as Fashion-MNIST).
        resolution: training image side; places the VQGAN attention levels (attn_resolutions).
        ch, ch_mult, num_res_blocks, attn_resolutions, z_channels: VQGAN backbone.
        hidden_channels, residual_channels, num_residual_layers: VQ-VAE backbone.
        embed_dim: channels C of the quantised latent (VQGAN-LC D' = 8; CVQ/LooC d = 128).
        quantizer_kind: a kind from `tokenizer.quantizers.KINDS`; codebook_size: K.
        quantizer_options: extra `build_quantizer` options (JSON-serialisable).
        reconstruction_loss: "l1" (VQGAN-LC) or "l2" (CVQ/LooC, divided by data_variance).
        data_variance: CVQ's normaliser of the l2 loss (variance of the [0,1] training pixels).
        frozen_codebook_source: provenance of the VQGAN-LC codebook (set from init_codebook).
        init_codebook: VQGAN-LC frozen codebook, (K, D) tensor or .safetensors path; not part of
            the config — the codebook itself is saved with the weights.
    """

    ignore_for_config = ["init_codebook"]

    @register_to_config
    def __init__(self, backbone: str = "vqgan", in_channels: int = 3, resolution: int = 256, ch: int = 128,
                 ch_mult: tuple = (1, 1, 2, 2, 4), num_res_blocks: int = 2, attn_resolutions: tuple = (16,),
                 z_channels: int = 256, hidden_channels: int = 128, residual_channels: int = 32,
                 num_residual_layers: int = 2, embed_dim: int = 8, quantizer_kind: str = "lc",
                 codebook_size: int = 100_000, quantizer_options: dict | None = None,
                 reconstruction_loss: str = "l1", data_variance: float = 1.0,
                 frozen_codebook_source: str | None = None, init_codebook=None):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        if reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"reconstruction_loss must be one of {RECONSTRUCTION_LOSSES}, got {reconstruction_loss!r}")
        if quantizer_kind not in KINDS:
            raise ValueError(f"unknown quantizer_kind {quantizer_kind!r}; expected one of {sorted(KINDS)}")
        for name, value in (("resolution", resolution), ("ch", ch), ("num_res_blocks", num_res_blocks),
                            ("z_channels", z_channels), ("hidden_channels", hidden_channels),
                            ("residual_channels", residual_channels), ("embed_dim", embed_dim),
                            ("codebook_size", codebook_size)):
            check_positive_int(name, value)  # before any layer is built with it
        check_positive_int("num_residual_layers", num_residual_layers, allow_zero=True)
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if not data_variance > 0:
            raise ValueError(f"data_variance must be > 0, got {data_variance}")
        options = dict(quantizer_options or {})
        if "init_codebook" in options:
            raise ValueError("pass the VQGAN-LC codebook as VQTokenizer(init_codebook=...), not in quantizer_options")

        if backbone == "vqgan":
            if resolution % 2 ** (len(ch_mult) - 1):
                raise ValueError(f"resolution {resolution} is not divisible by the downsampling factor "
                                 f"{2 ** (len(ch_mult) - 1)} of ch_mult={list(ch_mult)}")
            self.encoder, self.decoder = build_vqgan(in_channels, resolution, ch, ch_mult, num_res_blocks,
                                                     attn_resolutions, z_channels)
            self.downsample_factor = 2 ** (len(ch_mult) - 1)
            self.pre_quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
            self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        else:
            self.encoder = VQVAEEncoder(in_channels, hidden_channels, residual_channels, num_residual_layers)
            # CVQ/LooC: a 1x1 pre-VQ conv and no post-quant conv (the decoder's 3x3 conv_in reads codes)
            self.decoder = VQVAEDecoder(embed_dim, in_channels, hidden_channels, residual_channels, num_residual_layers)
            self.downsample_factor = 4
            self.pre_quant_conv = nn.Conv2d(hidden_channels, embed_dim, 1)
            self.post_quant_conv = nn.Identity()

        if init_codebook is not None:
            if quantizer_kind != "lc" and options.get("codebook") != "frozen_projected":
                raise ValueError("init_codebook is only used by the VQGAN-LC frozen codebook (quantizer_kind='lc')")
            frozen = load_init_codebook(init_codebook, codebook_size)  # (K, D), validated
            source = str(init_codebook) if isinstance(init_codebook, (str, os.PathLike)) else "tensor"
            # the config records D so that from_pretrained builds a buffer the saved codebook fits
            options["frozen_dim"] = frozen.shape[1]
            self.register_to_config(frozen_codebook_source=source, quantizer_options=dict(options))
            options["init_codebook"] = frozen
        with warnings.catch_warnings():
            if frozen_codebook_source is not None:  # from_pretrained: the saved codebook replaces the placeholder
                warnings.simplefilter("ignore")
            self.quantizer = build_quantizer(quantizer_kind, embed_dim, codebook_size, **options)

    # ------------------------------------------------------------------ checks
    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output conv (VQGAN's adaptive GAN weight is computed on it)."""
        return self.decoder.conv_out.weight

    def check_images(self, images) -> None:
        c, f = self.config.in_channels, self.downsample_factor
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a float tensor (B, {c}, H, W) in [-1, 1], got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [-1, 1], got dtype {images.dtype} (convert uint8 with x/127.5-1)")
        if images.ndim != 4 or images.shape[1] != c:
            raise ValueError(f"images must have shape (B, {c}, H, W), got {tuple(images.shape)}")
        if images.shape[2] % f or images.shape[3] % f:
            raise ValueError(f"image side {tuple(images.shape[2:])} must be divisible by the downsampling factor {f}")
        lo, hi = torch.stack(torch.aminmax(images.detach())).float().tolist()  # one device sync
        if not (lo >= -1.0 - 1e-3 and hi <= 1.0 + 1e-3):  # also catches NaN
            raise ValueError(f"images must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")

    # ------------------------------------------------------------------ stages
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous pre-quantisation latents (B, C, h, w)."""
        self.check_images(images)
        return self.pre_quant_conv(self.encoder(images))

    def quantize(self, latents: torch.Tensor):
        """Snap any continuous latent (B, C, h, w) to its nearest codes -> QuantizerOutput."""
        return self.quantizer(latents)

    def encode(self, images: torch.Tensor) -> TokenizerEncoding:
        latents = self.encode_latents(images)  # (B, C, h, w)
        q = self.quantizer(latents)
        return TokenizerEncoding(latents=latents, quantized=q.quantized, indices=q.indices, quantizer_loss=q.loss)

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) codes -> (B, in, fh, fw) images in roughly [-1, 1]."""
        if not isinstance(quantized, torch.Tensor) or quantized.ndim != 4 or quantized.shape[1] != self.config.embed_dim:
            raise ValueError(f"decode expects (B, {self.config.embed_dim}, h, w), got "
                             f"{tuple(quantized.shape) if isinstance(quantized, torch.Tensor) else type(quantized).__name__}")
        return self.decoder(self.post_quant_conv(quantized))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Index grid (B, h, w) or (B, h, w, m) -> images."""
        codes = self.quantizer.lookup(indices)  # (B, C, h, w) float32
        return self.decode(codes.to(self.dtype))

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        enc = self.encode(images)
        sample = self.decode(enc.quantized)
        if self.config.reconstruction_loss == "l1":
            rec = (sample.float() - images.float()).abs().mean()
        else:
            rec = F.mse_loss(sample.float(), images.float()) / self.config.data_variance
        return TokenizerOutput(sample=sample, indices=enc.indices, reconstruction_loss=rec,
                               quantizer_loss=enc.quantizer_loss)
