"""The LDM prior: diffusers' `UNet2DModel` on continuous pre-quantisation latents, class-conditional
through `num_class_embeds = num_classes + 1` (the last row is the null class; label dropout to it is
done by the training loop — UNet2DModel has none), the class embedding added to the time embedding
and both entering every ResNet block as ADM's scale-shift of its norm.

LDM's own class-conditional models (latent-diffusion's cin256 configs, VQGAN-LC's LDM-LC) feed the
class by cross-attention instead: `ClassCrossAttentionUNet`, the sizes "LDM-LC-f16" / "LDM-LC-f8".
"""
from __future__ import annotations

import torch.nn as nn
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from lcgen.strict_loading import StrictLoadingMixin

# name -> (block_out_channels, layers_per_block, attention on each level)
# "LDM-T" is a single-level CPU size (works on odd latent sides such as 7x7); "LDM-B" follows the
# VQGAN-LC ldm-lc recipe's 256-channel UNet on 8x16x16 latents (channel multipliers inferred from
# latent-diffusion's cin256 configs: attention at the 8x8 and 4x4 levels).
LDM_SIZES = {
    "LDM-T": ((128,), 2, (True,)),
    "LDM-S": ((128, 256), 2, (False, True)),
    "LDM-B": ((256, 512, 768), 2, (False, True, True)),
}


# VQGAN-LC's LDM-LC UNets (ldm-lc/configs/imagenet-f{16,8}-vqgan-lc-100K.yaml): model_channels 256 x
# channel_mult, num_res_blocks, attention at the levels whose downsampling factor is in
# attention_resolutions; 32-channel heads, one transformer layer, a 512-d class context.
LDM_CROSS_ATTENTION_SIZES = {
    "LDM-LC-f16": dict(block_out_channels=(256, 1024), layers_per_block=3, attention_levels=(True, False)),
    "LDM-LC-f8": dict(block_out_channels=(256, 512, 1024), layers_per_block=2, attention_levels=(True, True, True)),
}


class ClassCrossAttentionUNet(StrictLoadingMixin, ModelMixin, ConfigMixin):
    """latent-diffusion's class conditioning: a learned class embedding (its `ClassEmbedder`: num_classes
    + 1 rows, the last the null class of classifier-free guidance) is the one-token cross-attention
    context of every spatial transformer of diffusers' `UNet2DConditionModel`, which is latent-diffusion's
    `openaimodel.UNetModel` with `use_spatial_transformer` (diffusers' own converter maps its weights).
    Called like `UNet2DModel`: `forward(sample, timestep, class_labels).sample`.

    head_channels: channels per attention head (latent-diffusion's num_head_channels), so a level of
    C channels has C / head_channels heads."""

    @register_to_config
    def __init__(self, num_classes: int = 1000, context_dim: int = 512, sample_size: int = 16, in_channels: int = 8,
                 out_channels: int = 8, block_out_channels: tuple = (256, 1024), layers_per_block: int = 3,
                 attention_levels: tuple = (True, False), head_channels: int = 32, transformer_depth: int = 1):
        super().__init__()
        if len(attention_levels) != len(block_out_channels):
            raise ValueError(f"attention_levels {attention_levels} needs one entry per level of {block_out_channels}")
        if any(c % head_channels for c in block_out_channels):
            raise ValueError(f"every level's channels {block_out_channels} must divide into {head_channels}-channel heads")
        self.class_embedding = nn.Embedding(num_classes + 1, context_dim)
        # diffusers' UNet2DConditionModel reads attention_head_dim as the number of heads per level
        self.unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)),
            cross_attention_dim=context_dim, attention_head_dim=tuple(c // head_channels for c in block_out_channels),
            transformer_layers_per_block=transformer_depth, use_linear_projection=False, flip_sin_to_cos=True,
            freq_shift=0)

    def forward(self, sample, timestep, class_labels, return_dict: bool = True):
        context = self.class_embedding(class_labels.long())[:, None]  # (B, 1, context_dim)
        return self.unet(sample, timestep, encoder_hidden_states=context, return_dict=return_dict)


def build_ldm_unet(size: str, sample_size: int, in_channels: int, num_classes: int, **options):
    if size in LDM_CROSS_ATTENTION_SIZES:
        kwargs = dict(num_classes=num_classes, sample_size=sample_size, in_channels=in_channels,
                      out_channels=in_channels, **LDM_CROSS_ATTENTION_SIZES[size])
        return ClassCrossAttentionUNet(**{**kwargs, **options})
    if size not in LDM_SIZES:
        raise ValueError(f"unknown LDM size {size!r}: expected one of {sorted(LDM_SIZES) + sorted(LDM_CROSS_ATTENTION_SIZES)}")
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
