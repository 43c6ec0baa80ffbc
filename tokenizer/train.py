"""Train a VQTokenizer: `accelerate launch -m tokenizer.train --config configs/<preset>.yaml [--key value ...]`.

The same code runs in one process through `lcgen train-tokenizer`. Follows diffusers' examples:
an `Accelerator` with gradient accumulation and mixed precision by flag, generator and
discriminator optimisers with warm-up + schedule, optional EMA of the weights, atomic
`save_state` checkpoints every N steps and exact `--resume_from_checkpoint latest` (the sampler
is seeded per epoch and the batches already seen are skipped), tensorboard logs, and a final
`save_pretrained` (+ `--push_to_hub`).
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

from eval.data import build_dataset, collate_skipping_bad
from eval.evaluate_tokenizer import reconstruction_grid
from eval.metrics import CodebookUsage

from .accelerator import build_accelerator
from .checkpointing import resolve_checkpoint, resume_position, save_checkpoint
from .config import load_config
from .losses import TokenizerLoss
from .model import VQTokenizer
from .train_config import DataConfig, LossConfig, TrainingConfig, check_training

SCHEMAS = {"model": VQTokenizer.__init__, "loss": LossConfig, "data": DataConfig, "training": TrainingConfig}


def parse_config(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="tokenizer.train", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="a YAML preset (configs/*.yaml)")
    args, overrides = p.parse_known_args(argv)
    return load_config(args.config, overrides, SCHEMAS)


def check_config(cfg: dict) -> None:
    """Everything that can be wrong with a config, before any work or write."""
    t, d = cfg["training"], cfg["data"]
    check_training(t)
    if d.channels != cfg["model"].get("in_channels", 3):
        raise ValueError(f"data.channels={d.channels} does not match model.in_channels={cfg['model'].get('in_channels', 3)}")
    if d.streaming and t.max_train_steps is None:
        raise ValueError("a streamed dataset has no length: set training.max_train_steps")
    if d.streaming and t.resume_from_checkpoint:
        raise ValueError("exact resume needs a map-style dataset; turn data.streaming off to resume")


def train(cfg: dict) -> str:
    """Run the training described by a validated config; returns the saved model directory."""
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    check_config(cfg)
    t, d = cfg["training"], cfg["data"]
    set_seed(t.seed)  # before the model is built: its initial weights are part of the run
    # build everything that can fail on bad input before the first write
    model = VQTokenizer(**cfg["model"])
    loss_fn = TokenizerLoss(in_channels=model.config.in_channels, **vars(cfg["loss"]))
    dataset = build_dataset(d.name, d.split, d.resolution, d.crop, d.flip, d.channels, d.streaming, d.data_dir,
                            d.max_samples, seed=t.seed)
    resume = resolve_checkpoint(t.output_dir, t.resume_from_checkpoint) if t.resume_from_checkpoint else None

    accelerator, tracker = build_accelerator(t)

    generator_params = [p for p in model.parameters() if p.requires_grad]
    opt_g = torch.optim.Adam(generator_params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon,
                             weight_decay=t.weight_decay)
    loader = DataLoader(dataset, batch_size=t.batch_size, shuffle=not d.streaming, drop_last=True,
                        num_workers=d.num_workers, collate_fn=collate_skipping_bad,
                        generator=torch.Generator().manual_seed(t.seed) if not d.streaming else None)
    if d.streaming:
        # each rank reads its own shard of the stream, cycling it until max_train_steps; the loader is
        # not handed to accelerate (its batch dispatching cannot carry the skipped-image counts)
        if accelerator.num_processes > 1:
            from datasets.distributed import split_dataset_by_node

            dataset.ds = split_dataset_by_node(dataset.ds, rank=accelerator.process_index,
                                               world_size=accelerator.num_processes)
        steps_per_epoch = max_steps = t.max_train_steps
        num_epochs = sys.maxsize
    else:
        if len(loader) < accelerator.num_processes:
            raise ValueError(f"{len(dataset)} images make no full batch of {t.batch_size} per process "
                             f"on {accelerator.num_processes} process(es)")
        steps_per_epoch = math.ceil(len(loader) / accelerator.num_processes / t.gradient_accumulation_steps)
        max_steps = t.max_train_steps or t.num_epochs * steps_per_epoch
        num_epochs = math.ceil(max_steps / steps_per_epoch)
    # accelerate steps a prepared scheduler once per process per optimiser step
    n = accelerator.num_processes
    sched_g = get_scheduler(t.lr_scheduler, opt_g, num_warmup_steps=t.lr_warmup_steps * n,
                            num_training_steps=max_steps * n)
    model, opt_g, sched_g = accelerator.prepare(model, opt_g, sched_g)
    if not d.streaming:
        loader = accelerator.prepare(loader)
    disc = None
    if loss_fn.has_discriminator:
        opt_d = torch.optim.Adam(loss_fn.discriminator.parameters(), lr=t.disc_lr or t.lr,
                                 betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon, weight_decay=t.weight_decay)
        sched_d = get_scheduler(t.lr_scheduler, opt_d, num_warmup_steps=t.lr_warmup_steps * n,
                                num_training_steps=max_steps * n)
        disc, opt_d, sched_d = accelerator.prepare(loss_fn.discriminator, opt_d, sched_d)
    if loss_fn.lpips is not None:
        loss_fn.lpips.to(accelerator.device)
    raw = accelerator.unwrap_model(model)
    ema = EMAModel(raw.parameters(), decay=t.ema_decay) if t.use_ema else None
    if ema is not None:
        ema.to(accelerator.device)

    global_step, first_epoch, skip_batches = resume_position(accelerator, resume, ema, steps_per_epoch,
                                                             t.gradient_accumulation_steps)
    if accelerator.is_main_process and tracker:
        accelerator.init_trackers("tokenizer", config={k: str(v) for k, v in _flat(cfg).items()})

    accelerator.print(f"training {type(raw).__name__} ({sum(p.numel() for p in raw.parameters()) / 1e6:.2f}M params, "
                      f"quantizer {raw.config.quantizer_kind}, K={raw.config.codebook_size}) for {max_steps} steps "
                      f"on {accelerator.num_processes} process(es)")
    from tqdm.auto import tqdm

    progress = tqdm(total=max_steps, initial=global_step, disable=not accelerator.is_local_main_process, desc="steps")
    skipped_images, start, last, summary = 0, time.time(), {}, None
    for epoch in range(first_epoch, num_epochs):
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        if not d.streaming:
            loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip_batches) if epoch == first_epoch and skip_batches else loader
        usage = CodebookUsage.for_quantizer(raw.quantizer)
        model.train()
        seen = 0
        for batch in batches:
            seen += 1
            images = batch["pixel_values"].to(accelerator.device)
            skipped_images = skipped_images + batch["num_skipped"]  # stays on the device: read when logging
            if images.numel() == 0:
                continue  # every image of this batch was undecodable
            with accelerator.accumulate(model, *([disc] if disc is not None else [])):
                out = model(images)
                if disc is not None:  # no discriminator gradients from the generator's pass
                    loss_fn.discriminator.requires_grad_(False)
                loss, logs = loss_fn.generator_loss(images, out, global_step, last_layer=raw.last_layer)
                accelerator.backward(loss)
                if t.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(generator_params, t.max_grad_norm)
                opt_g.step()
                sched_g.step()
                opt_g.zero_grad(set_to_none=True)
                if disc is not None and loss_fn.disc_active(global_step):
                    loss_fn.discriminator.requires_grad_(True)
                    d_loss, d_logs = loss_fn.discriminator_loss(images, out.sample, global_step, discriminator=disc)
                    accelerator.backward(d_loss)
                    opt_d.step()
                    sched_d.step()
                    opt_d.zero_grad(set_to_none=True)
                    logs.update(d_logs)
            usage.update(out.indices)
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            if ema is not None:
                ema.step(raw.parameters())
            if global_step % t.log_every == 0 or global_step == max_steps:
                last = {k: float(v) for k, v in logs.items()}  # host syncs only when logging
                accelerator.log({**last, "lr": sched_g.get_last_lr()[0], "data/skipped_images": int(skipped_images)},
                                step=global_step)
                progress.set_postfix(loss=f"{last['loss/total']:.4f}")
            if global_step % t.checkpointing_steps == 0 or global_step == max_steps:
                save_checkpoint(accelerator, t.output_dir, global_step, ema, t.checkpoints_total_limit)
            if t.stop_at_step is not None and global_step >= t.stop_at_step:
                accelerator.print(f"stopping at step {global_step} (training.stop_at_step)")
                accelerator.end_training()
                return ""
            if global_step >= max_steps:
                break
        if seen == 0 and not skip_batches:
            raise ValueError(f"the dataset yielded no batch of {t.batch_size} images (is it smaller than one batch?)")
        if d.streaming and global_step < max_steps:
            continue  # a rank's shard ended: start it again (no collective ops at uneven epoch ends)
        usage.all_reduce()
        summary = usage.summary()
        accelerator.log({"codebook/utilisation": summary["utilisation"], "codebook/perplexity": summary["perplexity"],
                         "epoch": epoch}, step=global_step)
        if accelerator.is_main_process and tracker == "tensorboard" and images.numel():
            writer = accelerator.get_tracker("tensorboard", unwrap=True)
            writer.add_image("reconstructions", reconstruction_grid(images[:8], out.sample[:8]), global_step)
        if global_step >= max_steps:
            break
    progress.close()

    accelerator.wait_for_everyone()
    out_dir = os.path.join(t.output_dir, "model")
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(raw.parameters())
        raw.save_pretrained(out_dir)
        with open(os.path.join(t.output_dir, "train_summary.json"), "w") as f:
            json.dump({"steps": global_step, "epochs": global_step / steps_per_epoch,
                       "wall_seconds": round(time.time() - start, 1), "processes": accelerator.num_processes,
                       "skipped_images": int(skipped_images), "last_losses": last,
                       "last_epoch_codebook": summary}, f, indent=2)
        if t.push_to_hub:
            raw.push_to_hub(t.hub_model_id)
    accelerator.print(f"saved {out_dir}")
    accelerator.end_training()
    return out_dir


def _flat(cfg: dict) -> dict:
    out = {}
    for section, values in cfg.items():
        for k, v in (values if isinstance(values, dict) else vars(values)).items():
            out[f"{section}.{k}"] = v
    return out


def main(argv=None):
    try:
        cfg = parse_config(argv)
        train(cfg)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"tokenizer.train: error: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
