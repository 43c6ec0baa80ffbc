"""Atomic `accelerator.save_state` checkpoints: written to `checkpoint-<step>.tmp`, then renamed, so
an interrupted save never leaves a directory that looks complete. `latest` is the complete
checkpoint with the highest step. EMA weights travel as safetensors next to accelerate's files."""
from __future__ import annotations

import os
import re
import shutil

from accelerate.logging import get_logger
from safetensors import safe_open
from safetensors.torch import load_file, save_file

logger = get_logger(__name__)

_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of complete checkpoints, oldest first."""
    root = checkpoint_dir(output_dir)
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), os.path.join(root, n)) for n in os.listdir(root) if (m := _NAME.match(n))]
    return sorted(found)


def resolve_checkpoint(output_dir: str, which: str) -> tuple[int, str]:
    """"latest" or a path -> (step, path); a ValueError when there is none."""
    if which == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise ValueError(f"--resume_from_checkpoint latest: no checkpoint under {checkpoint_dir(output_dir)}")
        return found[-1]
    m = _NAME.match(os.path.basename(os.path.normpath(which)))
    if not m or not os.path.isdir(which):
        raise ValueError(f"--resume_from_checkpoint must be 'latest' or an existing checkpoint-<step> dir, got {which!r}")
    return int(m.group(1)), which


def save_checkpoint(accelerator, output_dir: str, step: int, ema=None, keep: int | None = None) -> str:
    """Every process calls this (accelerate writes per-process RNG files); the main one renames."""
    final = os.path.join(checkpoint_dir(output_dir), f"checkpoint-{step}")
    tmp = final + ".tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an interrupted save
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp, safe_serialization=True)
    if accelerator.is_main_process and ema is not None:
        save_file({f"shadow.{i}": p.detach().cpu().contiguous() for i, p in enumerate(ema.shadow_params)},
                  os.path.join(tmp, "ema.safetensors"), metadata={"optimization_step": str(ema.optimization_step)})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if keep is not None:
            for _, old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str, ema=None) -> None:
    accelerator.load_state(path)
    if ema is not None:
        file = os.path.join(path, "ema.safetensors")
        if not os.path.isfile(file):
            raise ValueError(f"{path} has no ema.safetensors but use_ema is on (was it trained without EMA?)")
        state = load_file(file)
        with safe_open(file, framework="pt") as f:
            ema.optimization_step = int(f.metadata()["optimization_step"])
        for i, p in enumerate(ema.shadow_params):
            p.data.copy_(state[f"shadow.{i}"].to(p.device))


def resume_position(accelerator, resume, ema, steps_per_epoch: int, accumulation: int) -> tuple[int, int, int]:
    """Load `resume` = (step, path) (or nothing when None) -> (global_step, first_epoch, batches to
    skip in that epoch), the position an interrupted run continues from."""
    if not resume:
        return 0, 0, 0
    step, path = resume
    load_checkpoint(accelerator, path, ema)
    logger.info(f"resumed from {path} at step {step}")
    return step, step // steps_per_epoch, (step % steps_per_epoch) * accumulation
