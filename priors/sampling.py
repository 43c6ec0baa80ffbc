"""Token sampling helpers shared by the GPT prior: guidance on logits, temperature, top-k, top-p,
and multinomial draws that honour one generator or one generator per sample."""
from __future__ import annotations

import torch

from lcgen.checks import check_finite


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond) (LlamaGen, DiT)."""
    return uncond + scale * (cond - uncond)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Mask (to -inf) all but the top_k logits and the smallest set whose probability reaches top_p,
    along the last dim. top_k None/0 and top_p None/1.0 are off. The most likely token always stays."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):  # NaN fails too
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator=None) -> torch.Tensor:
    """logits (B, ..., K) -> int64 (B, ...). `generator` is one torch.Generator or a list of B.
    temperature 0 is greedy."""
    check_finite("temperature (0 = greedy)", temperature, minimum=0)
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
    b, k = probs.shape[0], probs.shape[-1]
    if isinstance(generator, list):
        rows = [torch.multinomial(probs[i].reshape(-1, k), 1, generator=generator[i]) for i in range(b)]
        return torch.stack(rows).reshape(probs.shape[:-1])
    return torch.multinomial(probs.reshape(-1, k), 1, generator=generator).reshape(probs.shape[:-1])
