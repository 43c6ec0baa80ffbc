"""Exact nearest-code search with bounded memory.

The full tokens x codes distance matrix is never built when it would exceed `memory_budget`
bytes: tokens and codes are processed in blocks with a running best. Scores are computed in fp32
with autocast off (the reference numbers show bf16/fp16 distances pick the wrong code up to 99%
of the time). fp32 can still mis-order two codes whose distances differ by less than the
rounding error of ||e||^2 - 2 x.e, so we also track the runner-up: any row whose best and
second-best scores are closer than a rigorous fp32 error bound is re-searched in fp64. The result
equals an fp64 brute-force argmin except on exact ties (lowest index wins).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes for score blocks
_CODE_BLOCK = 8192  # codes per block: large enough for an efficient GEMM, small enough for cache
_FP32_UNIT_ROUNDOFF = 2.0**-24


def _block_sizes(num_tokens: int, num_codes: int, memory_budget: int, bytes_per: int = 4):
    code_block = min(num_codes, _CODE_BLOCK)
    # two live blocks of scores (the GEMM output and the masked copy for the runner-up)
    token_block = max(1, min(num_tokens, memory_budget // (2 * bytes_per * code_block)))
    return token_block, code_block


def prepare(x: torch.Tensor, codes: torch.Tensor, distance: str, dtype=torch.float32):
    """Copies of queries and codes in `dtype` (l2-normalised for 'cos')."""
    x = x.to(dtype)
    codes = codes.to(dtype)
    if distance == "cos":
        x = F.normalize(x, dim=-1)
        codes = F.normalize(codes, dim=-1)
    return x, codes


def _scores(x_block, codes_block, code_sq_block, distance):
    """Score to minimise, up to a per-row constant: ||e||^2 - 2 x.e (l2) or -x.e (cos)."""
    if distance == "cos":
        return torch.mm(x_block, codes_block.t()).neg_()
    return torch.addmm(code_sq_block.unsqueeze(0), x_block, codes_block.t(), alpha=-2.0)


def _running_best(x, codes, distance, memory_budget, gumbel: torch.Generator | None = None,
                  track_second: bool = True):
    """Blocked argmin of the score over codes for every row of x.

    Returns (best_score, best_index, second_score). With `gumbel`, Gumbel noise is subtracted
    from each score before the argmin, which samples index j with probability softmax(-score)_j.
    """
    n, k = x.shape[0], codes.shape[0]
    token_block, code_block = _block_sizes(n, k, memory_budget)
    code_sq = codes.pow(2).sum(-1) if distance == "l2" else None
    best = x.new_full((n,), math.inf)
    best_idx = torch.zeros(n, dtype=torch.long, device=x.device)
    second = x.new_full((n,), math.inf)
    for t0 in range(0, n, token_block):
        xb = x[t0:t0 + token_block]
        bb, bi, bs = best[t0:t0 + token_block], best_idx[t0:t0 + token_block], second[t0:t0 + token_block]
        for c0 in range(0, k, code_block):
            cb = codes[c0:c0 + code_block]
            s = _scores(xb, cb, None if code_sq is None else code_sq[c0:c0 + code_block], distance)
            if gumbel is not None:
                u = torch.rand(s.shape, generator=gumbel, device=s.device).clamp_(1e-20, 1.0)
                s.add_(u.log_().neg_().log_())  # -Gumbel = log(-log u)
            val, idx = s.min(dim=1)
            if track_second:
                s.scatter_(1, idx.unsqueeze(1), math.inf)
                val2 = s.min(dim=1).values
                # runner-up of the union of {best, second} and {val, val2}
                bs.copy_(torch.minimum(torch.maximum(bb, val), torch.minimum(bs, val2)))
            better = val < bb  # strict: earlier (lower) index wins ties
            bi.copy_(torch.where(better, idx + c0, bi))
            bb.copy_(torch.where(better, val, bb))
    return best, best_idx, second


def _error_bound(x, codes, distance):
    """Per-row bound on |fp32 score - exact score| for every code (Higham's gamma_n bound)."""
    d = x.shape[1]
    gamma = (d + 4) * _FP32_UNIT_ROUNDOFF / (1 - (d + 4) * _FP32_UNIT_ROUNDOFF)
    if distance == "cos":
        # unit vectors; normalisation itself perturbs each by ~d*u, so widen by a factor 2
        return torch.full((x.shape[0],), 4 * gamma, device=x.device)
    x_norm = x.norm(dim=1)
    code_norm = codes.norm(dim=1).max()
    return gamma * (2 * x_norm * code_norm + code_norm**2) * 1.01


def nearest_code(x: torch.Tensor, codes: torch.Tensor, distance: str = "l2",
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, exact: bool = True) -> torch.Tensor:
    """Index of the nearest code for every row of x.

    x: (N, D) float, codes: (K, D) float. distance: "l2" (squared Euclidean) or "cos" (largest
    cosine similarity). Returns int64 (N,). Peak extra memory is about `memory_budget` bytes.
    """
    if distance not in ("l2", "cos"):
        raise ValueError(f"distance must be 'l2' or 'cos', got {distance!r}")
    if x.ndim != 2 or codes.ndim != 2 or x.shape[1] != codes.shape[1]:
        raise ValueError(f"expected x (N, D) and codes (K, D), got {tuple(x.shape)} and {tuple(codes.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False), torch.no_grad():
        x32, codes32 = prepare(x.detach(), codes.detach(), distance)
        best, idx, second = _running_best(x32, codes32, distance, memory_budget, track_second=exact)
        if exact and codes.shape[0] > 1:
            # Scores are exact to within `bound`; a gap above 2*bound proves the fp32 winner.
            unsure = (second - best) <= 2 * _error_bound(x32, codes32, distance)
            if unsure.any():
                rows = unsure.nonzero().squeeze(1)
                x64, codes64 = prepare(x.detach()[rows], codes.detach(), distance, torch.float64)
                # one element of fp64 costs twice the bytes: halve the token block via the budget
                _, idx64, _ = _running_best(x64, codes64, distance, memory_budget // 2, track_second=False)
                idx[rows] = idx64
    return idx


def best_row_per_code(features: torch.Tensor, codes: torch.Tensor, distance: str,
                      memory_budget: int = DEFAULT_MEMORY_BUDGET,
                      generator: torch.Generator | None = None):
    """For each code, the feature row that is most similar to it (or, with `generator`, one
    sampled from the softmax over features of the similarity). Used for CVQ anchors.

    Returns (similarity of the chosen row up to a per-code constant, row index), both (K,).
    """
    with torch.autocast(device_type=features.device.type, enabled=False), torch.no_grad():
        codes32, feats32 = prepare(codes.detach(), features.detach(), distance)
        # The codes play the queries: for l2 the score ||z||^2 - 2 e.z equals ||z - e||^2 up to
        # the per-code constant ||e||^2, so its argmin over features is the closest feature.
        score, idx, _ = _running_best(codes32, feats32, distance, memory_budget, generator, track_second=False)
    return -score, idx
