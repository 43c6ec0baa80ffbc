"""`VQLDMPipeline`: class -> continuous latent (diffusers UNet2DModel, ε-prediction, DDIM/DPM-Solver,
guidance on all channels) -> nearest codes -> tokenizer decoder."""
from __future__ import annotations

from diffusers import UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from lcgen.priors.ldm import ClassCrossAttentionUNet
from lcgen.tokenizer.model import VQTokenizer

from .diffusion import NoisePredictionPipeline


class VQLDMPipeline(NoisePredictionPipeline):
    """Components: `vqvae` (VQTokenizer), `unet` (UNet2DModel with num_class_embeds = classes + 1,
    the last row the null class, or LDM's cross-attention `ClassCrossAttentionUNet`) and `scheduler`.
    The prior models the latent in `latent_normalization` space (lcgen.priors.latent_space: "global"
    (z - latent_shift) * latent_scale, or "chunk")."""

    family = "ldm"
    denoiser_name = "unet"
    model_cpu_offload_seq = "unet->vqvae"

    def __init__(self, vqvae: VQTokenizer, unet: UNet2DModel | ClassCrossAttentionUNet, scheduler: SchedulerMixin,
                 id2label: dict | None = None,
                 guidance_scale: float = 1.6, num_inference_steps: int = 50, latent_shift: float = 0.0,
                 latent_scale: float = 1.0, info: dict | None = None,
                 latent_normalization: str = "global", eta: float = 0.0):
        super().__init__()
        self._check_tokenizer(vqvae, unet)
        if "num_classes" not in unet.config and unet.config.num_class_embeds is None:
            raise ValueError("the UNet needs num_class_embeds = num_classes + 1 (1 for an unconditional model)")
        self.register_modules(vqvae=vqvae, unet=unet, scheduler=scheduler)
        self._init_settings(id2label, guidance_scale, num_inference_steps, latent_shift, latent_scale, info,
                            latent_normalization, eta=eta)

    def _call_denoiser(self, denoiser, x, t, labels):
        return denoiser(x, t, class_labels=labels).sample
