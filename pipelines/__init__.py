"""diffusers pipelines joining a tokenizer and a prior: `pipe(class_id=207)`.

Importing this package registers the pipelines with diffusers (`diffusers_registry.py`), so both
`VQDiTPipeline.from_pretrained(folder_or_repo_id)` and diffusers' generic
`DiffusionPipeline.from_pretrained(folder_or_repo_id)` load a saved lcgen pipeline.
"""
import json
import os

from diffusers import DiffusionPipeline
from huggingface_hub import hf_hub_download

from lcgen.checks import is_local_path
from lcgen.priors.dit import DiTModel
from lcgen.priors.gpt import GPTPrior
from lcgen.priors.ldm import ClassCrossAttentionUNet
from lcgen.tokenizer.model import VQTokenizer

from .base import LCGenPipeline
from .diffusers_registry import register_with_diffusers
from .dit import VQDiTPipeline
from .gpt import VQGPTPipeline
from .ldm import VQLDMPipeline
from .sit import VQSiTPipeline

PIPELINES = {"gpt": VQGPTPipeline, "ldm": VQLDMPipeline, "dit": VQDiTPipeline, "sit": VQSiTPipeline}

__all__ = ["LCGenPipeline", "VQGPTPipeline", "VQLDMPipeline", "VQDiTPipeline", "VQSiTPipeline", "PIPELINES",
           "load_pipeline"]

# the lcgen classes a pipeline folder names as components (UNet2DModel and the schedulers are diffusers')
register_with_diffusers(PIPELINES.values(), [c.__module__ for c in (VQTokenizer, GPTPrior, DiTModel, ClassCrossAttentionUNet)])


def load_pipeline(path: str, **kwargs):
    """Any saved lcgen pipeline (a folder or a Hub repo id); a folder of another library's pipeline is
    refused with its class name before any weights load."""
    if is_local_path(path):
        index = os.path.join(os.path.expanduser(path), "model_index.json")
        if not os.path.isfile(index):
            raise FileNotFoundError(f"{path} is not a saved pipeline folder (no model_index.json)")
    else:
        hub = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
        index = hf_hub_download(path, "model_index.json", **hub)
    with open(index) as f:
        name = json.load(f).get("_class_name")
    classes = {cls.__name__ for cls in PIPELINES.values()}
    if name not in classes:
        raise ValueError(f"{path!r} holds a {name!r} pipeline, not one of lcgen's {sorted(classes)}")
    return DiffusionPipeline.from_pretrained(path, **kwargs)
