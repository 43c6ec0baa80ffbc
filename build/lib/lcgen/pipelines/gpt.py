"""`VQGPTPipeline`: class -> indices (GPT prior, KV cache, batched classifier-free guidance) -> tokenizer decoder."""
from __future__ import annotations

import torch

from lcgen.priors.gpt import GPTPrior
from lcgen.tokenizer.model import VQTokenizer

from .base import LCGenPipeline


class VQGPTPipeline(LCGenPipeline):
    """Components: `vqvae` (a VQTokenizer) and `transformer` (a GPTPrior over its index grids).

    Settings kept in model_index.json: `id2label`, the default `guidance_scale`, `temperature`,
    `top_k`, `top_p`, and `info` (dataset, training, metrics: shown on the model card).
    """

    family = "gpt"
    model_cpu_offload_seq = "transformer->vqvae"

    def __init__(self, vqvae: VQTokenizer, transformer: GPTPrior, id2label: dict | None = None,
                 guidance_scale: float = 4.0, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, info: dict | None = None):
        super().__init__()
        t, v = transformer.config, vqvae.config
        m = getattr(vqvae.quantizer, "num_chunks", 1)
        if t.codebook_size != v.codebook_size or t.tokens_per_position != m:
            raise ValueError(f"the GPT prior models K={t.codebook_size}, m={t.tokens_per_position} but the tokenizer "
                             f"has K={v.codebook_size}, m={m}")
        self.register_modules(vqvae=vqvae, transformer=transformer)
        self._register_settings(id2label, guidance_scale=guidance_scale, temperature=temperature, top_k=top_k,
                                top_p=top_p, info=info or {})

    @property
    def num_classes(self) -> int:
        return self.transformer.config.num_classes

    def default_sampling(self) -> dict:
        c = self.config
        return {"guidance_scale": c.guidance_scale, "temperature": c.temperature, "top_k": c.top_k, "top_p": c.top_p}

    def check_inputs(self, batch, guidance_scale, temperature, top_k, top_p, generator, output_type):
        self._check_common(batch, guidance_scale, generator, output_type)
        if temperature is not None and (not isinstance(temperature, (int, float)) or temperature < 0):
            raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
        if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")

    @torch.no_grad()
    def __call__(self, class_id=None, num_images_per_class: int = 1, guidance_scale: float | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "pil",
                 return_dict: bool = True):
        """Generate images of the given classes.

        Args:
            class_id (`int`, `str` or a list of them): class ids in [0, num_classes) or names from
                `id2label`; must be None for an unconditional pipeline.
            num_images_per_class (`int`, default 1): images per listed class.
            guidance_scale (`float`, default: the pipeline's, 4.0): classifier-free guidance on the
                logits, uncond + s * (cond - uncond); 1.0 turns it off.
            temperature (`float`, default 1.0), top_k (`int`, default off), top_p (`float`, default off).
            generator (`torch.Generator` or a list, one per image): for reproducible samples.
            output_type (`str`, default "pil"): "pil", "np" (B, H, W, C) in [0, 1] or "pt" (B, C, H, W).
            return_dict (`bool`, default True): an `ImagePipelineOutput`, else a tuple.
        """
        labels = self._class_ids(class_id, num_images_per_class)
        self.check_inputs(len(labels), guidance_scale, temperature, top_k, top_p, generator, output_type)
        c = self.config
        indices = self.transformer.generate(
            torch.tensor(labels, device=self._execution_device), guidance_scale=self._guidance(guidance_scale),
            temperature=c.temperature if temperature is None else temperature,
            top_k=c.top_k if top_k is None else top_k, top_p=c.top_p if top_p is None else top_p,
            generator=generator, progress=self.progress_bar)
        images = self.vqvae.decode_indices(indices.to(self.vqvae.device))
        return self._output(images, output_type, return_dict)
