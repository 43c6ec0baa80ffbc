"""lcgen's named presets (each paper recipe and the small CPU ones), shipped inside the package as
`lcgen.configs`: `--config vqgan-lc-f16-100k` (a preset name) and `--config path/to/file.yaml` both
work from any working directory."""
from __future__ import annotations

import os

PRESETS_DIR = os.path.dirname(os.path.abspath(__file__))


def preset_names() -> list[str]:
    return sorted(f[:-len(".yaml")] for f in os.listdir(PRESETS_DIR) if f.endswith(".yaml"))


def resolve_config(name_or_path: str) -> str:
    """An existing YAML file, or the shipped preset of that name (`.yaml` optional) -> its path."""
    if os.path.isfile(name_or_path):
        return name_or_path
    name = name_or_path[:-len(".yaml")] if name_or_path.endswith(".yaml") else name_or_path
    if os.sep not in name and "/" not in name and name in preset_names():
        return os.path.join(PRESETS_DIR, f"{name}.yaml")
    raise ValueError(f"config file not found: {name_or_path!r}, and it is no preset name either "
                     f"(presets: {', '.join(preset_names())})")
