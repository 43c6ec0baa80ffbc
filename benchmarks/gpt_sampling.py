"""GPT prior sampling: lcgen's hand-written GPTPrior (static KV cache, conditional and null-class rows
in one batch) against transformers' LlamaForCausalLM of the same width, depth, heads, FFN, vocabulary
and sequence, in one process, two ways: `generate` with classifier-free guidance (its
UnbatchedClassifierFreeGuidanceLogitsProcessor runs the unconditional rows as a second forward pass
with its own cache), and driven by lcgen's own batched-CFG loop (both rows in one forward with a KV
cache, the same guidance and top-k sampling), which separates the model from the loop.

    python benchmarks/gpt_sampling.py [--tokens 256] [--batch 8] [--vocab 16384] [--rounds 3] [--device cpu]
    python benchmarks/gpt_sampling.py --llamagen GPT-B   # a converted LlamaGen c2i GPT-B (random weights, 2-D RoPE)

lcgen runs twice: eager, and with `compile=True` (its fixed-shape step through torch.compile). The
contenders alternate within each round; prints each one's best seconds per batch and the median over
rounds of the paired ratios. The README's choice of a hand-written prior cites it.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.timing import interleaved, on_torch_gemm, ratio, report  # noqa: E402
from lcgen.cpu_linear import cpu_gemm  # noqa: E402


def llamagen_layout(prior) -> dict:
    """A GPTPrior's weights under LlamaGen's key names (the inverse of lcgen.priors.published's map), so
    that the benchmark times a model that went through `gpt_from_llamagen`."""
    from lcgen.priors.published import _LAYER, _TOP

    layer = {v: k for k, v in _LAYER.items()}
    top = {v: k for k, v in _TOP.items()}
    out = {}
    for name, value in prior.state_dict().items():
        parts = name.split(".")
        if parts[0] == "blocks":
            out[f"layers.{parts[1]}.{layer['.'.join(parts[2:-1])]}.{parts[-1]}"] = value
        else:
            out[f"{top['.'.join(parts[:-1])]}.{parts[-1]}"] = value
    return out


def build(vocab, classes, width, layers, heads, tokens, device, llamagen=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lcgen.priors.gpt import GPT_SIZES, GPTPrior
    from lcgen.priors.published import gpt_from_llamagen

    side = int(tokens ** 0.5)
    if llamagen:
        layers, heads, width = GPT_SIZES[llamagen]
        random = GPTPrior(codebook_size=vocab, grid_height=side, grid_width=side, num_classes=classes,
                          hidden_size=width, num_layers=layers, num_heads=heads, position_scheme="rope_2d")
        with torch.no_grad():
            random.head.weight.normal_(std=0.02)  # LlamaGen's init zeroes it: make the logits non-trivial
        ours = gpt_from_llamagen(llamagen_layout(random), llamagen, image_size=side * 16).to(device).eval()
    else:
        ours = GPTPrior(codebook_size=vocab, grid_height=side, grid_width=tokens // side, num_classes=classes,
                        hidden_size=width, num_layers=layers, num_heads=heads).to(device).eval()
    hidden = ours.blocks[0].ffn.w1.out_features
    cfg = LlamaConfig(vocab_size=vocab + classes + 1, hidden_size=width, intermediate_size=hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=tokens + 1,
                      bos_token_id=None, eos_token_id=None, pad_token_id=vocab + classes)
    llama = LlamaForCausalLM(cfg).to(device).eval()
    return ours, llama, (width, layers, heads)


@torch.no_grad()
def llama_batched_cfg(llama, prompt, null, tokens, vocab, guidance, top_k, generator):
    """lcgen's sampling loop around transformers' model: conditional and null rows in one forward with
    its KV cache, logits guided as uncond + s (cond - uncond) over the image vocabulary, top-k sampling."""
    from transformers import DynamicCache

    from lcgen.priors.sampling import guide, sample_tokens

    b = prompt.shape[0]
    ids, cache, out = torch.cat([prompt, null]), DynamicCache(), []
    for _ in range(tokens):
        logits = llama(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1, :vocab].float()
        nxt = sample_tokens(guide(logits[:b], logits[b:], guidance)[:, None], 1.0, top_k, None, generator)[:, 0]
        out.append(nxt)
        ids = torch.cat([nxt, nxt])[:, None]
    return torch.stack(out, 1)


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
    p.add_argument("--llamagen", default=None, metavar="GPT-B", help="time a converted LlamaGen c2i GPT of this size "
                                                                     "(sets width, layers and heads)")
    p.add_argument("--no-compile", action="store_true", help="leave out lcgen's compiled step")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    ours, llama, (a.width, a.layers, a.heads) = build(a.vocab, a.classes, a.width, a.layers, a.heads, a.tokens,
                                                      a.device, a.llamagen)
    labels = torch.randint(a.classes, (a.batch,), device=a.device)
    prompt = (labels + a.vocab)[:, None]
    null = torch.full_like(prompt, a.vocab + a.classes)

    def run_ours(compile=False):
        ours.generate(labels, guidance_scale=a.guidance, top_k=1000, compile=compile)

    def run_llama():
        with torch.no_grad():
            llama.generate(input_ids=prompt, negative_prompt_ids=null, guidance_scale=a.guidance, do_sample=True,
                           top_k=1000, max_new_tokens=a.tokens, min_new_tokens=a.tokens,
                           suppress_tokens=list(range(a.vocab, a.vocab + a.classes + 1)))

    def run_llama_same_loop():
        llama_batched_cfg(llama, prompt, null, a.tokens, a.vocab, a.guidance, 1000, None)

    fns = {"lcgen": run_ours, "lcgen_compiled": lambda: run_ours(True), "transformers_llama_generate": run_llama,
           "transformers_llama_same_loop": run_llama_same_loop}
    if a.no_compile:
        del fns["lcgen_compiled"]
    if a.device == "cpu" and cpu_gemm() == "onednn":  # the same model on torch's GEMM: what the GEMM choice gives
        fns["lcgen_torch_gemm"] = on_torch_gemm(run_ours)
    times = interleaved(fns, a.rounds, a.device)
    result = {"device": a.device, "threads": torch.get_num_threads(), "model": a.llamagen or "GPTPrior",
              "batch": a.batch, "tokens": a.tokens, "vocab": a.vocab, "width": a.width,
              "layers": a.layers, "guidance": a.guidance, "rounds": a.rounds,
              **{f"{name}_s": round(min(t), 3) for name, t in times.items()}}
    result["cpu_gemm"] = "onednn" if "lcgen_torch_gemm" in times else "torch"
    for ours_name in [n for n in ("lcgen", "lcgen_compiled", "lcgen_torch_gemm") if n in times]:
        suffix = ours_name[len("lcgen"):]
        result[f"speedup{suffix}_vs_generate"] = ratio(times, "transformers_llama_generate", ours_name)
        result[f"speedup{suffix}_vs_same_loop"] = ratio(times, "transformers_llama_same_loop", ours_name)
    return report(result, a.json)


if __name__ == "__main__":
    main()
