"""`VQGPTPipeline`: class -> indices (GPT prior, KV cache, batched classifier-free guidance) -> tokenizer decoder."""
from __future__ import annotations

import os

import torch
from huggingface_hub import hf_hub_download

from lcgen.official_checkpoints import load_state_dict
from lcgen.priors.gpt import GPTPrior
from lcgen.checks import check_bool, check_finite
from lcgen.priors.published import gpt_from_llamagen, parse_llamagen_name
from lcgen.tokenizer.model import VQTokenizer
from lcgen.tokenizer.published import llamagen_vq_model, tokenizer_from_llamagen

from .base import LCGenPipeline
from .imagenet import imagenet_id2label

# LlamaGen's autoregressive/sample/sample_c2i.py defaults
LLAMAGEN_SAMPLING = dict(guidance_scale=4.0, temperature=1.0, top_k=2000, top_p=1.0)


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
        self._check_options(temperature=temperature, top_k=top_k, top_p=top_p)

    def _check_options(self, temperature=None, top_k=None, top_p=None) -> None:
        if temperature is not None:
            check_finite("temperature (0 = greedy)", temperature, minimum=0)
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
        if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")

    @torch.no_grad()
    def __call__(self, class_id=None, num_images_per_class: int = 1, guidance_scale: float | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "pil",
                 return_dict: bool = True, compile: bool = False):
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
            compile (`bool`, default False): run the transformer's sampling step through `torch.compile`
                (`GPTPrior.generate`); the first call per batch size traces it (seconds to a minute),
                later calls reuse it. The same tokens as eager for the same generator.
        """
        labels = self._class_ids(class_id, num_images_per_class)
        self.check_inputs(len(labels), guidance_scale, temperature, top_k, top_p, generator, output_type)
        check_bool("compile", compile)
        c = self.config
        indices = self.transformer.generate(
            torch.tensor(labels, device=self._execution_device), guidance_scale=self._guidance(guidance_scale),
            temperature=c.temperature if temperature is None else temperature,
            top_k=c.top_k if top_k is None else top_k, top_p=c.top_p if top_p is None else top_p,
            generator=generator, progress=self.progress_bar, compile=compile)
        images = self.vqvae.decode_indices(indices.to(self.vqvae.device))
        return self._output(images, output_type, return_dict)

    @classmethod
    def from_llamagen(cls, repo_id_or_path: str = "FoundationVision/LlamaGen", gpt: str = "c2i_B_256.pt",
                      vq: str = "vq_ds16_c2i.pt", model: str | None = None, image_size: int | None = None,
                      vq_model: str | None = None, num_heads: int | None = None, revision: str | None = None,
                      cache_dir: str | None = None, **sampling) -> "VQGPTPipeline":
        """LlamaGen's published class-conditional GPT and VQ tokenizer as one pipeline.

        `repo_id_or_path` is a local folder holding `gpt` and `vq`, or a Hub repo they are downloaded
        from with `huggingface_hub` (its cache, so HF_HUB_OFFLINE=1 uses files fetched before). The GPT
        size and image size come from the file name (`c2i_L_384.pt` -> GPT-L at 384 px) unless given;
        the VQ model from `vq` (`vq_ds8_*` -> VQ-8, else VQ-16). Sampling defaults are LlamaGen's
        sample_c2i.py (guidance 4.0 on logits, top-k 2000, temperature 1.0); override with keyword
        arguments (guidance_scale, temperature, top_k, top_p).
        """
        model, image_size = _llamagen_settings(gpt, model, image_size, sampling)
        vq_model = llamagen_vq_model(vq, vq_model)

        def fetch(filename):
            if os.path.isdir(repo_id_or_path):
                path = os.path.join(repo_id_or_path, filename)
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{filename} not found in {repo_id_or_path}")
                return path
            return hf_hub_download(repo_id_or_path, filename, revision=revision, cache_dir=cache_dir)

        tokenizer = tokenizer_from_llamagen(load_state_dict(fetch(vq)), vq_model, image_size)
        return cls.from_llamagen_gpt(tokenizer, fetch(gpt), model, image_size, num_heads,
                                     source=f"LlamaGen ({repo_id_or_path}: {gpt}, {vq})", **sampling)

    @classmethod
    def from_llamagen_gpt(cls, tokenizer: VQTokenizer, checkpoint: str, model: str | None = None,
                          image_size: int | None = None, num_heads: int | None = None, source: str | None = None,
                          **sampling) -> "VQGPTPipeline":
        """A LlamaGen c2i GPT checkpoint file on top of an lcgen tokenizer (e.g. a converted LlamaGen VQ);
        model / image size from the file name unless given, LlamaGen's sampling defaults."""
        model, image_size = _llamagen_settings(checkpoint, model, image_size, sampling)
        prior = gpt_from_llamagen(load_state_dict(checkpoint), model if num_heads is None else None, image_size,
                                  tokenizer.downsample_factor, num_heads=num_heads)
        id2label = imagenet_id2label() if prior.config.num_classes == 1000 else None
        info = {"source": source or f"LlamaGen ({os.path.basename(checkpoint)})",
                "dataset": "ImageNet" if id2label else None, "model": f"{model} at {image_size} px",
                "sampling_protocol": "LlamaGen autoregressive/sample/sample_c2i.py defaults"}
        return cls(tokenizer, prior, id2label=id2label, info=info, **{**LLAMAGEN_SAMPLING, **sampling})


def _llamagen_settings(gpt_file: str, model, image_size, sampling: dict) -> tuple[str, int]:
    """Check the sampling overrides; the GPT size and image size from the file name where not given."""
    unknown = sorted(set(sampling) - set(LLAMAGEN_SAMPLING))
    if unknown:
        raise TypeError(f"unexpected argument(s) {unknown}; sampling settings are {sorted(LLAMAGEN_SAMPLING)}")
    if model is None or image_size is None:
        parsed_model, parsed_size = parse_llamagen_name(os.path.basename(gpt_file))
        model, image_size = model or parsed_model, image_size or parsed_size
    return model, image_size
