"""Train a prior: `accelerate launch -m priors.train --config configs/<preset>.yaml [--key value ...]`.

One loop for GPT, LDM, DiT and SiT (`lcgen train-prior` runs it in one process). It reads token
shards written by `lcgen extract`, never images. AdamW with warm-up + schedule, gradient
accumulation, mixed precision by flag, EMA of the weights, atomic `save_state` checkpoints with exact
`--resume_from_checkpoint latest`, tensorboard logs and sample grids (sampled with the EMA weights,
which are then restored), and a final `save_pretrained` of the whole pipeline (+ `--push_to_hub`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
from torch.utils.data import DataLoader

from tokenizer.accelerator import build_accelerator
from tokenizer.checkpointing import resolve_checkpoint, resume_position, save_checkpoint
from tokenizer.config import load_config
from tokenizer.train_config import check_training

from .families import PriorObjective, build_prior, check_family, data_key
from .shards import TokenShardDataset, read_meta
from .train_config import PriorConfig, PriorDataConfig, PriorTrainingConfig, SamplingConfig
from .transport import PATHS, SAMPLERS

SCHEMAS = {"prior": PriorConfig, "data": PriorDataConfig, "training": PriorTrainingConfig, "sampling": SamplingConfig}
SCHEDULERS = ("ddim", "dpmsolver")


def parse_config(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="priors.train", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="a YAML preset (configs/*.yaml)")
    args, overrides = p.parse_known_args(argv)
    return load_config(args.config, overrides, SCHEMAS)


def check_config(cfg: dict) -> dict:
    """Everything that can be wrong with a config, before any work or write; returns the shard metadata."""
    p, d, t, s = cfg["prior"], cfg["data"], cfg["training"], cfg["sampling"]
    check_training(t)
    check_family(p.family, p.size)
    if not 0 <= p.class_dropout_prob < 1:
        raise ValueError(f"prior.class_dropout_prob must be in [0, 1), got {p.class_dropout_prob}")
    if p.path_type not in PATHS:
        raise ValueError(f"prior.path_type must be one of {PATHS}, got {p.path_type!r}")
    if s.sampling_method not in SAMPLERS:
        raise ValueError(f"sampling.sampling_method must be one of {SAMPLERS}, got {s.sampling_method!r}")
    if s.scheduler not in SCHEDULERS:
        raise ValueError(f"sampling.scheduler must be one of {SCHEDULERS}, got {s.scheduler!r}")
    if s.num_inference_steps <= 0:
        raise ValueError(f"sampling.num_inference_steps must be > 0, got {s.num_inference_steps}")
    meta = read_meta(d.shards)
    if data_key(p.family) not in meta["stored"]:
        raise ValueError(f"a {p.family} prior reads {data_key(p.family)}, but {d.shards!r} stores only {meta['stored']}")
    n_data = len(meta.get("class_names") or [])
    if p.num_classes is not None and (p.num_classes < 0 or (p.num_classes and n_data and p.num_classes < n_data)):
        raise ValueError(f"prior.num_classes={p.num_classes} cannot hold the {n_data} classes of the shards "
                         f"(0 = unconditional)")
    tok = d.tokenizer or meta["tokenizer"]
    if not os.path.isdir(tok):
        raise ValueError(f"tokenizer {tok!r} (from {'data.tokenizer' if d.tokenizer else 'the shards'}) is not a folder")
    return meta


def _noise_scheduler(p: PriorConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=p.num_train_timesteps, beta_schedule=p.beta_schedule,
                         beta_start=p.beta_start, beta_end=p.beta_end, clip_sample=False, prediction_type="epsilon")


def make_pipeline(cfg: dict, meta: dict, tokenizer, model, info: dict | None = None):
    """The saved artefact of a run: the tokenizer + the prior (+ scheduler) with sampling defaults."""
    from pipelines import PIPELINES

    p, s = cfg["prior"], cfg["sampling"]
    id2label = dict(enumerate(meta.get("class_names") or [])) if _num_classes(p, meta) else {}
    common = dict(id2label=id2label, guidance_scale=s.guidance_scale, info=info or {})
    cls = PIPELINES[p.family]
    if p.family == "gpt":
        return cls(tokenizer, model, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, **common)
    latent = dict(latent_shift=meta["latent_mean"], latent_scale=1.0 / meta["latent_std"],
                  num_inference_steps=s.num_inference_steps, **common)
    if p.family == "sit":
        return cls(tokenizer, model, path_type=p.path_type, sampling_method=s.sampling_method, **latent)
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    sampler = {"ddim": DDIMScheduler, "dpmsolver": DPMSolverMultistepScheduler}[s.scheduler]
    return cls(tokenizer, model, sampler.from_config(_noise_scheduler(p).config), **latent)


def _num_classes(p: PriorConfig, meta: dict) -> int:
    return len(meta.get("class_names") or []) if p.num_classes is None else p.num_classes


def train(cfg: dict) -> str:
    """Run the training described by a config; returns the saved pipeline directory."""
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from tokenizer import VQTokenizer

    meta = check_config(cfg)
    p, d, t = cfg["prior"], cfg["data"], cfg["training"]
    set_seed(t.seed)
    num_classes = _num_classes(p, meta)
    tokenizer = VQTokenizer.from_pretrained(d.tokenizer or meta["tokenizer"]).eval()
    model = build_prior(p.family, p.size, num_classes, meta, p.options)
    dataset = TokenShardDataset(d.shards, data_key(p.family), seed=t.seed, max_samples=d.max_samples)
    if num_classes and int(dataset.labels.max()) >= num_classes:
        raise ValueError(f"the shards hold label {int(dataset.labels.max())} but prior.num_classes={num_classes}")
    resume = resolve_checkpoint(t.output_dir, t.resume_from_checkpoint) if t.resume_from_checkpoint else None
    objective = PriorObjective(p.family, num_classes, p.class_dropout_prob,
                               _noise_scheduler(p) if p.family in ("ldm", "dit") else None, p.path_type,
                               meta.get("latent_mean") or 0.0, 1.0 / (meta.get("latent_std") or 1.0),
                               p.loss_chunk_size)

    accelerator, tracker = build_accelerator(t)
    loader = DataLoader(dataset, batch_size=t.batch_size, shuffle=True, drop_last=True, num_workers=d.num_workers,
                        generator=torch.Generator().manual_seed(t.seed))
    if len(loader) < accelerator.num_processes:
        raise ValueError(f"{len(dataset)} items make no full batch of {t.batch_size} per process "
                         f"on {accelerator.num_processes} process(es)")
    steps_per_epoch = math.ceil(len(loader) / accelerator.num_processes / t.gradient_accumulation_steps)
    max_steps = t.max_train_steps or t.num_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon,
                            weight_decay=t.weight_decay)
    n = accelerator.num_processes  # a prepared scheduler steps once per process per optimiser step
    sched = get_scheduler(t.lr_scheduler, opt, num_warmup_steps=t.lr_warmup_steps * n, num_training_steps=max_steps * n)
    model, opt, sched, loader = accelerator.prepare(model, opt, sched, loader)
    raw = accelerator.unwrap_model(model)
    ema = EMAModel(raw.parameters(), decay=t.ema_decay) if t.use_ema else None
    if ema is not None:
        ema.to(accelerator.device)
    tokenizer.to(accelerator.device)

    global_step, first_epoch, skip_batches = resume_position(accelerator, resume, ema, steps_per_epoch,
                                                             t.gradient_accumulation_steps)
    if accelerator.is_main_process and tracker:
        accelerator.init_trackers(f"prior-{p.family}", config={f"{k}.{f}": str(v) for k, sec in cfg.items()
                                                              for f, v in vars(sec).items()})
    accelerator.print(f"training {p.size} ({sum(q.numel() for q in raw.parameters()) / 1e6:.2f}M params) on "
                      f"{len(dataset)} items of {d.shards} for {max_steps} steps on {n} process(es)")

    def sample_grid(step):
        """A grid of one sample per class (up to 10) with the EMA weights; training weights restored."""
        if ema is not None:
            ema.store(raw.parameters())
            ema.copy_to(raw.parameters())
        raw.eval()
        pipe = make_pipeline(cfg, meta, tokenizer, raw)
        pipe.set_progress_bar_config(disable=True)
        classes = list(range(min(num_classes, 10))) or None
        images = pipe(class_id=classes, num_images_per_class=1 if classes else 8,
                      generator=torch.Generator().manual_seed(0), output_type="pt").images
        raw.train()
        if ema is not None:
            ema.restore(raw.parameters())
        from torchvision.utils import make_grid, save_image

        os.makedirs(os.path.join(t.output_dir, "samples"), exist_ok=True)
        save_image(images, os.path.join(t.output_dir, "samples", f"step-{step}.png"), nrow=len(images))
        if tracker == "tensorboard":
            accelerator.get_tracker("tensorboard", unwrap=True).add_image("samples", make_grid(images, nrow=len(images)),
                                                                          step)

    from tqdm.auto import tqdm

    progress = tqdm(total=max_steps, initial=global_step, disable=not accelerator.is_local_main_process, desc="steps")
    start, last = time.time(), {}
    model.train()
    for epoch in range(first_epoch, num_epochs):
        dataset.set_epoch(epoch)
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip_batches) if epoch == first_epoch and skip_batches else loader
        for batch in batches:
            with accelerator.accumulate(model):
                loss = objective(model, batch)
                accelerator.backward(loss)
                if t.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, t.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            if ema is not None:
                ema.step(raw.parameters())
            if global_step % t.log_every == 0 or global_step == max_steps:
                last = {"loss": float(accelerator.reduce(loss.detach(), "mean"))}
                accelerator.log({**last, "lr": sched.get_last_lr()[0]}, step=global_step)
                progress.set_postfix(loss=f"{last['loss']:.4f}")
            if global_step % t.checkpointing_steps == 0 or global_step == max_steps:
                save_checkpoint(accelerator, t.output_dir, global_step, ema, t.checkpoints_total_limit)
            if t.sample_every and global_step % t.sample_every == 0 and accelerator.is_main_process:
                sample_grid(global_step)
            if t.stop_at_step is not None and global_step >= t.stop_at_step:
                accelerator.print(f"stopping at step {global_step} (training.stop_at_step)")
                accelerator.end_training()
                return ""
            if global_step >= max_steps:
                break
        if global_step >= max_steps:
            break
    progress.close()

    accelerator.wait_for_everyone()
    out_dir = os.path.join(t.output_dir, "pipeline")
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(raw.parameters())
        raw.eval()
        info = {"dataset": f"{meta['dataset']} ({meta['split']}, {meta['num_images']} images, {meta['views']} view(s))",
                "prior": p.size, "train_steps": global_step, "epochs": round(global_step / steps_per_epoch, 2),
                "global_batch": t.batch_size * n * t.gradient_accumulation_steps, "last_loss": last.get("loss"),
                "wall_seconds": round(time.time() - start, 1)}
        pipe = make_pipeline(cfg, meta, tokenizer, raw, info)
        pipe.save_pretrained(out_dir)
        with open(os.path.join(t.output_dir, "train_summary.json"), "w") as f:
            json.dump({**info, "processes": n}, f, indent=2)
        if t.push_to_hub:
            pipe.push_to_hub(t.hub_model_id)
    accelerator.print(f"saved {out_dir}")
    accelerator.end_training()
    return out_dir


def main(argv=None):
    try:
        train(parse_config(argv))
    except (ValueError, TypeError) as e:
        raise SystemExit(f"priors.train: error: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
