"""What the four lcgen pipelines share: class ids and names, input checks, decoding through the
tokenizer, output conversion, and pushing with a model card (loading, from a folder or the Hub, is
diffusers' own `from_pretrained`).

Each pipeline registers the tokenizer as `vqvae` (diffusers' LDMPipeline name for a VQ model) and its
prior, and keeps `id2label` (and the other non-module settings) in `model_index.json` through
`register_to_config`, so `save_pretrained` writes a complete folder and `from_pretrained` restores it.
"""
from __future__ import annotations

import inspect
import os
import tempfile

import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from huggingface_hub import HfApi

from lcgen.checks import check_finite

from .model_card import write_model_card

OUTPUT_TYPES = ("pil", "np", "pt")


class LCGenPipeline(DiffusionPipeline):
    """Base class: not used directly (see VQGPTPipeline, VQLDMPipeline, VQDiTPipeline, VQSiTPipeline)."""

    image_processor = VaeImageProcessor(do_normalize=True)

    # ------------------------------------------------------------------ labels
    def _register_settings(self, id2label=None, **settings):
        id2label = {int(k): str(v) for k, v in (id2label or {}).items()}  # JSON turns int keys into strings
        n = self.num_classes
        if any(not 0 <= k < max(n, 1) for k in id2label):
            raise ValueError(f"id2label keys must lie in [0, {n}), got {sorted(id2label)[:5]}...")
        self.register_to_config(id2label=id2label, **settings)
        # every comma-separated synonym maps to its id, as diffusers' DiTPipeline.labels
        self.labels = {name.strip(): k for k, v in id2label.items() for name in v.split(",")}

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    @property
    def id2label(self) -> dict:
        return dict(self.config.id2label)

    def get_label_ids(self, label) -> list[int]:
        """A class name or a list of names -> ids (a single string is one name, unlike DiTPipeline)."""
        names = [label] if isinstance(label, str) else list(label)
        missing = [n for n in names if n not in self.labels]
        if missing:
            known = ", ".join(sorted(self.labels)[:20])
            raise ValueError(f"class name(s) {missing} not in id2label (known: {known or 'none: id2label is empty'})")
        return [self.labels[n] for n in names]

    # ------------------------------------------------------------------ checks
    def _class_ids(self, class_id, num_images_per_class: int) -> list[int]:
        """class_id (int, name, or a list of them; None for unconditional models) -> one id per image.
        Unconditional models get the null id num_classes for every image."""
        if not isinstance(num_images_per_class, int) or isinstance(num_images_per_class, bool) \
                or num_images_per_class <= 0:
            raise ValueError(f"num_images_per_class must be a positive int, got {num_images_per_class!r}")
        n = self.num_classes
        if n == 0:
            if class_id is not None:
                raise ValueError("this pipeline is unconditional (num_classes=0): pass class_id=None")
            return [0] * num_images_per_class  # the prior's only class row is the null row 0
        if class_id is None:
            raise ValueError(f"class_id is required: an int in [0, {n}), a class name, or a list of them")
        items = class_id if isinstance(class_id, (list, tuple)) else [class_id]
        if not items:
            raise ValueError("class_id is an empty list")
        ids = []
        for c in items:
            if isinstance(c, str):
                ids += self.get_label_ids(c)
            elif isinstance(c, (int, torch.Tensor)) and not isinstance(c, bool) and getattr(c, "ndim", 0) == 0:
                c = int(c)
                if not 0 <= c < n:
                    raise ValueError(f"class_id {c} is out of range [0, {n})")
                ids.append(c)
            else:
                raise ValueError(f"class_id entries must be ints or class names, got {c!r}")
        return [c for c in ids for _ in range(num_images_per_class)]

    def _check_common(self, batch: int, guidance_scale, generator, output_type, num_inference_steps=None):
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if guidance_scale is not None:
            check_finite("guidance_scale", guidance_scale, minimum=0)
            if self.num_classes == 0 and guidance_scale != 1.0:
                raise ValueError(f"guidance_scale={guidance_scale} needs a class-conditional model; this one is "
                                 f"unconditional (num_classes=0): leave guidance_scale unset or 1.0")
        if num_inference_steps is not None and (not isinstance(num_inference_steps, int)
                                                or isinstance(num_inference_steps, bool) or num_inference_steps <= 0):
            raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
        gens = generator if isinstance(generator, list) else [generator]
        if generator is not None and not all(isinstance(g, torch.Generator) for g in gens):
            raise TypeError(f"generator must be a torch.Generator or a list of them, got {generator!r} "
                            "(seed one with torch.Generator().manual_seed(n))")
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got a list of {len(generator)} generators for {batch} images: pass one generator "
                             f"or exactly one per image")

    # the per-image arguments of __call__ and the ones that do not change the images (compile);
    # everything else is a sampling option
    PER_CALL = ("class_id", "num_images_per_class", "generator", "output_type", "return_dict", "compile")

    def check_sampling(self, **options) -> None:
        """Refuse, without sampling, the sampling options `__call__` would refuse: a caller that
        draws many batches (eval.sampling.generate) checks them once before any image or file."""
        allowed = [k for k in inspect.signature(self.__call__).parameters if k not in self.PER_CALL]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise TypeError(f"{type(self).__name__} has no sampling option(s) {unknown}; it takes {allowed}")
        self._check_common(1, options.get("guidance_scale"), None, "pt", options.get("num_inference_steps"))
        self._check_options(**{k: v for k, v in options.items() if k not in ("guidance_scale", "num_inference_steps")})

    def _check_options(self, **options) -> None:
        """The family's own sampling options (temperature, eta, sampling_method ...)."""

    def _guidance(self, guidance_scale) -> float:
        if self.num_classes == 0:
            return 1.0
        return float(self.config.guidance_scale if guidance_scale is None else guidance_scale)

    # ------------------------------------------------------------------ decoding and output
    def _output(self, images: torch.Tensor, output_type: str, return_dict: bool):
        images = images.float().clamp(-1, 1)
        out = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=out) if return_dict else (out,)

    # ------------------------------------------------------------------ Hub
    def push_to_hub(self, repo_id: str, commit_message: str = "Upload lcgen pipeline", private: bool | None = None,
                    token: str | None = None, create_pr: bool = False, example_class_ids=None, **sample_kwargs):
        """Save the pipeline, an example grid and a model card (README.md) and upload them.
        `example_class_ids` picks the grid's classes (default: up to 8 of them)."""
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            write_model_card(self, tmp, repo_id, example_class_ids, **sample_kwargs)
            return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message,
                                     create_pr=create_pr)
