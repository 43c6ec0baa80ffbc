"""`VQDiTPipeline`: class -> continuous latent (DiT, ε-prediction, guidance on all channels, null class
= num_classes) -> nearest codes -> tokenizer decoder."""
from __future__ import annotations

from diffusers.schedulers.scheduling_utils import SchedulerMixin

from lcgen.priors.dit import DiTModel
from lcgen.tokenizer.model import VQTokenizer

from .diffusion import NoisePredictionPipeline


class VQDiTPipeline(NoisePredictionPipeline):
    """Components: `vqvae` (VQTokenizer), `transformer` (DiTModel) and `scheduler`. Unlike diffusers'
    DiTPipeline the null class is the model's num_classes (not 1000), all latent channels are guided
    (`guided_channels=3` reproduces DiT's and DiT-LC's choice), and `id2label` survives save_pretrained."""

    family = "dit"
    denoiser_name = "transformer"
    model_cpu_offload_seq = "transformer->vqvae"

    def __init__(self, vqvae: VQTokenizer, transformer: DiTModel, scheduler: SchedulerMixin,
                 id2label: dict | None = None, guidance_scale: float = 4.0, num_inference_steps: int = 50,
                 latent_shift: float = 0.0, latent_scale: float = 1.0, info: dict | None = None,
                 latent_normalization: str = "global", eta: float = 0.0, guided_channels: int | None = None):
        super().__init__()
        self._check_tokenizer(vqvae, transformer)
        self._check_guided_channels(guided_channels, transformer)
        self.register_modules(vqvae=vqvae, transformer=transformer, scheduler=scheduler)
        self._init_settings(id2label, guidance_scale, num_inference_steps, latent_shift, latent_scale, info,
                            latent_normalization, eta=eta, guided_channels=guided_channels)
