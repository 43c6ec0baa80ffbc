"""The model card (README.md) and example grid that `push_to_hub` uploads with a pipeline."""
from __future__ import annotations

import json
import os

import torch
from huggingface_hub import ModelCard, ModelCardData
from torchvision.utils import save_image

from lcgen.data import HUB_IDS

# the card's body; the metadata block above it comes from huggingface_hub.ModelCardData
BODY = """
# {repo_id}

An lcgen `{pipeline}`: a {prior_desc} prior over the codes of a `{quantizer}` tokenizer
(codebook size {codebook_size}), trained on **{dataset}**.

![example grid](example_grid.png)

Classes {example_classes} of the grid above, {images_per_class} image(s) each, sampled with
`{sample_settings}`.

## Use

```python
import lcgen.pipelines  # pip install lcgen; registers lcgen's pipelines with diffusers
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{repo_id}")  # a {pipeline}
images = pipe(class_id={first_class}, num_images_per_class=4).images
```

`{pipeline}.from_pretrained("{repo_id}")` (from `lcgen.pipelines`) loads it too.

## Components

| component | class | key settings |
|---|---|---|
{component_rows}

## Training and metrics

```json
{info}
```
"""


def card_data(pipe) -> ModelCardData:
    """The metadata the Hub reads: library, tags, the training dataset's Hub id, the task."""
    info = dict(pipe.config.get("info") or {})
    name = str(info.get("dataset", "")).split(" ")[0]
    dataset = HUB_IDS.get(name) or (name if "/" in name else None)
    return ModelCardData(library_name="lcgen", pipeline_tag="unconditional-image-generation",
                         tags=["lcgen", "diffusers", "image-generation", "class-conditional", pipe.family,
                               f"quantizer-{pipe.vqvae.config.quantizer_kind}"],
                         datasets=[dataset] if dataset else None)


def _component_rows(pipe) -> str:
    rows = []
    for name, module in pipe.components.items():
        cfg = getattr(module, "config", {}) or {}
        keys = ("quantizer_kind", "codebook_size", "embed_dim", "backbone", "num_layers", "hidden_size",
                "patch_size", "sample_size", "in_channels", "num_classes", "block_out_channels",
                "num_train_timesteps", "beta_schedule", "tokens_per_position")
        settings = ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg)
        rows.append(f"| `{name}` | `{type(module).__name__}` | {settings} |")
    return "\n".join(rows)


def write_model_card(pipe, folder: str, repo_id: str, example_class_ids=None, num_images_per_class: int = 1,
                     **sample_kwargs) -> str:
    """Write folder/example_grid.png and folder/README.md; returns the card's path."""
    n = pipe.num_classes
    classes = list(example_class_ids) if example_class_ids is not None else (list(range(min(n, 8))) or None)
    out = pipe(class_id=classes, num_images_per_class=num_images_per_class,
               generator=torch.Generator().manual_seed(0), output_type="pt", **sample_kwargs).images
    save_image(out, os.path.join(folder, "example_grid.png"), nrow=len(classes) if classes else 8)
    tok = pipe.vqvae.config
    info = dict(pipe.config.get("info") or {})
    body = BODY.format(
        repo_id=repo_id, pipeline=type(pipe).__name__, prior_desc=pipe.family.upper(),
        quantizer=tok.quantizer_kind, codebook_size=tok.codebook_size, dataset=info.get("dataset", "unknown"),
        example_classes=classes if classes else "(unconditional)", images_per_class=num_images_per_class,
        sample_settings=", ".join(f"{k}={v}" for k, v in {**pipe.default_sampling(), **sample_kwargs}.items()),
        first_class=classes[0] if classes else None, component_rows=_component_rows(pipe),
        info=json.dumps(info, indent=2, default=str))
    path = os.path.join(folder, "README.md")
    ModelCard(f"---\n{card_data(pipe).to_yaml()}\n---\n{body}").save(path)
    return path
