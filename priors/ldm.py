"""The LDM prior: diffusers' `UNet2DModel` on continuous pre-quantisation latents, class-conditional
through `num_class_embeds = num_classes + 1` (the last row is the null class; label dropout to it is
done by the training loop — UNet2DModel has none), the class embedding added to the time embedding
and both entering every ResNet block as ADM's scale-shift of its norm. LDM's own class-conditional models feed the
class by cross-attention (`ClassEmbedder`); the added class embedding is diffusers' built-in route.
"""
from __future__ import annotations

from diffusers import UNet2DModel

# name -> (block_out_channels, layers_per_block, attention on each level)
# "LDM-T" is a single-level CPU size (works on odd latent sides such as 7x7); "LDM-B" follows the
# VQGAN-LC ldm-lc recipe's 256-channel UNet on 8x16x16 latents (channel multipliers inferred from
# latent-diffusion's cin256 configs: attention at the 8x8 and 4x4 levels).
LDM_SIZES = {
    "LDM-T": ((128,), 2, (True,)),
    "LDM-S": ((128, 256), 2, (False, True)),
    "LDM-B": ((256, 512, 768), 2, (False, True, True)),
}


def build_ldm_unet(size: str, sample_size: int, in_channels: int, num_classes: int, **options) -> UNet2DModel:
    if size not in LDM_SIZES:
        raise ValueError(f"unknown LDM size {size!r}: expected one of {sorted(LDM_SIZES)}")
    channels, layers, attention = LDM_SIZES[size]
    factor = 2 ** (len(channels) - 1)
    if sample_size % factor:
        raise ValueError(f"{size} downsamples {len(channels) - 1} times: the latent side {sample_size} must be "
                         f"divisible by {factor} (use LDM-T for odd sides such as 7)")
    kwargs = dict(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
                  block_out_channels=channels, layers_per_block=layers,
                  down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
                  up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
                  num_class_embeds=num_classes + 1, attention_head_dim=64,
                  # ADM's route: the time + class embedding scales and shifts each ResNet block's norm
                  # (rather than only being added to its activations)
                  resnet_time_scale_shift="scale_shift")
    kwargs.update(options)
    return UNet2DModel(**kwargs)
