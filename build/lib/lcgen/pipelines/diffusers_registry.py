"""Makes diffusers' generic loader know lcgen: `DiffusionPipeline.from_pretrained(folder_or_repo_id)`
returns the lcgen pipeline a folder's `model_index.json` names, once `lcgen.pipelines` is imported.

diffusers resolves a pipeline's `_class_name` as an attribute of the `diffusers` module, and, before a
Hub download, accepts a component only when its library is one of `LOADABLE_CLASSES` (or a file in
the repository, which would be remote code). lcgen therefore adds its pipeline classes to the
`diffusers` namespace and the modules of its component classes to `LOADABLE_CLASSES`; it never
replaces a name diffusers itself defines. Saved folders keep naming the components by module
(`["lcgen.tokenizer.model", "VQTokenizer"]`), exactly as diffusers writes them.
"""
from __future__ import annotations

import diffusers
from diffusers.pipelines import pipeline_loading_utils

# how diffusers saves and loads a ModelMixin component
_MODEL_METHODS = {"ModelMixin": ["save_pretrained", "from_pretrained"]}


def register_with_diffusers(pipeline_classes, component_modules) -> None:
    """Idempotent; a name diffusers already defines for another class is an error, not an override."""
    for cls in pipeline_classes:
        try:
            existing = getattr(diffusers, cls.__name__)
        except AttributeError:  # diffusers' lazy module: not one of its names
            existing = None
        if existing is not None and existing is not cls:
            raise RuntimeError(f"diffusers already defines {cls.__name__}; lcgen will not replace it")
        setattr(diffusers, cls.__name__, cls)
    for module in component_modules:
        pipeline_loading_utils.LOADABLE_CLASSES.setdefault(module, _MODEL_METHODS)
