"""DiT/SiT backbone speed: lcgen's `DiTModel` against diffusers' `DiTTransformer2DModel` of the same
depth, width, heads, patch and latent, in one process on the same inputs: guided sampling (both
halves of classifier-free guidance in one batch, the same diffusers DDIM scheduler driving both) in
images/s, and a training step (forward, MSE backward, AdamW step) in seconds. With `--compile`, lcgen's
model also runs through `torch.compile` (the `compile=True` of the DiT/SiT pipelines).

    python benchmarks/dit_speed.py                          # DiT-B/2 on 8x16x16 latents, batch 8, 50 steps
    python benchmarks/dit_speed.py --batch 2 --steps 10     # the same model, a CPU-sized run
    python benchmarks/dit_speed.py --size T/2 --batch 2 --steps 2 --rounds 1   # seconds (CI smoke)

The contenders alternate within each round; prints each one's best time and the median over rounds
of the paired ratios (diffusers / lcgen: above 1 means lcgen is faster).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.timing import interleaved, on_torch_gemm, ratio, report  # noqa: E402
from lcgen.cpu_linear import cpu_gemm  # noqa: E402


def build(size: str, channels: int, latent: int, classes: int, device: str):
    from diffusers import DiTTransformer2DModel

    from lcgen.priors.dit import DiTModel, parse_dit_size

    depth, width, heads, patch = parse_dit_size(f"DiT-{size}")
    ours = DiTModel(sample_size=latent, patch_size=patch, in_channels=channels, hidden_size=width, num_layers=depth,
                    num_heads=heads, num_classes=classes).to(device)
    theirs = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=width // heads, in_channels=channels,
                                   out_channels=channels, num_layers=depth, sample_size=latent, patch_size=patch,
                                   num_embeds_ada_norm=classes).to(device)
    for model in (ours, theirs):  # both start adaLN-Zero (an identity network): give every weight a value
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(std=0.02)
    return ours, theirs


def sampler(model, diffusers_api: bool, labels, steps: int, guidance: float, shape, device):
    """A DDIM loop with guidance: the conditional and null rows in one forward per step."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000)
    null = torch.full_like(labels, model.config.get("num_classes", model.config.get("num_embeds_ada_norm")))
    rows = torch.cat([labels, null])

    @torch.no_grad()
    def run():
        x = torch.randn(shape, generator=torch.Generator(device).manual_seed(0), device=device)
        scheduler.set_timesteps(steps, device=device)
        for t in scheduler.timesteps:
            x2 = torch.cat([x, x])
            tt = t.expand(x2.shape[0])
            out = model(x2, tt, class_labels=rows).sample if diffusers_api else model(x2, tt, rows)
            cond, uncond = out.chunk(2)
            x = scheduler.step(uncond + guidance * (cond - uncond), t, x).prev_sample
        return x

    return run


def trainer(model, diffusers_api: bool, batch: int, shape, classes: int, device: str):
    """One optimisation step: noisy latents in, MSE against fixed targets, backward, AdamW."""
    g = torch.Generator(device).manual_seed(1)
    x = torch.randn((batch, *shape[1:]), generator=g, device=device)
    target = torch.randn(x.shape, generator=g, device=device)
    t = torch.randint(0, 1000, (batch,), generator=g, device=device)
    labels = torch.randint(0, classes, (batch,), generator=g, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def run():
        out = model(x, t, class_labels=labels).sample if diffusers_api else model(x, t, labels)
        torch.nn.functional.mse_loss(out, target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="B/2", help="DiT body/patch, e.g. B/2, T/2")
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also time lcgen's model through torch.compile")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    ours, theirs = build(a.size, a.channels, a.latent, a.classes, a.device)
    shape = (a.batch, a.channels, a.latent, a.latent)
    labels = torch.randint(a.classes, (a.batch,), device=a.device)
    samplers = {"lcgen": sampler(ours, False, labels, a.steps, a.guidance, shape, a.device),
                "diffusers": sampler(theirs, True, labels, a.steps, a.guidance, shape, a.device)}
    trainers = {"lcgen": trainer(ours, False, a.batch, shape, a.classes, a.device),
                "diffusers": trainer(theirs, True, a.batch, shape, a.classes, a.device)}
    if a.compile:
        compiled = torch.compile(ours)
        samplers["lcgen_compiled"] = sampler(compiled, False, labels, a.steps, a.guidance, shape, a.device)
        trainers["lcgen_compiled"] = trainer(compiled, False, a.batch, shape, a.classes, a.device)
    if a.device == "cpu" and cpu_gemm() == "onednn":  # the same model on torch's GEMM: what the GEMM choice gives
        samplers["lcgen_torch_gemm"] = on_torch_gemm(samplers["lcgen"])
        trainers["lcgen_torch_gemm"] = on_torch_gemm(trainer(ours, False, a.batch, shape, a.classes, a.device))
    n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
    ours.eval(), theirs.eval()  # diffusers drops labels at random in train mode
    sampling = interleaved(samplers, a.rounds, a.device)
    ours.train(), theirs.train()
    training = interleaved(trainers, a.rounds, a.device)
    result = {"device": a.device, "threads": torch.get_num_threads(), "model": f"DiT-{a.size}",
              "latent": [a.channels, a.latent, a.latent], "batch": a.batch, "steps": a.steps, "rounds": a.rounds,
              "cpu_gemm": "onednn" if "lcgen_torch_gemm" in samplers else "torch",
              "parameters_lcgen": n_ours, "parameters_diffusers": n_theirs,
              **{f"sampling_{k}_images_per_s": round(a.batch / min(v), 3) for k, v in sampling.items()},
              **{f"train_step_{k}_s": round(min(v), 3) for k, v in training.items()}}
    for name in [n for n in samplers if n != "diffusers"]:
        result[f"sampling_speedup_{name}"] = ratio(sampling, "diffusers", name)
        result[f"train_speedup_{name}"] = ratio(training, "diffusers", name)
    return report(result, a.json)


if __name__ == "__main__":
    main()
