"""Argument checks shared by every layer, so that one bad value gets the same clear error wherever it
is passed, before any work: NaN passes every comparison (`nan < 0` is False), a bool is an int, and
a path that does not exist would otherwise reach the Hub client as a repo id."""
from __future__ import annotations

import math
import os


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_positive_int(name: str, value, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def check_finite(name: str, value, minimum: float | None = None) -> None:
    """A real number (not a bool, not NaN or inf), at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def check_output_folder(name: str, path: str) -> None:
    """An output folder may exist or not, but must not be a file."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{name} {path!r} exists and is not a folder")


def is_local_path(path: str) -> bool:
    """A string meant as a file or folder here, not a Hub id such as openai/clip-vit-large-patch14."""
    return os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path)
