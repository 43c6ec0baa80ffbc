"""The `Accelerator` both training loops (tokenizer, priors) build from a `training` section."""
from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration


def build_accelerator(t):
    """Gradient accumulation, mixed precision, tensorboard under <output_dir>/logs, seedable sampler.

    accelerate keeps one global state per process; a second run in the same process (the demo,
    notebooks, tests) may ask for another precision, so it is reset here (the distributed state is kept).
    """
    tracker = None if t.report_to in (None, "none") else t.report_to
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        gradient_accumulation_steps=t.gradient_accumulation_steps, mixed_precision=t.mixed_precision, log_with=tracker,
        project_config=ProjectConfiguration(project_dir=t.output_dir, logging_dir=os.path.join(t.output_dir, "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    return accelerator, tracker
