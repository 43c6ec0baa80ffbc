"""The `training` section both loops share (optimisation, checkpointing, logging) and its checks."""
from __future__ import annotations

import os
from dataclasses import dataclass

from diffusers.optimization import SchedulerType


@dataclass
class TrainingConfig:
    """Optimisation, checkpointing and logging."""

    output_dir: str = "runs/tokenizer"
    seed: int = 0
    batch_size: int = 32  # per process
    gradient_accumulation_steps: int = 1
    num_epochs: int = 1
    max_train_steps: int | None = None  # overrides num_epochs when set
    lr: float = 1e-4
    disc_lr: float | None = None  # defaults to lr
    adam_beta1: float = 0.5
    adam_beta2: float = 0.9
    adam_epsilon: float = 1e-7
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"  # diffusers.optimization names; warm-up then the schedule
    lr_warmup_steps: int = 0
    max_grad_norm: float | None = None
    # no | fp16 | bf16 (the quantizer's search stays fp32); None: what `accelerate launch --mixed_precision`
    # or `accelerate config` set
    mixed_precision: str | None = None
    # weight EMA (diffusers' EMAModel) averages parameters only, as LDM's LitEma and LlamaGen's update_ema:
    # buffers (an EMA codebook, CVQ's usage, BatchNorm statistics) stay the live model's in the saved copy
    use_ema: bool = False
    ema_decay: float = 0.999
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None  # a checkpoint dir or "latest"
    stop_at_step: int | None = None  # end the process after this step, as an interruption would
    log_every: int = 50
    report_to: str | None = "tensorboard"
    deterministic: bool = False
    push_to_hub: bool = False
    hub_model_id: str | None = None


MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = tuple(s.value for s in SchedulerType)  # what diffusers' get_scheduler accepts


def check_training(t: TrainingConfig) -> None:
    """The checks of a `training` section shared by the tokenizer and prior loops."""
    if t.mixed_precision is not None and t.mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"training.mixed_precision must be one of {MIXED_PRECISION}, got {t.mixed_precision!r} (or leave it unset for accelerate's own setting)")
    for name in ("batch_size", "gradient_accumulation_steps", "num_epochs", "checkpointing_steps", "log_every"):
        if getattr(t, name) <= 0:
            raise ValueError(f"training.{name} must be > 0, got {getattr(t, name)}")
    if t.max_train_steps is not None and t.max_train_steps <= 0:
        raise ValueError(f"training.max_train_steps must be > 0, got {t.max_train_steps}")
    if t.lr_scheduler not in LR_SCHEDULERS:
        raise ValueError(f"training.lr_scheduler must be one of {LR_SCHEDULERS}, got {t.lr_scheduler!r}")
    if t.lr_warmup_steps < 0:
        raise ValueError(f"training.lr_warmup_steps must be >= 0, got {t.lr_warmup_steps}")
    if t.lr_warmup_steps and t.lr_scheduler == "piecewise_constant":
        raise ValueError("training.lr_scheduler 'piecewise_constant' has no warm-up: set lr_warmup_steps to 0 "
                         "or pick a schedule with one (constant_with_warmup, linear, cosine, ...)")
    if t.lr <= 0:
        raise ValueError(f"training.lr must be > 0, got {t.lr}")
    if not 0 < t.ema_decay < 1:
        raise ValueError(f"training.ema_decay must be in (0, 1), got {t.ema_decay}")
    if t.push_to_hub and not t.hub_model_id:
        raise ValueError("training.push_to_hub needs training.hub_model_id (e.g. 'you/model-name')")
    if os.path.exists(t.output_dir) and not os.path.isdir(t.output_dir):
        raise ValueError(f"training.output_dir {t.output_dir!r} exists and is not a directory")
