"""diffusers pipelines joining a tokenizer and a prior: `pipe(class_id=207)`.

Load them with their own class (`VQDiTPipeline.from_pretrained(dir_or_repo_id)`): the components'
classes live in lcgen, so `diffusers.DiffusionPipeline.from_pretrained` alone cannot resolve them.
"""
import json
import os

from .base import LCGenPipeline
from .dit import VQDiTPipeline
from .gpt import VQGPTPipeline
from .ldm import VQLDMPipeline
from .sit import VQSiTPipeline

PIPELINES = {"gpt": VQGPTPipeline, "ldm": VQLDMPipeline, "dit": VQDiTPipeline, "sit": VQSiTPipeline}

__all__ = ["LCGenPipeline", "VQGPTPipeline", "VQLDMPipeline", "VQDiTPipeline", "VQSiTPipeline", "PIPELINES",
           "load_pipeline"]


def load_pipeline(path: str, **kwargs):
    """Any saved lcgen pipeline: the class is read from model_index.json's `_class_name`."""
    if os.path.isdir(path):
        with open(os.path.join(path, "model_index.json")) as f:
            name = json.load(f).get("_class_name")
    else:
        from huggingface_hub import hf_hub_download

        with open(hf_hub_download(path, "model_index.json")) as f:
            name = json.load(f).get("_class_name")
    classes = {cls.__name__: cls for cls in PIPELINES.values()}
    if name not in classes:
        raise ValueError(f"{path!r} holds a {name!r} pipeline, not one of lcgen's {sorted(classes)}")
    return classes[name].from_pretrained(path, **kwargs)
