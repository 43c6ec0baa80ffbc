"""Parity of lcgen's converters with the official code: the same random weights and inputs through the
official modules (imported from a checkout you point at, never copied here) and through the converted
lcgen model; prints the largest differences as JSON.

    python benchmarks/published_parity.py llamagen-vq  --official /path/to/LlamaGen [--fp64]
    python benchmarks/published_parity.py llamagen-gpt --official /path/to/LlamaGen [--model GPT-B --image-size 256]
    python benchmarks/published_parity.py taming       --official /path/to/taming-transformers [--fp64]   # needs einops
    python benchmarks/published_parity.py vqgan-lc     --official /path/to/VQGAN-LC/vqgan-gpt-lc [--fp64]  # needs einops
    python benchmarks/published_parity.py gpt-lc       --official /path/to/VQGAN-LC/vqgan-gpt-lc  # needs omegaconf
    python benchmarks/published_parity.py ldm-lc       --official /path/to/VQGAN-LC/ldm-lc  # needs einops
    python benchmarks/published_parity.py dit          --official /path/to/VQGAN-LC/dit-lc (or DiT)  # needs timm
    python benchmarks/published_parity.py sit-samplers --official /path/to/VQGAN-LC/sit-lc  # needs timm
    python benchmarks/published_parity.py sit          --official /path/to/VQGAN-LC/sit-lc (or SiT)  # needs timm

Each run writes the weights as the official training scripts save them (a dict with "model" or
"state_dict"), converts that file with lcgen, and compares: tokenizers on 2 random 256 px images
(indices, latents, reconstructions, and the decoder alone on the official codes); the LlamaGen GPT on
teacher-forced logits and on two sampling runs with the same seed (guidance 4 + top-k 2000, and none);
GPT-LC (minGPT, 24 x 1024, 100,000 + 1,000 tokens) on teacher-forced logits, and a 4-layer one on
VQGANTransformer.sample against lcgen's sampler with the same seed; LDM-LC's f16 UNet
(latent-diffusion's openaimodel with class cross-attention) on eps for random latents, timesteps and
classes, and latent-diffusion's DDIMSampler (200 steps, eta 1, guidance 1.6) against the pipeline on the
final latent with the same seed; DiT-XL/2 (DiT-LC's: 8 latent channels at 16x16, learned sigma) on its output for random latents,
timesteps and classes.
With --fp64 both sides run in float64 (lcgen's quantizer still searches in fp32 by design), which
separates a difference of arithmetic order (~1e-5 in fp32) from a difference of architecture.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch
import yaml

from lcgen.official_checkpoints import load_checkpoint, load_state_dict
from lcgen.priors.published import dit_from_official, gpt_from_llamagen, gpt_from_vqgan_lc
from lcgen.tokenizer.published import tokenizer_from_llamagen, tokenizer_from_taming, tokenizer_from_vqgan_lc


def perturb(module, skip=()):
    """Random weights everywhere (the official inits zero some layers)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not any(s in name for s in skip):
                p.add_(torch.randn_like(p) * 0.02)


def compare_tokenizers(official, tok, double: bool) -> dict:
    """official: an object with encode(x) -> (quant, loss, (_, _, indices)), decode(quant), quant_conv, encoder."""
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    if double:
        official.double(), tok.double()
        x = x.double()
    with torch.no_grad():
        quant, _, (_, _, idx) = official.encode(x)
        rec_official = official.decode(quant)
        enc = tok.encode(x)
        return {"indices_identical": bool(torch.equal(enc.indices.flatten(), idx.flatten())),
                "latent_max_abs": float((enc.latents - official.quant_conv(official.encoder(x))).abs().max()),
                "recon_max_abs": float((tok.decode(enc.quantized) - rec_official).abs().max()),
                "decoder_same_codes_max_abs": float((tok.decode(quant) - rec_official).abs().max()),
                "recon_max": float(rec_official.abs().max())}


def llamagen_vq(a, tmp):
    from tokenizer.tokenizer_image.vq_model import VQ_models

    out = {}
    for name in ("VQ-16", "VQ-8"):
        torch.manual_seed(0)
        official = VQ_models[name](codebook_size=16384, codebook_embed_dim=8).eval()
        perturb(official)
        path = os.path.join(tmp, f"{name}.pt")
        torch.save({"model": official.state_dict()}, path)
        out[name] = compare_tokenizers(official, tokenizer_from_llamagen(load_state_dict(path), name, 256), a.fp64)
    return out


def llamagen_gpt(a, tmp):
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import GPT_models

    torch.manual_seed(0)
    grid = a.image_size // 16
    official = GPT_models[a.model](vocab_size=16384, block_size=grid * grid, num_classes=1000, cls_token_num=1,
                                   model_type="c2i", resid_dropout_p=0.0, ffn_dropout_p=0.0, token_dropout_p=0.0).eval()
    perturb(official)
    path = os.path.join(tmp, "gpt.pt")
    torch.save({"model": official.state_dict()}, path)
    prior = gpt_from_llamagen(load_state_dict(path), a.model, a.image_size)
    idx, cls = torch.randint(0, 16384, (2, grid * grid)), torch.tensor([207, 3])
    with torch.no_grad():
        logits, _ = official(idx[:, :-1], cls, input_pos=torch.arange(grid * grid))
        r = {"logits_max_abs": float((logits - prior(idx.view(2, grid, grid), cls)[:, :, 0]).abs().max()),
             "logits_max": float(logits.abs().max())}
        for cfg, top_k in ((4.0, 2000), (1.0, 0)):
            torch.manual_seed(123)  # LlamaGen samples from the global generator
            ref = generate(official, cls, grid * grid, cfg_scale=cfg, temperature=1.0, top_k=top_k, top_p=1.0,
                           sample_logits=True)
            ours = prior.generate(cls, guidance_scale=cfg, top_k=top_k, generator=torch.Generator().manual_seed(123))
            r[f"tokens_identical_guidance{cfg:g}_topk{top_k}"] = bool(torch.equal(ours.flatten(1), ref.long()))
    return r


def taming(a, tmp):
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import VectorQuantizer2

    class Parts(torch.nn.Module):  # taming.models.vqgan.VQModel's modules and encode/decode, without Lightning
        def __init__(self, ddconfig, n_embed, embed_dim):
            super().__init__()
            self.encoder, self.decoder = Encoder(**ddconfig), Decoder(**ddconfig)
            self.quantize = VectorQuantizer2(n_embed, embed_dim, beta=0.25)
            self.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
            self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

        def encode(self, x):
            return self.quantize(self.quant_conv(self.encoder(x)))

        def decode(self, q):
            return self.decoder(self.post_quant_conv(q))

    with open(os.path.join(a.official, "configs", "imagenet_vqgan.yaml")) as f:
        params = yaml.safe_load(f)["model"]["params"]
    out = {}
    for n_embed in (1024, 16384):
        torch.manual_seed(0)
        official = Parts(params["ddconfig"], n_embed, params["embed_dim"]).eval()
        perturb(official)
        path = os.path.join(tmp, f"taming_{n_embed}.ckpt")
        torch.save({"state_dict": official.state_dict(), "global_step": 0}, path)
        tok = tokenizer_from_taming(load_state_dict(path, prefer=("state_dict",)), params["ddconfig"], n_embed,
                                    params["embed_dim"])
        out[f"n_embed={n_embed}"] = compare_tokenizers(official, tok, a.fp64)
    return out


def vqgan_lc(a, tmp):
    from models.encoder_decoder import Decoder, Encoder
    from models.models_vq import VQModel

    class Parts(torch.nn.Module):  # VQModel's attributes with its own encode/quantize/decode, no LPIPS/discriminator
        quantize, encode, decode = VQModel.quantize, VQModel.encode, VQModel.decode

        def __init__(self, ddconfig, codebook):
            super().__init__()
            self.args = argparse.Namespace(use_cblinear=1, tuning_codebook=0)
            self.encoder, self.decoder = Encoder(**ddconfig), Decoder(**ddconfig)
            self.tok_embeddings = torch.nn.Embedding(*codebook.shape)
            self.tok_embeddings.weight.data = codebook
            self.codebook_projection = torch.nn.Linear(codebook.shape[1], 8)
            self.e_dim, self.quantize_type, self.remap, self.sane_index_shape = 8, "org", None, False
            self.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], 8, 1)
            self.post_quant_conv = torch.nn.Conv2d(8, ddconfig["z_channels"], 1)

    out = {}
    for config in ("f16", "f8"):
        torch.manual_seed(0)
        with open(os.path.join(a.official, "vqgan_configs", f"vq-{config}.yaml")) as f:
            ddconfig = yaml.safe_load(f)["model"]["params"]["ddconfig"]
        codebook = torch.randn(100_000, 768)
        official = Parts(ddconfig, codebook).eval()
        perturb(official, skip=("tok_embeddings",))
        path, cb_path = os.path.join(tmp, f"vqgan-lc-{config}.pth"), os.path.join(tmp, "codebook-100K.pth")
        torch.save({"state_dict": {k: v for k, v in official.state_dict().items() if k != "tok_embeddings.weight"}}, path)
        torch.save(codebook, cb_path)  # the frozen codebook is released as its own file
        tok = tokenizer_from_vqgan_lc(load_state_dict(path), config, codebook=load_checkpoint(cb_path))
        out[config] = compare_tokenizers(official, tok, a.fp64)
    return out


def gpt_lc(a, tmp):
    from models.mingpt import GPT
    from models.models_gpt import VQGANTransformer

    class Sampler:  # VQGANTransformer's own sample / top_k_logits on a bare minGPT (no tokenizer needed)
        sample, top_k_logits = VQGANTransformer.sample, VQGANTransformer.top_k_logits

        def __init__(self, transformer, k):
            self.transformer, self.args = transformer, argparse.Namespace(n_vision_words=k)

    out, k, cls = {}, 100_000, torch.tensor([207, 3])
    # models_gpt.py's GPT-LC at full size for the logits; a 4-layer one for the 256 sampling steps,
    # which minGPT runs without a KV cache
    for name, (layers, heads, width) in (("gpt_lc_24x1024", (24, 16, 1024)), ("mingpt_4x256_sampling", (4, 16, 256))):
        torch.manual_seed(0)
        official = GPT(vocab_size=k + 1000, block_size=257, n_layer=layers, n_head=heads, n_embd=width).eval()
        perturb(official)
        path = os.path.join(tmp, "gpt-lc.pth")
        torch.save({"transformer." + n: v for n, v in official.state_dict().items()}, path)
        prior = gpt_from_vqgan_lc(load_state_dict(path), num_classes=1000, grid_size=16, num_heads=heads)
        r = out[name] = {}
        with torch.no_grad():
            if layers == 24:
                idx = torch.randint(0, k, (2, 256))
                logits, _ = official(torch.cat([cls[:, None] + k, idx[:, :-1]], 1))
                r["logits_max_abs"] = float((logits[..., :k] - prior(idx.view(2, 16, 16), cls)[:, :, 0]).abs().max())
                r["logits_max"] = float(logits.abs().max())
                continue
            for top_k in (100_000, 100):  # runTestGPT.sh's top-k (all codes), and a truncating one
                torch.manual_seed(123)  # GPT-LC samples from the global generator
                ref = Sampler(official, k).sample(None, cls[:, None] + k, steps=256, top_k=top_k)
                ours = prior.generate(cls, guidance_scale=1.0, top_k=top_k, generator=torch.Generator().manual_seed(123))
                r[f"tokens_identical_topk{top_k}"] = bool(torch.equal(ours.flatten(1), ref))
                r[f"tokens_same_share_topk{top_k}"] = float((ours.flatten(1) == ref).float().mean())
    return out


def ldm_lc(a, tmp):
    import numpy as np
    from ldm.models.diffusion.ddim import DDIMSampler
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from ldm.modules.diffusionmodules.util import make_beta_schedule

    from lcgen.convert import ldm_lc_pipeline

    with open(os.path.join(a.official, "configs", "imagenet-f16-vqgan-lc-100K.yaml")) as f:
        unet_params = yaml.safe_load(f)["model"]["params"]["unet_config"]["params"]
    torch.manual_seed(0)
    unet = UNetModel(**unet_params).eval()
    embedder = torch.nn.Embedding(1001, 512)  # ldm's ClassEmbedder: embedding(batch[key][:, None])
    perturb(unet)

    class CPUSampler(DDIMSampler):  # the official sampler moves its buffers to CUDA; keep them here
        def register_buffer(self, name, attr):
            setattr(self, name, attr)

    class Official:  # what DDIMSampler reads of LatentDiffusion (ddpm.py register_schedule, apply_model)
        parameterization, num_timesteps, device = "eps", 1000, torch.device("cpu")

        def __init__(self):
            betas = np.asarray(make_beta_schedule("linear", 1000, 0.0015, 0.0195))
            cum = np.cumprod(1.0 - betas)
            self.betas, self.alphas_cumprod = torch.tensor(betas, dtype=torch.float32), torch.tensor(cum, dtype=torch.float32)
            self.alphas_cumprod_prev = torch.tensor(np.append(1.0, cum[:-1]), dtype=torch.float32)

        def apply_model(self, x, t, c):
            return unet(x, t, context=c)

    # the state as LatentDiffusion saves it: UNet under model.diffusion_model, its EMA copy as LitEma
    # buffers, the class embedder under cond_stage_model
    state = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    state.update({"model_ema." + ("diffusion_model." + k).replace(".", ""): v for k, v in unet.state_dict().items()})
    state["cond_stage_model.embedding.weight"] = embedder.weight.detach().clone()
    path = os.path.join(tmp, "ldm-lc-f16.pth")
    torch.save({"state_dict": state}, path)
    from lcgen.tokenizer import VQTokenizer

    tok = VQTokenizer(backbone="vqvae", resolution=16, embed_dim=8, codebook_size=16, quantizer_kind="vq")  # decode is not compared
    pipe = ldm_lc_pipeline(tok, load_state_dict(path, prefer=("state_dict",)), path)
    pipe.set_progress_bar_config(disable=True)
    x, t, y = torch.randn(4, 8, 16, 16), torch.tensor([1, 250, 500, 996]), torch.tensor([207, 0, 999, 1000])
    with torch.no_grad():
        ref = unet(x, t, context=embedder(y[:, None]))
        r = {"unet_eps_max_abs": float((pipe.unet(x, t, class_labels=y).sample - ref).abs().max()),
             "unet_eps_max": float(ref.abs().max())}
        steps = a.steps or 200
        cls = torch.tensor([207, 3])
        torch.manual_seed(7)  # ldm's sampler draws x_T and each step's noise from the global generator
        ref_z, _ = CPUSampler(Official()).sample(S=steps, batch_size=2, shape=(8, 16, 16), conditioning=embedder(cls[:, None]),
                                                  verbose=False, eta=1.0, unconditional_guidance_scale=1.6,
                                                  unconditional_conditioning=embedder(torch.full((2, 1), 1000)))
        captured = {}
        pipe._decode_latents = lambda z: captured.setdefault("z", z)  # the latent the decoder would get
        pipe(class_id=cls.tolist(), num_inference_steps=steps, generator=torch.Generator().manual_seed(7), output_type="pt")
        r[f"ddim{steps}_eta1_cfg1.6_latent_max_abs"] = float((captured["z"] - ref_z).abs().max())
        r[f"ddim{steps}_latent_max"] = float(ref_z.abs().max())
    return r


def dit(a, tmp, sit=False):
    import models

    torch.manual_seed(0)
    build = models.SiT_models["SiT-XL/2"] if sit else models.DiT_models["DiT-XL/2"]
    official = build(input_size=16, in_channels=8, num_classes=1000, learn_sigma=True).eval()
    perturb(official, skip=("pos_embed",))
    path = os.path.join(tmp, "dit.pt")
    torch.save({"model": official.state_dict(), "ema": official.state_dict(), "args": argparse.Namespace()}, path)
    model = dit_from_official(load_state_dict(path, prefer=("ema", "model")))
    x, y = torch.randn(4, 8, 16, 16), torch.tensor([207, 0, 999, 1000])
    t = torch.tensor([0.0, 0.25, 0.5, 1.0]) if sit else torch.tensor([0, 250, 500, 999])  # SiT embeds t in [0, 1]
    if a.fp64:
        official.double(), model.double()
        x = x.double()
    with torch.no_grad():
        ref, ours = official(x, t, y), model(x, t, y)
    if sit:  # SiT's forward returns the velocity half only
        return {"learn_sigma": model.config.learn_sigma, "velocity_max_abs": float((ours[:, :8] - ref).abs().max()),
                "output_max": float(ref.abs().max())}
    return {"learn_sigma": model.config.learn_sigma, "output_max_abs": float((ours - ref).abs().max()),
            "eps_half_max_abs": float((ours[:, :8] - ref[:, :8]).abs().max()), "output_max": float(ref.abs().max())}


def sit(a, tmp):
    return dit(a, tmp, sit=True)


def sit_samplers(a, tmp):
    """SiT-LC's evaluation.py samplers (transport.Sampler: ODE dopri5, SDE Euler with diffusion_norm and
    the Mean last step, both guiding 3 channels through forward_with_cfg on a doubled batch) against
    the converted pipeline with guided_channels=3, on a SiT-S/2 (the samplers, not the size, are compared)."""
    import models
    from transport import Sampler, create_transport
    from transport import integrators

    import lcgen.priors.transport as lcgen_transport
    from lcgen.pipelines import VQSiTPipeline
    from lcgen.tokenizer import VQTokenizer

    torch.manual_seed(0)
    official = models.SiT_models["SiT-S/2"](input_size=16, in_channels=8, num_classes=1000, learn_sigma=True).eval()
    perturb(official, skip=("pos_embed",))
    path = os.path.join(tmp, "sit.pt")
    torch.save({"ema": official.state_dict()}, path)
    prior = dit_from_official(load_state_dict(path, prefer=("ema",)))
    tok = VQTokenizer(backbone="vqvae", resolution=16, embed_dim=8, codebook_size=16, quantizer_kind="vq")
    sampler, steps, cls = Sampler(create_transport("Linear", "velocity", None, None, None)), a.steps or 250, [207, 3]
    n = len(cls)
    out = {}
    for mode in ("dopri5", "sde"):
        pipe = VQSiTPipeline(tok, prior, path_type="linear", sampling_method=mode, num_inference_steps=steps,
                             guidance_scale=8.0, timestep_scale=1.0, guided_channels=3)
        pipe.set_progress_bar_config(disable=True)
        captured, drawn = {}, []
        pipe._decode_latents = lambda z: captured.setdefault("z", z)
        torch.manual_seed(11)
        z = torch.randn(n, 8, 16, 16)
        y = torch.tensor(cls + [1000] * n)
        if mode == "dopri5":
            fn = sampler.sample_ode(sampling_method="dopri5", num_steps=steps, atol=1e-6, rtol=1e-3)
        else:
            fn = sampler.sample_sde(sampling_method="Euler", diffusion_form="sigma", diffusion_norm=1.0,
                                    last_step="Mean", last_step_size=0.04, num_steps=steps)
            real_randn = integrators.th.randn
            integrators.th.randn = lambda *s, **k: drawn.append(real_randn(*s, **k)) or drawn[-1]  # record SiT's noise
        with torch.no_grad():
            ref = fn(torch.cat([z, z]), official.forward_with_cfg, y=y, cfg_scale=8.0)[-1][:n]
        if mode == "sde":
            integrators.th.randn = real_randn
            replay = iter([z] + [d[:n] for d in drawn])  # the conditional half's noise, step by step
            real_randn_tensor = lcgen_transport.randn_tensor
            lcgen_transport.randn_tensor = lambda *s, **k: next(replay)
        try:
            pipe(class_id=cls, generator=torch.Generator().manual_seed(11), output_type="pt")
        finally:
            if mode == "sde":
                lcgen_transport.randn_tensor = real_randn_tensor
        out[f"{mode}_{steps}_cfg8_3ch_latent_max_abs"] = float((captured["z"] - ref).abs().max())
        out[f"{mode}_latent_max"] = float(ref.abs().max())
    return out


RUNS = {"sit-samplers": sit_samplers, "gpt-lc": gpt_lc, "ldm-lc": ldm_lc, "dit": dit, "sit": sit, "llamagen-vq": llamagen_vq, "llamagen-gpt": llamagen_gpt, "taming": taming, "vqgan-lc": vqgan_lc}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("which", choices=sorted(RUNS))
    p.add_argument("--official", required=True, help="a checkout of the official repository (its code root)")
    p.add_argument("--fp64", action="store_true")
    p.add_argument("--model", default="GPT-B")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=None, help="ldm-lc: DDIM steps (LDM-LC samples with 200); "
                                                            "sit-samplers: SiT-LC's num-sampling-steps (250)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if not os.path.isdir(a.official):
        raise SystemExit(f"--official {a.official} is not a folder")
    sys.path.insert(0, os.path.abspath(a.official))
    with tempfile.TemporaryDirectory() as tmp:
        result = {"which": a.which, "fp64": a.fp64, **RUNS[a.which](a, tmp)}
    print(json.dumps(result, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
