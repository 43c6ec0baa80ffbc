"""GPT prior sampling: lcgen's hand-written GPTPrior (static KV cache, conditional and null-class rows
in one batch) against transformers' LlamaForCausalLM.generate with classifier-free guidance (its
UnbatchedClassifierFreeGuidanceLogitsProcessor runs the unconditional rows as a second forward pass
with its own cache), same width, depth, heads, vocabulary and sequence, in one process.

    python benchmarks/gpt_sampling.py [--tokens 256] [--batch 8] [--vocab 16384] [--rounds 3] [--device cpu]

Prints seconds per batch for each and the ratio; the README's choice of a hand-written prior cites it.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def build(vocab, classes, width, layers, heads, tokens, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lcgen.priors.gpt import GPTPrior

    side = int(tokens ** 0.5)
    ours = GPTPrior(codebook_size=vocab, grid_height=side, grid_width=tokens // side, num_classes=classes,
                    hidden_size=width, num_layers=layers, num_heads=heads).to(device).eval()
    hidden = ours.blocks[0].ffn.w1.out_features
    cfg = LlamaConfig(vocab_size=vocab + classes + 1, hidden_size=width, intermediate_size=hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=tokens + 1,
                      bos_token_id=None, eos_token_id=None, pad_token_id=vocab + classes)
    llama = LlamaForCausalLM(cfg).to(device).eval()
    return ours, llama


def timed(fn, rounds, device):
    fn()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    ours, llama = build(a.vocab, a.classes, a.width, a.layers, a.heads, a.tokens, a.device)
    labels = torch.randint(a.classes, (a.batch,), device=a.device)
    prompt = (labels + a.vocab)[:, None]
    null = torch.full_like(prompt, a.vocab + a.classes)

    def run_ours():
        ours.generate(labels, guidance_scale=a.guidance, top_k=1000)

    def run_llama():
        with torch.no_grad():
            llama.generate(input_ids=prompt, negative_prompt_ids=null, guidance_scale=a.guidance, do_sample=True,
                           top_k=1000, max_new_tokens=a.tokens, min_new_tokens=a.tokens,
                           suppress_tokens=list(range(a.vocab, a.vocab + a.classes + 1)))

    t_ours, t_llama = timed(run_ours, a.rounds, a.device), timed(run_llama, a.rounds, a.device)
    result = {"device": a.device, "batch": a.batch, "tokens": a.tokens, "vocab": a.vocab, "width": a.width,
              "layers": a.layers, "guidance": a.guidance, "lcgen_s": round(t_ours, 3),
              "transformers_llama_s": round(t_llama, 3), "speedup": round(t_llama / t_ours, 2)}
    print(json.dumps(result, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
