"""What the three latent pipelines (LDM, DiT, SiT) share: the latent shape, normalisation settings
and a guided model call over all channels with an explicit null class."""
from __future__ import annotations

import inspect

import torch
from diffusers.utils.torch_utils import randn_tensor

from lcgen.checks import check_bool, check_finite
from lcgen.priors.latent_space import LatentSpace, resolve_normalization

from .base import LCGenPipeline


class LatentPipeline(LCGenPipeline):
    """Base of VQLDMPipeline, VQDiTPipeline and VQSiTPipeline. The prior is `self.denoiser`."""

    denoiser_name = ""

    @property
    def denoiser(self):
        return getattr(self, self.denoiser_name)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.denoiser.config
        return (c.in_channels, c.sample_size, c.sample_size)

    def _check_tokenizer(self, vqvae, denoiser):
        if denoiser.config.in_channels != vqvae.config.embed_dim:
            raise ValueError(f"the prior models {denoiser.config.in_channels}-channel latents but the tokenizer's "
                             f"embed_dim is {vqvae.config.embed_dim}")

    def _denoiser_call(self, compile: bool):
        """The denoiser, or with compile=True its `torch.compile` wrapper (fixed shapes; made once per
        pipeline and denoiser, so later calls reuse the traced graph). The module itself is not
        changed: saving and eager calls see the plain model."""
        check_bool("compile", compile)
        if not compile:
            return self.denoiser
        cached = getattr(self, "_compiled_denoiser", None)
        if cached is None or cached[0] is not self.denoiser:
            self._compiled_denoiser = (self.denoiser, torch.compile(self.denoiser, dynamic=False))
        return self._compiled_denoiser[1]

    def _model_output(self, x: torch.Tensor, t, labels: torch.Tensor, guidance_scale: float,
                      denoiser=None) -> torch.Tensor:
        """The prior's output at (x, t); with guidance the batch is doubled with the null class and
        uncond + s * (cond - uncond) is taken over every latent channel, or over the first
        `guided_channels` only when that setting is given (DiT's and SiT's originals, and VQGAN-LC's
        forks, guide 3). Unguided channels and a learned-variance half (DiT's learn_sigma) come from
        the conditional rows, as in DiT's forward_with_cfg."""
        denoiser = self.denoiser if denoiser is None else denoiser
        if guidance_scale == 1.0:
            return self._call_denoiser(denoiser, x, t, labels)
        null = torch.full_like(labels, self.num_classes)
        out = self._call_denoiser(denoiser, torch.cat([x, x]), t, torch.cat([labels, null]))
        cond, uncond = out.chunk(2)
        g = getattr(self.config, "guided_channels", None) or x.shape[1]
        guided = uncond[:, :g] + guidance_scale * (cond[:, :g] - uncond[:, :g])
        return torch.cat([guided, cond[:, g:]], 1)

    def _check_guided_channels(self, guided_channels, denoiser) -> None:
        channels = denoiser.config.in_channels
        if guided_channels is not None and (not isinstance(guided_channels, int) or isinstance(guided_channels, bool)
                                            or not 1 <= guided_channels <= channels):
            raise ValueError(f"guided_channels must be None (all) or an int in [1, {channels}], got {guided_channels!r}")

    def _scheduler_input(self, out: torch.Tensor, channels: int) -> torch.Tensor:
        """What the scheduler reads: the whole output for a learned-variance scheduler
        (`variance_type="learned_range"`, improved DDPM), else the prediction half only."""
        if out.shape[1] > channels and getattr(self.scheduler.config, "variance_type", None) != "learned_range":
            return out[:, :channels]
        return out

    def _check_normalization(self, normalization: str):
        """Before register_to_config: the space the prior models must be one the tokenizer can decode."""
        if normalization not in ("global", "chunk"):
            raise ValueError(f"latent_normalization must be 'global' or 'chunk', got {normalization!r}")
        resolve_normalization(normalization, self.vqvae.quantizer)

    def _decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Sampled latents -> images: back to the tokenizer's latent space, snap to the nearest codes
        (VQGAN-LC's decode re-quantises), decode."""
        c = self.config
        space = LatentSpace(c.get("latent_normalization", "global"), c.latent_shift, c.latent_scale,
                            self.vqvae.quantizer.chunk_dim)
        q = self.vqvae.quantize(space.to_tokenizer(latents).to(self.vqvae.dtype)).quantized
        return self.vqvae.decode(q)

    def _call_denoiser(self, denoiser, x, t, labels):
        return denoiser(x, t, class_labels=labels)

    @property
    def num_classes(self) -> int:
        c = self.denoiser.config
        return c.num_classes if "num_classes" in c else c.num_class_embeds - 1


class NoisePredictionPipeline(LatentPipeline):
    """DDPM-family sampling with a diffusers scheduler (DDIM by default; any scheduler whose config
    comes from the training DDPMScheduler works: `DPMSolverMultistepScheduler.from_config`); the
    scheduler's `prediction_type` ("epsilon" or "v_prediction") says what the denoiser predicts.
    Subclasses register `vqvae`, the denoiser and `scheduler`."""

    def _init_settings(self, id2label, guidance_scale, num_inference_steps, latent_shift, latent_scale, info,
                       latent_normalization, eta=0.0, **extra):
        self._check_normalization(latent_normalization)
        self._check_eta(eta)
        self._register_settings(id2label, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                                latent_shift=latent_shift, latent_scale=latent_scale, info=info or {},
                                latent_normalization=latent_normalization, eta=eta, **extra)

    def _check_eta(self, eta) -> None:
        """DDIM's η (0: deterministic DDIM, 1: DDPM-like ancestral noise, LDM's own sampling); only a
        scheduler whose step takes it (DDIMScheduler) can honour a non-zero one."""
        check_finite("eta", eta, minimum=0)
        if eta and "eta" not in inspect.signature(self.scheduler.step).parameters:
            raise ValueError(f"eta={eta} needs a DDIM scheduler; {type(self.scheduler).__name__} has no eta")

    def _check_options(self, eta=None) -> None:
        if eta is not None:
            self._check_eta(eta)

    def default_sampling(self) -> dict:
        return {"guidance_scale": self.config.guidance_scale, "num_inference_steps": self.config.num_inference_steps,
                "scheduler": type(self.scheduler).__name__, "eta": self.config.get("eta", 0.0)}

    @torch.no_grad()
    def __call__(self, class_id=None, num_images_per_class: int = 1, guidance_scale: float | None = None,
                 num_inference_steps: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "pil",
                 return_dict: bool = True, eta: float | None = None, compile: bool = False):
        """Generate images of the given classes.

        Args:
            class_id (`int`, `str` or a list of them): class ids in [0, num_classes) or names from
                `id2label`; must be None for an unconditional pipeline.
            num_images_per_class (`int`, default 1): images per listed class.
            guidance_scale (`float`, default: the pipeline's): classifier-free guidance over all
                latent channels; 1.0 turns it off.
            num_inference_steps (`int`, default: the pipeline's): scheduler steps.
            generator (`torch.Generator` or a list, one per image): for reproducible samples.
            output_type (`str`, default "pil"): "pil", "np" (B, H, W, C) in [0, 1] or "pt" (B, C, H, W).
            return_dict (`bool`, default True): an `ImagePipelineOutput`, else a tuple.
            eta (`float`, default: the pipeline's, 0): DDIM's η; LDM samples with 1.
            compile (`bool`, default False): run the denoiser through `torch.compile` (traced on the
                first call per batch size, reused after).
        """
        labels = self._class_ids(class_id, num_images_per_class)
        self._check_common(len(labels), guidance_scale, generator, output_type, num_inference_steps)
        denoiser = self._denoiser_call(compile)
        eta = self.config.get("eta", 0.0) if eta is None else eta
        self._check_eta(eta)
        step_options = {"eta": eta} if "eta" in inspect.signature(self.scheduler.step).parameters else {}
        scale = self._guidance(guidance_scale)
        steps = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        device = self._execution_device
        labels = torch.tensor(labels, device=device)
        x = randn_tensor((len(labels), *self.latent_shape), generator=generator, device=device,
                         dtype=self.denoiser.dtype)
        self.scheduler.set_timesteps(steps, device=device)
        x = x * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            out = self._model_output(self.scheduler.scale_model_input(x, t), t, labels, scale, denoiser)
            x = self.scheduler.step(self._scheduler_input(out, x.shape[1]), t, x, generator=generator,
                                    **step_options).prev_sample
        return self._output(self._decode_latents(x), output_type, return_dict)
