"""The taming VQGAN encoder/decoder, built from diffusers' `Encoder`/`Decoder` blocks.

diffusers' blocks are taming's (GroupNorm(32, eps 1e-6), swish, ResNet blocks, single-head
attention in the mid block, pad-then-stride-2 downsampling, nearest-upsample + conv); the only
thing to map is taming's `attn_resolutions`, which puts attention after every ResNet block of a
level whose feature map has that resolution -> the level uses the Attn* block type.
"""
from __future__ import annotations

from diffusers.models.autoencoders.vae import Decoder, Encoder


def level_resolutions(resolution: int, ch_mult) -> list[int]:
    """Feature-map side at each level: the input side halved once per level."""
    return [resolution // 2 ** i for i in range(len(ch_mult))]


def build_vqgan(in_channels: int, resolution: int, ch: int, ch_mult, num_res_blocks: int,
                attn_resolutions, z_channels: int) -> tuple[Encoder, Decoder]:
    """Encoder: (B, in, R, R) -> (B, z_channels, R/f, R/f) with f = 2^(len(ch_mult)-1); Decoder back."""
    block_out = tuple(ch * m for m in ch_mult)
    attn = [r in set(attn_resolutions) for r in level_resolutions(resolution, ch_mult)]
    encoder = Encoder(in_channels=in_channels, out_channels=z_channels,
                      down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn),
                      block_out_channels=block_out, layers_per_block=num_res_blocks, norm_num_groups=32,
                      act_fn="silu", double_z=False)
    # the decoder walks the levels from the lowest resolution up
    decoder = Decoder(in_channels=z_channels, out_channels=in_channels,
                      up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)),
                      block_out_channels=block_out, layers_per_block=num_res_blocks, norm_num_groups=32,
                      act_fn="silu")
    return encoder, decoder
