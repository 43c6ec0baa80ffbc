"""Opening the papers' published checkpoints safely: `torch.load(weights_only=True)` with an allow-list.

Official checkpoints are pickles. lcgen never runs a full unpickle: the weights-only unpickler accepts
tensors and plain containers, and `ALLOWED_GLOBALS` adds the few plain types the published files
carry beside their weights (LlamaGen's and VQGAN-LC's training scripts save their `argparse.Namespace`).
A file that needs anything else is refused with a message naming what it asked for.
"""
from __future__ import annotations

import argparse
import os
import pickle
from collections import OrderedDict

import torch

# plain data types a published checkpoint may hold next to its weights; nothing that runs code
ALLOWED_GLOBALS = (argparse.Namespace, OrderedDict)
# where the published files keep their weights (LlamaGen: "model"; DeepSpeed: "module"; Lightning: "state_dict")
STATE_DICT_KEYS = ("model", "module", "state_dict", "ema")


def load_checkpoint(path: str) -> dict:
    """The unpickled top-level object of an official `.pt`/`.pth`/`.ckpt` file, loaded weights-only on the CPU."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint {path} is empty")
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"refusing to open {path}: it needs more than tensors and plain types to unpickle "
                         f"({str(e).splitlines()[0]}); lcgen only loads weights-only pickles") from None
    except Exception as e:  # noqa: BLE001  torch.load of a foreign file fails in many ways (RuntimeError, EOFError, IndexError ...)
        raise ValueError(f"{path} is not a readable torch checkpoint (truncated or another format): {e}") from None


def state_dict_of(checkpoint, prefer: tuple[str, ...] = STATE_DICT_KEYS) -> dict[str, torch.Tensor]:
    """The weights of a loaded checkpoint: the first of `prefer` present, or the object itself when it
    is already a flat name -> tensor mapping."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f"expected a checkpoint dict, got {type(checkpoint).__name__}")
    for key in prefer:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    weights = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not weights:
        raise ValueError(f"no weights found in the checkpoint (top-level keys: {sorted(map(str, checkpoint))[:10]})")
    return weights


def load_state_dict(path: str, prefer: tuple[str, ...] = STATE_DICT_KEYS) -> dict[str, torch.Tensor]:
    """`state_dict_of(load_checkpoint(path))`, with a leading DDP "module." stripped from every key."""
    weights = state_dict_of(load_checkpoint(path), prefer)
    if all(k.startswith("module.") for k in weights):
        weights = {k[len("module."):]: v for k, v in weights.items()}
    return weights


def take(state: dict[str, torch.Tensor], expected: dict[str, tuple], source: str) -> None:
    """Check that `state` has exactly the keys of `expected` (name -> shape) with those shapes, naming
    the first differences; a converter calls it before building anything."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"not a {source} checkpoint for this configuration: {len(missing)} missing key(s) "
                         f"{missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}")
    wrong = [(k, tuple(state[k].shape), shape) for k, shape in expected.items() if tuple(state[k].shape) != shape]
    if wrong:
        k, got, want = wrong[0]
        raise ValueError(f"{source} checkpoint does not fit this configuration: {k} has shape {got}, expected "
                         f"{want} ({len(wrong)} mismatched tensor(s))")
