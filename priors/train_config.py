"""The sections of a prior training config: `prior`, `data`, `training`, `sampling`."""
from __future__ import annotations

from dataclasses import dataclass, field

from lcgen.training.settings import TrainingConfig


@dataclass
class PriorConfig:
    """Which prior, and the settings of its objective."""

    family: str = "gpt"  # gpt | ldm | dit | sit
    size: str = "GPT-B"  # GPT-T/S/B/L/XL/XXL, LDM-T/S/B, DiT-<T/S/B/L/XL>/<patch>, SiT-<...>/<patch>
    num_classes: int | None = None  # default: the class count of the shards; 0 = unconditional
    class_dropout_prob: float = 0.1  # label dropout to the null class (classifier-free guidance)
    options: dict = field(default_factory=dict)  # extra model constructor arguments
    num_train_timesteps: int = 1000  # LDM, DiT: DDPM
    beta_schedule: str = "linear"  # DiT: linear 1e-4..0.02; LDM: scaled_linear 0.0015..0.0195
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"  # LDM, DiT: epsilon | v_prediction (what the denoiser regresses)
    snr_gamma: float | None = None  # LDM, DiT: min-SNR-gamma loss weighting (5.0 in Hang et al.); None = off
    path_type: str = "linear"  # SiT: linear | gvp
    # LDM, DiT, SiT: the space modelled (priors/latent_space.py): auto = "chunk" (unit chunk directions)
    # for tokenizers that snap chunks by cosine, else "global" ((z - mean) / std)
    latent_normalization: str = "auto"
    loss_chunk_size: int = 4096  # GPT: positions per chunk of the memory-aware cross-entropy


@dataclass
class PriorDataConfig:
    shards: str = "runs/extract"  # a folder written by `lcgen extract`
    tokenizer: str | None = None  # default: the tokenizer recorded in the shards
    max_samples: int | None = None
    num_workers: int = 0


@dataclass
class PriorTrainingConfig(TrainingConfig):
    """TrainingConfig with LlamaGen/DiT defaults: AdamW(0.9, 0.95), wd 0.05, lr 1e-4, clip 1.0."""

    output_dir: str = "runs/prior"
    batch_size: int = 256
    lr: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.05
    lr_scheduler: str = "constant"
    max_grad_norm: float | None = 1.0
    use_ema: bool = True
    ema_decay: float = 0.9999
    sample_every: int | None = None  # steps between sample grids (tensorboard + <output_dir>/samples); None = end only


@dataclass
class SamplingConfig:
    """Defaults stored in the saved pipeline (and used for the training sample grids)."""

    guidance_scale: float = 4.0
    num_inference_steps: int = 50
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    sampling_method: str = "euler"  # SiT: euler | heun | sde
    scheduler: str = "ddim"  # LDM, DiT: ddim | dpmsolver
    timestep_spacing: str = "leading"  # LDM, DiT: leading | trailing | linspace (trailing suits few-step DDIM)
    eta: float = 0.0  # LDM, DiT with ddim: DDIM's eta (0 deterministic; LDM's own sampling uses 1)
