"""Train a prior: `accelerate launch -m lcgen.priors.train --config <preset or file.yaml> [--key value ...]`.

One loop for GPT, LDM, DiT and SiT (`lcgen train-prior` runs it in one process). It reads token
shards written by `lcgen extract`, never images. AdamW with warm-up + schedule, gradient
accumulation, mixed precision by flag, EMA of the weights, atomic `save_state` checkpoints with exact
`--resume_from_checkpoint latest`, tensorboard logs and sample grids (sampled with the EMA weights,
which are then restored), and a final `save_pretrained` of the whole pipeline (+ `--push_to_hub`).
"""
from __future__ import annotations

import math
import os
import sys

import torch
from accelerate.utils import set_seed
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch.utils.data import DataLoader
from torchvision.utils import make_grid, save_image

from lcgen.log import configure as configure_logging
from lcgen.pipelines import PIPELINES
from lcgen.tokenizer import VQTokenizer
from lcgen.training.config import parse_run_config
from lcgen.training.run import TrainingRun, adam_options, parameter_groups
from lcgen.training.settings import check_training

from .families import PREDICTION_TYPES, PriorObjective, build_prior, check_family, data_key
from .latent_space import NORMALIZATIONS, LatentSpace, resolve_normalization
from .shards import TokenShardDataset, read_meta
from .train_config import PriorConfig, PriorDataConfig, PriorTrainingConfig, SamplingConfig
from .transport import PATHS, SAMPLERS

SCHEMAS = {"prior": PriorConfig, "data": PriorDataConfig, "training": PriorTrainingConfig, "sampling": SamplingConfig}
SCHEDULERS = {"ddim": DDIMScheduler, "dpmsolver": DPMSolverMultistepScheduler}
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def parse_config(argv=None, prog: str = "lcgen.priors.train") -> dict:
    return parse_run_config(argv, SCHEMAS, prog, __doc__.split("\n")[0])


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
        raise ValueError(f"sampling.scheduler must be one of {tuple(SCHEDULERS)}, got {s.scheduler!r}")
    if p.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prior.prediction_type must be one of {PREDICTION_TYPES}, got {p.prediction_type!r}")
    if p.snr_gamma is not None and not p.snr_gamma > 0:
        raise ValueError(f"prior.snr_gamma must be > 0 (or None for no weighting), got {p.snr_gamma}")
    if p.latent_normalization not in NORMALIZATIONS:
        raise ValueError(f"prior.latent_normalization must be one of {NORMALIZATIONS}, got {p.latent_normalization!r}")
    if s.timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"sampling.timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {s.timestep_spacing!r}")
    if s.num_inference_steps <= 0:
        raise ValueError(f"sampling.num_inference_steps must be > 0, got {s.num_inference_steps}")
    if not (math.isfinite(s.eta) and s.eta >= 0) or (s.eta and s.scheduler != "ddim"):
        raise ValueError(f"sampling.eta must be a finite number >= 0, and 0 unless sampling.scheduler is ddim; got "
                         f"{s.eta} with {s.scheduler}")
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
    return DDPMScheduler(num_train_timesteps=p.num_train_timesteps, beta_schedule=p.beta_schedule,
                         beta_start=p.beta_start, beta_end=p.beta_end, clip_sample=False,
                         prediction_type=p.prediction_type)


def latent_space(p: PriorConfig, meta: dict, tokenizer) -> LatentSpace:
    """The space a latent prior models for this tokenizer and these shards."""
    return LatentSpace(resolve_normalization(p.latent_normalization, tokenizer.quantizer),
                       meta.get("latent_mean") or 0.0, 1.0 / (meta.get("latent_std") or 1.0),
                       tokenizer.quantizer.chunk_dim)


def make_pipeline(cfg: dict, meta: dict, tokenizer, model, info: dict | None = None):
    """The saved artefact of a run: the tokenizer + the prior (+ scheduler) with sampling defaults."""
    p, s = cfg["prior"], cfg["sampling"]
    id2label = dict(enumerate(meta.get("class_names") or [])) if _num_classes(p, meta) else {}
    common = dict(id2label=id2label, guidance_scale=s.guidance_scale, info=info or {})
    cls = PIPELINES[p.family]
    if p.family == "gpt":
        return cls(tokenizer, model, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, **common)
    space = latent_space(p, meta, tokenizer)
    latent = dict(latent_shift=space.shift, latent_scale=space.scale, latent_normalization=space.normalization,
                  num_inference_steps=s.num_inference_steps, **common)
    if p.family == "sit":
        return cls(tokenizer, model, path_type=p.path_type, sampling_method=s.sampling_method, **latent)
    sampler = SCHEDULERS[s.scheduler].from_config(_noise_scheduler(p).config, timestep_spacing=s.timestep_spacing)
    return cls(tokenizer, model, sampler, eta=s.eta, **latent)


def _num_classes(p: PriorConfig, meta: dict) -> int:
    return len(meta.get("class_names") or []) if p.num_classes is None else p.num_classes


def train(cfg: dict) -> str:
    """Run the training described by a config; returns the saved pipeline directory."""
    meta = check_config(cfg)
    p, d, t = cfg["prior"], cfg["data"], cfg["training"]
    set_seed(t.seed)
    num_classes = _num_classes(p, meta)
    tokenizer = VQTokenizer.from_pretrained(d.tokenizer or meta["tokenizer"]).eval()
    model = build_prior(p.family, p.size, num_classes, meta, p.options)
    dataset = TokenShardDataset(d.shards, data_key(p.family), seed=t.seed, max_samples=d.max_samples)
    if num_classes and int(dataset.labels.max()) >= num_classes:
        raise ValueError(f"the shards hold label {int(dataset.labels.max())} but prior.num_classes={num_classes}")
    objective = PriorObjective(p.family, num_classes, p.class_dropout_prob,
                               _noise_scheduler(p) if p.family in ("ldm", "dit") else None, p.path_type,
                               latent_space(p, meta, tokenizer), p.loss_chunk_size, p.snr_gamma)

    run = TrainingRun(cfg, SCHEMAS, f"prior-{p.family}")
    accelerator = run.accelerator
    loader = DataLoader(dataset, batch_size=t.batch_size, shuffle=True, drop_last=True, num_workers=d.num_workers,
                        generator=torch.Generator().manual_seed(t.seed))
    run.plan(len(loader), len(dataset), "items")
    params = [q for q in model.parameters() if q.requires_grad]
    groups = parameter_groups(model, t.weight_decay)
    opt = torch.optim.AdamW(groups, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon,
                            **adam_options(groups))
    sched = run.lr_scheduler(opt)
    model, opt, sched, loader = accelerator.prepare(model, opt, sched, loader)
    raw = accelerator.unwrap_model(model)
    tokenizer.to(accelerator.device)
    run.start(raw, f"training {p.size} ({sum(q.numel() for q in raw.parameters()) / 1e6:.2f}M params) on "
                   f"{len(dataset)} items of {d.shards}")

    def sample_grid(step):
        """A grid of one sample per class (up to 10) with the EMA weights; training weights restored."""
        if not (t.sample_every and step % t.sample_every == 0 and accelerator.is_main_process):
            return
        if run.ema is not None:
            run.ema.store(raw.parameters())
            run.ema.copy_to(raw.parameters())
        raw.eval()
        pipe = make_pipeline(cfg, meta, tokenizer, raw)
        pipe.set_progress_bar_config(disable=True)
        classes = list(range(min(num_classes, 10))) or None
        images = pipe(class_id=classes, num_images_per_class=1 if classes else 8,
                      generator=torch.Generator().manual_seed(0), output_type="pt").images
        raw.train()
        if run.ema is not None:
            run.ema.restore(raw.parameters())
        os.makedirs(os.path.join(t.output_dir, "samples"), exist_ok=True)
        save_image(images, os.path.join(t.output_dir, "samples", f"step-{step}.png"), nrow=len(images))
        if run.tracker == "tensorboard":
            accelerator.get_tracker("tensorboard", unwrap=True).add_image("samples", make_grid(images, nrow=len(images)),
                                                                          step)

    model.train()
    for epoch in run.epochs():
        dataset.set_epoch(epoch)
        loader.set_epoch(epoch)
        for batch in run.batches(loader, epoch):
            with accelerator.accumulate(model):
                loss = objective(model, batch)
                accelerator.backward(loss)
                if t.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, t.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            if accelerator.sync_gradients and run.end_step(
                    lambda: {"loss": float(accelerator.reduce(loss.detach(), "mean")), "lr": sched.get_last_lr()[0]},
                    after=sample_grid):
                break

    def save(out_dir):
        raw.eval()
        pipe = make_pipeline(cfg, meta, tokenizer, raw, info)
        pipe.save_pretrained(out_dir)
        return pipe

    n = run.num_processes
    info = {"dataset": f"{meta['dataset']} ({meta['split']}, {meta['num_images']} images, {meta['views']} view(s))",
            "prior": p.size, "train_steps": run.global_step, "epochs": round(run.epochs_trained, 2),
            "global_batch": t.batch_size * n * t.gradient_accumulation_steps, "last_loss": run.last_logs.get("loss"),
            "wall_seconds": run.wall_seconds}
    return run.finish(save, info, "pipeline")


def main(argv=None, prog: str = "lcgen.priors.train"):
    configure_logging()
    try:
        train(parse_config(argv, prog))
    except (ValueError, TypeError) as e:
        raise SystemExit(f"{prog}: error: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
