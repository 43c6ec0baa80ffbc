"""`lcgen convert <source>`: a published checkpoint -> an lcgen folder (`VQTokenizer.from_pretrained` or
a pipeline `DiffusionPipeline.from_pretrained` loads), optionally pushed to the Hub.

The key maps live beside the models they fill (`lcgen.tokenizer.published`, `lcgen.priors.published`);
this module reads the files, refuses a bad call before any work, and writes the folder atomically: into
a temporary sibling first, renamed into place when complete, so an interrupted conversion never leaves
a half-written folder under the final name.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile

import torch
import yaml
from diffusers import DDIMScheduler, DDPMScheduler

from lcgen.official_checkpoints import load_checkpoint, load_state_dict
from lcgen.pipelines import VQDiTPipeline, VQGPTPipeline, VQLDMPipeline, VQSiTPipeline
from lcgen.pipelines.imagenet import imagenet_id2label
from lcgen.priors.published import dit_from_official, gpt_from_vqgan_lc, ldm_from_latent_diffusion
from lcgen.tokenizer import VQTokenizer
from lcgen.tokenizer.published import (VQGAN_LC_DDCONFIGS, llamagen_vq_model, tokenizer_from_llamagen,
                                       tokenizer_from_taming, tokenizer_from_vqgan_lc)

logger = logging.getLogger(__name__)
SOURCES = ("vqgan-lc", "gpt-lc", "ldm-lc", "dit-lc", "sit-lc", "llamagen-vq", "llamagen-gpt", "taming")


def dit_lc_scheduler() -> DDPMScheduler:
    """VQGAN-LC's DiT-LC protocol (dit-lc/evaluation.py, guided-diffusion's `create_diffusion("250")`):
    the linear DDPM schedule of 1,000 steps, learned-range variance, no clipping, 250 evenly spaced
    steps (guided-diffusion's `space_timesteps` = round(linspace(0, 999, 250)))."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                         variance_type="learned_range", clip_sample=False, timestep_spacing="linspace")


def ldm_lc_scheduler() -> DDIMScheduler:
    """VQGAN-LC's LDM-LC protocol (ldm-lc/run_evaluations.py with latent-diffusion's DDIMSampler): LDM's
    "linear" betas (sqrt-linear 0.0015..0.0195 = diffusers' scaled_linear) over 1,000 steps, DDIM
    timesteps every 1000/S steps offset by one (1, 6, ..., 996 for S = 200: "leading" + steps_offset 1),
    the last step's previous alpha-bar alpha-bar_0 (not 1), no clipping; eta is the pipeline's (1)."""
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195,
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
                         prediction_type="epsilon")


def check_output(output: str, overwrite: bool) -> str:
    """The absolute output folder; refuses a file, or a non-empty folder without overwrite."""
    if not isinstance(output, str) or not output:
        raise ValueError(f"--output must be a folder path, got {output!r}")
    output = os.path.abspath(output)
    if os.path.isfile(output):
        raise ValueError(f"--output {output} is a file, not a folder")
    if os.path.isdir(output) and os.listdir(output) and not overwrite:
        raise ValueError(f"--output {output} exists and is not empty (pass --overwrite to replace it)")
    parent = os.path.dirname(output)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"the parent folder of --output does not exist: {parent}")
    return output


def _check_file(name: str, path: str) -> None:
    if not isinstance(path, str) or not os.path.isfile(path):
        raise FileNotFoundError(f"{name} not found: {path}")


def save_atomically(model, output: str) -> str:
    """`model.save_pretrained` into a temporary sibling of `output`, then rename it into place. A
    sibling left by a run that was killed before its rename is removed first: nothing else is named so."""
    for stale in glob.glob(os.path.join(glob.escape(os.path.dirname(output)), f".{glob.escape(os.path.basename(output))}.partial-*")):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.partial-", dir=os.path.dirname(output))
    try:
        model.save_pretrained(tmp)
        if os.path.isdir(output):
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def convert(source: str, checkpoint: str, output: str, *, config: str | None = None, codebook: str | None = None,
            tokenizer: str | None = None,
            model: str | None = None, image_size: int | None = None, num_heads: int | None = None,
            overwrite: bool = False, push_to_hub: str | None = None) -> str:
    """Convert one published checkpoint; returns the output folder. See `lcgen convert -h`."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    _check_file("--checkpoint", checkpoint)
    output = check_output(output, overwrite)
    if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
        raise ValueError(f"--image-size must be a positive int, got {image_size!r}")
    if source == "vqgan-lc":
        config, frozen = _vqgan_lc_options(source, config, codebook)
        result = tokenizer_from_vqgan_lc(load_state_dict(checkpoint, prefer=("state_dict", "model")), config, frozen)
    elif source in ("gpt-lc", "ldm-lc") and tokenizer is None:
        # GPT-LC's and LDM-LC's files hold their tokenizer too (`vqgan.*`, `first_stage_model.*`)
        config, frozen = _vqgan_lc_options(source, config, codebook)
        state = load_state_dict(checkpoint, prefer=("module", "model") if source == "gpt-lc" else ("state_dict",))
        prefix = "vqgan." if source == "gpt-lc" else "first_stage_model."
        vq = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not vq:
            raise ValueError(f"{checkpoint} holds no tokenizer (no {prefix}* keys): pass --tokenizer")
        tok = tokenizer_from_vqgan_lc(vq, config, frozen)
        result = (gpt_lc_pipeline(tok, state, checkpoint, num_heads) if source == "gpt-lc"
                  else ldm_lc_pipeline(tok, state, checkpoint, config))
    elif source == "taming":
        if config is None:
            raise ValueError("lcgen convert taming needs --config (the checkpoint's model.yaml)")
        _check_file("--config", config)
        with open(config) as f:
            params = (yaml.safe_load(f) or {}).get("model", {}).get("params", {})
        if not {"ddconfig", "n_embed", "embed_dim"} <= set(params):
            raise ValueError(f"{config} is not a taming VQModel config (model.params needs ddconfig, n_embed, embed_dim)")
        result = tokenizer_from_taming(load_state_dict(checkpoint, prefer=("state_dict",)), params["ddconfig"],
                                       params["n_embed"], params["embed_dim"])
    elif source == "llamagen-vq":
        vq_model = llamagen_vq_model(checkpoint, model)  # a bad --model fails before the file is read
        result = tokenizer_from_llamagen(load_state_dict(checkpoint), vq_model, image_size or 256)
    else:
        if tokenizer is None:
            raise ValueError(f"lcgen convert {source} needs --tokenizer (a converted tokenizer folder)")
        if not os.path.isfile(os.path.join(str(tokenizer), "config.json")):
            raise FileNotFoundError(f"--tokenizer {tokenizer} is not a saved VQTokenizer folder (no config.json)")
        tok = VQTokenizer.from_pretrained(tokenizer)
        if source == "gpt-lc":
            result = gpt_lc_pipeline(tok, load_state_dict(checkpoint, prefer=("module", "model")), checkpoint,
                                     num_heads)
        elif source == "ldm-lc":
            config, _ = _vqgan_lc_options(source, config, None)
            result = ldm_lc_pipeline(tok, load_state_dict(checkpoint, prefer=("state_dict",)), checkpoint, config)
        elif source == "llamagen-gpt":
            result = VQGPTPipeline.from_llamagen_gpt(tok, checkpoint, model, image_size, num_heads,
                                                     source=f"LlamaGen ({os.path.basename(checkpoint)})")
        else:
            result = lc_latent_pipeline(source, checkpoint, tok, num_heads)
    save_atomically(result, output)
    logger.info(f"converted {source} checkpoint {checkpoint} -> {output}")
    if push_to_hub:
        result.push_to_hub(push_to_hub)
        logger.info(f"pushed {output} to the Hub as {push_to_hub}")
    return output


def _vqgan_lc_options(source: str, config: str | None, codebook: str | None):
    """--config (f16 / f8) and the frozen codebook tensor of --codebook (None when not given)."""
    config = config or "f16"
    if config not in VQGAN_LC_DDCONFIGS:
        raise ValueError(f"lcgen convert {source}: --config must be one of {sorted(VQGAN_LC_DDCONFIGS)}, got {config!r}")
    if codebook is not None:
        _check_file("--codebook", codebook)
    frozen = None if codebook is None else load_checkpoint(codebook)
    if frozen is not None and not isinstance(frozen, torch.Tensor):
        raise ValueError(f"--codebook {codebook} does not hold a (K, D) tensor")
    return config, frozen


def gpt_lc_pipeline(tok: VQTokenizer, state: dict, checkpoint: str, num_heads: int | None = None) -> VQGPTPipeline:
    """GPT-LC on a VQGAN-LC tokenizer with GPT-LC's sampling (its VQGANTransformer.sample as
    runTestGPT.sh calls it): no guidance, temperature 1, top-k 100,000 = every code, i.e. off."""
    if "transformer.tok_emb.weight" not in state:
        raise ValueError(f"{checkpoint} is not a GPT-LC checkpoint (no transformer.tok_emb.weight)")
    # minGPT's vocabulary is the tokenizer's K codes followed by the class tokens
    num_classes = state["transformer.tok_emb.weight"].shape[0] - tok.config.codebook_size
    if num_classes <= 0:
        raise ValueError(f"the GPT-LC vocabulary ({state['transformer.tok_emb.weight'].shape[0]}) is not larger than "
                         f"the tokenizer's {tok.config.codebook_size} codes: another tokenizer?")
    prior = gpt_from_vqgan_lc(state, num_classes=num_classes, grid_size=tok.config.resolution // tok.downsample_factor,
                              num_heads=num_heads)
    id2label = imagenet_id2label() if num_classes == 1000 else None
    return VQGPTPipeline(tok, prior, id2label=id2label, guidance_scale=1.0, temperature=1.0, top_k=None,
                         top_p=None, info={
                             "source": f"VQGAN-LC GPT-LC ({os.path.basename(checkpoint)})",
                             "dataset": "ImageNet" if id2label else None,
                             "sampling_protocol": "GPT-LC: no guidance (its null class was never trained), "
                                                  "temperature 1, top-k off (100,000 = all codes)"})


def ldm_lc_pipeline(tok: VQTokenizer, state: dict, checkpoint: str, config: str = "f16") -> VQLDMPipeline:
    """LDM-LC (EMA weights) on a VQGAN-LC tokenizer with runTestLDM.sh's sampling: DDIM 200 steps, eta 1,
    guidance 1.6 (f16) / 1.4 (f8) on the raw latent."""
    unet = ldm_from_latent_diffusion(state, f"LDM-LC-{config}")
    if unet.config.in_channels != tok.config.embed_dim:
        raise ValueError(f"the LDM-LC UNet models {unet.config.in_channels}-channel latents, the tokenizer has "
                         f"{tok.config.embed_dim}: another --config or --tokenizer?")
    scale = {"f16": 1.6, "f8": 1.4}.get(config, 1.6)
    id2label = imagenet_id2label() if unet.config.num_classes == 1000 else None
    return VQLDMPipeline(tok, unet, ldm_lc_scheduler(), id2label=id2label, guidance_scale=scale,
                         num_inference_steps=200, eta=1.0, latent_shift=0.0, latent_scale=1.0, info={
                             "source": f"VQGAN-LC LDM-LC {config} ({os.path.basename(checkpoint)})",
                             "dataset": "ImageNet" if id2label else None,
                             "sampling_protocol": f"DDIM 200 steps, eta 1, guidance {scale} (ldm-lc/runTestLDM.sh), "
                                                  f"EMA weights"})


def lc_latent_pipeline(source: str, checkpoint: str, tok: VQTokenizer, num_heads: int | None = None):
    """DiT-LC / SiT-LC (EMA weights) on a converted VQGAN-LC tokenizer, with their papers' sampling settings.
    Both model the raw pre-quantisation latent (no shift or scale) and sample at cfg-scale 8."""
    prior = dit_from_official(load_state_dict(checkpoint, prefer=("ema", "model")), num_heads)
    common = dict(id2label=imagenet_id2label() if prior.config.num_classes == 1000 else None,
                  guidance_scale=8.0, latent_shift=0.0, latent_scale=1.0)
    name = os.path.basename(checkpoint)
    if source == "dit-lc":
        return VQDiTPipeline(tok, prior, dit_lc_scheduler(), num_inference_steps=250, **common, info={
            "source": f"VQGAN-LC DiT-LC ({name})",
            "sampling_protocol": "DDPM 250 steps, learned variance, guidance 8 (lcgen guides all 8 channels; "
                                 "DiT-LC guides 3: guided_channels=3)"})
    # SiT embeds t in [0, 1] itself; its learned-sigma half is unused by the interpolant
    return VQSiTPipeline(tok, prior, path_type="linear", sampling_method="dopri5", num_inference_steps=250,
                         timestep_scale=1.0, atol=1e-6, rtol=1e-3, **common, info={
                             "source": f"VQGAN-LC SiT-LC ({name})",
                             "sampling_protocol": "SiT-LC's runTestSiT.sh: adaptive dopri5 ODE (atol 1e-6, rtol 1e-3, "
                                                  "250 output times), guidance 8 (lcgen guides all 8 channels; SiT-LC "
                                                  "guides 3: guided_channels=3)"})
