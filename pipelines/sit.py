"""`VQSiTPipeline`: class -> continuous latent (the DiT backbone trained as a SiT interpolant,
velocity prediction; ODE Euler/Heun, SiT's adaptive dopri5 or its SDE) -> nearest codes -> tokenizer decoder."""
from __future__ import annotations

import torch

from lcgen.checks import check_finite
from lcgen.priors.dit import DiTModel
from lcgen.priors.transport import PATHS, SAMPLERS, Interpolant
from lcgen.tokenizer.model import VQTokenizer

from .diffusion import LatentPipeline


class VQSiTPipeline(LatentPipeline):
    """Components: `vqvae` (VQTokenizer) and `transformer` (DiTModel predicting velocity). The
    interpolant (`path_type`: "linear" or "gvp") and the sampler defaults are pipeline settings; time
    runs SiT's way, 0 = noise to 1 = data, and the network sees t * `timestep_scale` (1000 for lcgen's
    own training, whose DiT embeds DDPM-sized steps; 1 for SiT's published checkpoints, which embed t)."""

    family = "sit"
    denoiser_name = "transformer"
    model_cpu_offload_seq = "transformer->vqvae"

    def __init__(self, vqvae: VQTokenizer, transformer: DiTModel, id2label: dict | None = None,
                 path_type: str = "linear", sampling_method: str = "euler", guidance_scale: float = 4.0,
                 num_inference_steps: int = 50, latent_shift: float = 0.0, latent_scale: float = 1.0,
                 info: dict | None = None, latent_normalization: str = "global", timestep_scale: float = 1000.0,
                 guided_channels: int | None = None, diffusion_norm: float = 1.0, last_step_size: float = 0.04,
                 atol: float = 1e-6, rtol: float = 1e-3):
        super().__init__()
        self._check_guided_channels(guided_channels, transformer)
        if not isinstance(timestep_scale, (int, float)) or not timestep_scale > 0:
            raise ValueError(f"timestep_scale must be a number > 0, got {timestep_scale!r}")
        if path_type not in PATHS:
            raise ValueError(f"path_type must be one of {PATHS}, got {path_type!r}")
        if sampling_method not in SAMPLERS:
            raise ValueError(f"sampling_method must be one of {SAMPLERS}, got {sampling_method!r}")
        self._check_solver(diffusion_norm, last_step_size, atol, rtol)
        self._check_tokenizer(vqvae, transformer)
        self.register_modules(vqvae=vqvae, transformer=transformer)
        self._check_normalization(latent_normalization)
        self._register_settings(id2label, path_type=path_type, sampling_method=sampling_method,
                                guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                                latent_shift=latent_shift, latent_scale=latent_scale, info=info or {},
                                latent_normalization=latent_normalization, timestep_scale=float(timestep_scale),
                                guided_channels=guided_channels, diffusion_norm=diffusion_norm,
                                last_step_size=last_step_size, atol=atol, rtol=rtol)

    @staticmethod
    def _check_solver(diffusion_norm, last_step_size, atol, rtol) -> None:
        check_finite("diffusion_norm", diffusion_norm, minimum=0)
        check_finite("last_step_size", last_step_size)
        if not 0 < last_step_size < 1:
            raise ValueError(f"last_step_size must be in (0, 1), got {last_step_size!r}")
        for name, tol in (("atol", atol), ("rtol", rtol)):
            check_finite(name, tol)
            if tol <= 0:
                raise ValueError(f"{name} must be > 0, got {tol!r}")

    def _solver_settings(self) -> dict:
        """SDE / dopri5 settings (SiT's defaults for folders saved before they were settings)."""
        c = self.config
        return {"diffusion_norm": c.get("diffusion_norm", 1.0), "last_step_size": c.get("last_step_size", 0.04),
                "atol": c.get("atol", 1e-6), "rtol": c.get("rtol", 1e-3)}

    def _check_options(self, sampling_method=None) -> None:
        if sampling_method is not None and sampling_method not in SAMPLERS:
            raise ValueError(f"sampling_method must be one of {SAMPLERS}, got {sampling_method!r}")

    def default_sampling(self) -> dict:
        c = self.config
        out = {"guidance_scale": c.guidance_scale, "num_inference_steps": c.num_inference_steps,
               "sampling_method": c.sampling_method, "path_type": c.path_type}
        solver = self._solver_settings()
        if c.sampling_method == "sde":
            out.update(diffusion_norm=solver["diffusion_norm"], last_step_size=solver["last_step_size"])
        if c.sampling_method == "dopri5":
            out.update(atol=solver["atol"], rtol=solver["rtol"])
        return out

    @torch.no_grad()
    def __call__(self, class_id=None, num_images_per_class: int = 1, guidance_scale: float | None = None,
                 num_inference_steps: int | None = None, sampling_method: str | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "pil",
                 return_dict: bool = True, compile: bool = False):
        """Generate images of the given classes.

        Args:
            class_id (`int`, `str` or a list of them): class ids in [0, num_classes) or names from
                `id2label`; must be None for an unconditional pipeline.
            num_images_per_class (`int`, default 1): images per listed class.
            guidance_scale (`float`, default: the pipeline's): classifier-free guidance on the velocity
                over all latent channels; 1.0 turns it off.
            num_inference_steps (`int`, default: the pipeline's): fixed integration steps (Heun
                evaluates the model twice per step); for "dopri5" the output grid (the solver adapts).
            sampling_method (`str`, default: the pipeline's): "euler", "heun", "dopri5" (SiT's adaptive
                ODE; atol / rtol are pipeline settings) or "sde" (SiT's Euler-Maruyama with the
                pipeline's diffusion_norm and last_step_size).
            generator (`torch.Generator` or a list, one per image): for reproducible samples.
            output_type (`str`, default "pil"): "pil", "np" (B, H, W, C) in [0, 1] or "pt" (B, C, H, W).
            return_dict (`bool`, default True): an `ImagePipelineOutput`, else a tuple.
            compile (`bool`, default False): run the denoiser through `torch.compile` (traced on the
                first call per batch size, reused after).
        """
        labels = self._class_ids(class_id, num_images_per_class)
        self._check_common(len(labels), guidance_scale, generator, output_type, num_inference_steps)
        self._check_options(sampling_method=sampling_method)
        denoiser = self._denoiser_call(compile)
        method = self.config.sampling_method if sampling_method is None else sampling_method
        scale = self._guidance(guidance_scale)
        steps = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        device = self._execution_device
        labels = torch.tensor(labels, device=device)

        def velocity(x, t):
            # a learn_sigma model's second half is unused by the interpolant (SiT drops it too)
            t = torch.tensor(t * self.config.timestep_scale, device=device)
            return self._model_output(x, t, labels, scale, denoiser)[:, :x.shape[1]]

        x = Interpolant(self.config.path_type).sample(
            velocity, (len(labels), *self.latent_shape), steps, method, generator, device, self.denoiser.dtype,
            progress=self.progress_bar, **self._solver_settings())
        return self._output(self._decode_latents(x), output_type, return_dict)
