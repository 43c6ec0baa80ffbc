"""Train a VQTokenizer: `accelerate launch -m lcgen.tokenizer.train --config <preset or file.yaml> [--key value ...]`.

The same code runs in one process through `lcgen train-tokenizer`. Follows diffusers' examples:
an `Accelerator` with gradient accumulation and mixed precision by flag, generator and
discriminator optimisers with warm-up + schedule, optional EMA of the weights, atomic
`save_state` checkpoints every N steps and exact `--resume_from_checkpoint latest` (the sampler
is seeded per epoch and the batches already seen are skipped), tensorboard logs, and a final
`save_pretrained` (+ `--push_to_hub`).
"""
from __future__ import annotations

import sys

import torch
from accelerate.utils import set_seed
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from lcgen.data import build_dataset, collate_skipping_bad
from lcgen.eval.metrics import CodebookUsage
from lcgen.log import configure as configure_logging
from lcgen.training.config import parse_run_config
from lcgen.training.grids import reconstruction_grid
from lcgen.training.run import TrainingRun, adam_options, parameter_groups
from lcgen.training.settings import TrainingConfig, check_training

from .losses import TokenizerLoss
from .model import VQTokenizer
from .train_config import DataConfig, LossConfig

SCHEMAS = {"model": VQTokenizer.__init__, "loss": LossConfig, "data": DataConfig, "training": TrainingConfig}


def parse_config(argv=None, prog: str = "lcgen.tokenizer.train") -> dict:
    return parse_run_config(argv, SCHEMAS, prog, __doc__.split("\n")[0])


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


@torch.no_grad()
def updated_reconstructions(model: VQTokenizer, images: torch.Tensor) -> torch.Tensor:
    """The discriminator's fakes: reconstructions by the generator *after* its update, as VQGAN-LC's second
    `model(x, step=1)` pass (and taming's second Lightning `training_step`). Eval mode, so that an EMA
    codebook or CVQ's running usage is not updated twice by one batch."""
    was_training = model.training
    model.eval()
    try:
        return model(images).sample
    finally:
        model.train(was_training)


def train(cfg: dict) -> str:
    """Run the training described by a validated config; returns the saved model directory."""
    check_config(cfg)
    t, d = cfg["training"], cfg["data"]
    set_seed(t.seed)  # before the model is built: its initial weights are part of the run
    # build everything that can fail on bad input before the first write
    model = VQTokenizer(**cfg["model"])
    loss_fn = TokenizerLoss(in_channels=model.config.in_channels, **vars(cfg["loss"]))
    dataset = build_dataset(d.name, d.split, d.resolution, d.crop, d.flip, d.channels, d.streaming, d.data_dir,
                            d.max_samples, seed=t.seed)
    run = TrainingRun(cfg, SCHEMAS, "tokenizer", loss_key="loss/total")
    accelerator = run.accelerator

    generator_params = [p for p in model.parameters() if p.requires_grad]
    groups = parameter_groups(model, t.weight_decay)
    opt_g = torch.optim.Adam(groups, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon,
                             **adam_options(groups))
    loader = DataLoader(dataset, batch_size=t.batch_size, shuffle=not d.streaming, drop_last=True,
                        num_workers=d.num_workers, collate_fn=collate_skipping_bad,
                        generator=torch.Generator().manual_seed(t.seed) if not d.streaming else None)
    if d.streaming:
        # each rank reads its own shard of the stream, cycling it until max_train_steps; the loader is
        # not handed to accelerate (its batch dispatching cannot carry the skipped-image counts)
        if run.num_processes > 1:
            dataset.ds = split_dataset_by_node(dataset.ds, rank=accelerator.process_index,
                                               world_size=run.num_processes)
        run.plan(None, steps=t.max_train_steps)
    else:
        run.plan(len(loader), len(dataset), "images")
    sched_g = run.lr_scheduler(opt_g)
    model, opt_g, sched_g = accelerator.prepare(model, opt_g, sched_g)
    if not d.streaming:
        loader = accelerator.prepare(loader)
    disc = None
    if loss_fn.has_discriminator:
        groups_d = parameter_groups(loss_fn.discriminator, t.weight_decay)
        opt_d = torch.optim.Adam(groups_d, lr=t.disc_lr or t.lr, betas=(t.adam_beta1, t.adam_beta2),
                                 eps=t.adam_epsilon, **adam_options(groups_d))
        sched_d = run.lr_scheduler(opt_d)
        disc, opt_d, sched_d = accelerator.prepare(loss_fn.discriminator, opt_d, sched_d)
    if loss_fn.lpips is not None:
        loss_fn.lpips.to(accelerator.device)
    raw = accelerator.unwrap_model(model)
    run.start(raw, f"training {type(raw).__name__} ({sum(p.numel() for p in raw.parameters()) / 1e6:.2f}M params, "
                   f"quantizer {raw.config.quantizer_kind}, K={raw.config.codebook_size})")

    skipped_images, summary, images = 0, None, None
    for epoch in run.epochs():
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        if not d.streaming:
            loader.set_epoch(epoch)
        usage = CodebookUsage.for_quantizer(raw.quantizer)
        model.train()
        seen = 0
        for batch in run.batches(loader, epoch):
            seen += 1
            images = batch["pixel_values"].to(accelerator.device)
            skipped_images = skipped_images + batch["num_skipped"]  # stays on the device: read when logging
            if images.numel() == 0:
                continue  # every image of this batch was undecodable
            with accelerator.accumulate(model, *([disc] if disc is not None else [])):
                out = model(images)
                if disc is not None:  # no discriminator gradients from the generator's pass
                    loss_fn.discriminator.requires_grad_(False)
                loss, logs = loss_fn.generator_loss(images, out, run.global_step, last_layer=raw.last_layer)
                accelerator.backward(loss)
                if t.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(generator_params, t.max_grad_norm)
                opt_g.step()
                sched_g.step()
                opt_g.zero_grad(set_to_none=True)
                if disc is not None and loss_fn.disc_active(run.global_step):
                    loss_fn.discriminator.requires_grad_(True)
                    d_loss, d_logs = loss_fn.discriminator_loss(images, updated_reconstructions(raw, images),
                                                                run.global_step, discriminator=disc)
                    accelerator.backward(d_loss)
                    opt_d.step()
                    sched_d.step()
                    opt_d.zero_grad(set_to_none=True)
                    logs.update(d_logs)
            usage.update(out.indices)
            if accelerator.sync_gradients and run.end_step(
                    lambda: {**{k: float(v) for k, v in logs.items()}, "lr": sched_g.get_last_lr()[0],
                             "data/skipped_images": int(skipped_images),
                             "codebook/scale_ratio": float(raw.quantizer.scale_ratio),
                             **({"codebook/dead_fraction": float(raw.quantizer.puller.dead_fraction)}
                                if raw.quantizer.puller is not None else {})}):
                break
        if run.interrupted:
            break
        if seen == 0 and not run.skipped_batches:
            raise ValueError(f"the dataset yielded no batch of {t.batch_size} images (is it smaller than one batch?)")
        if d.streaming and not run.done:
            continue  # a rank's shard ended: start it again (no collective ops at uneven epoch ends)
        usage.all_reduce()
        summary = usage.summary()
        accelerator.log({"codebook/utilisation": summary["utilisation"], "codebook/perplexity": summary["perplexity"],
                         "epoch": epoch}, step=run.global_step)
        if accelerator.is_main_process and run.tracker == "tensorboard" and images is not None and images.numel():
            writer = accelerator.get_tracker("tensorboard", unwrap=True)
            writer.add_image("reconstructions", reconstruction_grid(images[:8], out.sample[:8]), run.global_step)

    def save(out_dir):
        raw.save_pretrained(out_dir)
        return raw

    return run.finish(save, {"steps": run.global_step, "epochs": run.epochs_trained, "wall_seconds": run.wall_seconds,
                             "skipped_images": int(skipped_images), "last_losses": run.last_logs,
                             "last_epoch_codebook": summary}, "model")


def main(argv=None, prog: str = "lcgen.tokenizer.train"):
    configure_logging()
    try:
        train(parse_config(argv, prog))
    except (ValueError, TypeError) as e:
        raise SystemExit(f"{prog}: error: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
