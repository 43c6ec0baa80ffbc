"""The sections of a tokenizer training config besides `model` (VQTokenizer's arguments)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    """Which images, and how they are preprocessed (see lcgen.data.build_dataset)."""

    name: str = "fashion-mnist"
    split: str = "train"
    eval_split: str = "test"
    resolution: int | None = None
    crop: str = "center"
    flip: bool = False
    channels: int = 3
    data_dir: str | None = None
    streaming: bool = False
    max_samples: int | None = None
    num_workers: int = 0


@dataclass
class LossConfig:
    """Weights of the stage-one loss (tokenizer.losses.TokenizerLoss)."""

    perceptual_weight: float = 1.0
    quantizer_weight: float = 0.1
    disc_weight: float = 0.1
    disc_start: int = 50_000
    disc_layers: int = 2
    disc_ndf: int = 64
    adaptive_disc_weight: bool = True
    lpips_vgg_weights: str | None = None
    lpips_random_trunk: bool = False
