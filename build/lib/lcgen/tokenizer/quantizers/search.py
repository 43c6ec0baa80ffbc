"""Exact nearest-code search with bounded memory.

The full tokens x codes distance matrix is never built when it would exceed `memory_budget`
bytes: codes and tokens are processed in blocks with a running best, codes are cast (and
normalised) one block at a time, and one score buffer is reused. Scores are computed in fp32 with
autocast off (bf16/fp16 distances pick the wrong code up to 99% of the time). fp32 can still
mis-order two codes whose distances differ by less than the rounding error of ||e||^2 - 2 x.e,
so the runner-up is tracked too: any row whose best and second-best scores are closer than a
rigorous fp32 error bound is re-searched in fp64. The result equals an fp64 brute-force argmin
except on exact ties (lowest index wins).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # hard cap, in bytes, on the score buffer
CODE_BLOCK = 2048  # codes per block
_FP32_UNIT_ROUNDOFF = 2.0**-24


def _working_block_bytes(x: torch.Tensor, memory_budget: int) -> int:
    """Score-block size actually used, within the budget. On CPU, at small D the min/argmin
    passes dominate and want the block in cache; at large D the GEMM dominates and wants bigger
    blocks (measured on a 2-core x86 CPU with benchmarks/search_throughput.py: 4 MiB best at
    D=8, 16 MiB at D=768). GPUs want the largest GEMMs the budget allows."""
    if x.device.type != "cpu":
        return memory_budget
    return min(memory_budget, 4 * 2**20 if x.shape[1] <= 32 else 16 * 2**20)


def prepare_queries(x: torch.Tensor, distance: str, dtype=torch.float32) -> torch.Tensor:
    """Queries in `dtype`, l2-normalised for 'cos'."""
    x = x.to(dtype)
    return F.normalize(x, dim=-1) if distance == "cos" else x


def _running_best(x, codes, distance, memory_budget, gumbel: torch.Generator | None = None,
                  track_second: bool = True, code_block: int = CODE_BLOCK):
    """Blocked argmin over codes of the score for every row of x (already prepared).

    Score: ||e||^2 - 2 x.e for 'l2' (||x||^2 is constant per row), -x.e for 'cos'. Returns
    (best_score, best_index, second_score). With `gumbel`, Gumbel noise is subtracted from each
    score before the argmin, which samples index j with probability softmax(-score)_j.
    """
    n, k = x.shape[0], codes.shape[0]
    code_block = min(k, code_block)
    block_bytes = _working_block_bytes(x, memory_budget)
    token_block = max(1, min(n, block_bytes // (x.element_size() * code_block)))
    best = x.new_full((n,), math.inf)
    best_idx = torch.zeros(n, dtype=torch.long, device=x.device)
    second = x.new_full((n,), math.inf)
    buffer = x.new_empty(token_block * code_block)
    for c0 in range(0, k, code_block):
        cb = codes[c0:c0 + code_block].to(x.dtype)
        if distance == "cos":
            cb = F.normalize(cb, dim=-1)
        bias = cb.pow(2).sum(-1).unsqueeze(0) if distance == "l2" else None
        for t0 in range(0, n, token_block):
            xb = x[t0:t0 + token_block]
            s = buffer[: xb.shape[0] * cb.shape[0]].view(xb.shape[0], cb.shape[0])
            if distance == "cos":
                torch.mm(xb, cb.t(), out=s).neg_()
            else:
                torch.addmm(bias, xb, cb.t(), alpha=-2.0, out=s)
            if gumbel is not None:
                u = torch.rand(s.shape, generator=gumbel, device=s.device).clamp_(1e-20, 1.0)
                s.add_(u.log_().neg_().log_())  # -Gumbel = log(-log u)
            val, idx = s.min(dim=1)
            bb, bi, bs = best[t0:t0 + token_block], best_idx[t0:t0 + token_block], second[t0:t0 + token_block]
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
    """Per-row bound on |fp32 score - exact score| over all codes (Higham's gamma_n bound).
    x: prepared fp32 queries (N, d); codes: raw codes (K, d)."""
    d = x.shape[1]
    gamma = (d + 4) * _FP32_UNIT_ROUNDOFF / (1 - (d + 4) * _FP32_UNIT_ROUNDOFF)
    if distance == "cos":
        # unit vectors; normalisation itself perturbs each by ~d*u, so widen by a factor 2
        return torch.full((x.shape[0],), 4 * gamma, device=x.device)
    code_norm = max(float(codes[c0:c0 + CODE_BLOCK].float().norm(dim=1).max())
                    for c0 in range(0, codes.shape[0], CODE_BLOCK))
    return gamma * (2 * x.norm(dim=1) * code_norm + code_norm**2) * 1.01


def nearest_code(x: torch.Tensor, codes: torch.Tensor, distance: str = "l2",
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, exact: bool = True) -> torch.Tensor:
    """Index of the nearest code for every row of x.

    x: (N, D) float, codes: (K, D) float. distance: "l2" (squared Euclidean) or "cos" (largest
    cosine similarity). Returns int64 (N,). Extra memory is about `memory_budget` bytes plus
    O(N) (plus a normalised copy of x for 'cos'). exact=False skips the fp64 re-check.
    """
    if distance not in ("l2", "cos"):
        raise ValueError(f"distance must be 'l2' or 'cos', got {distance!r}")
    if x.ndim != 2 or codes.ndim != 2 or x.shape[1] != codes.shape[1]:
        raise ValueError(f"expected x (N, D) and codes (K, D), got {tuple(x.shape)} and {tuple(codes.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False), torch.no_grad():
        codes = codes.detach()
        x32 = prepare_queries(x.detach(), distance)
        best, idx, second = _running_best(x32, codes, distance, memory_budget, track_second=exact)
        if exact and codes.shape[0] > 1:
            # Every fp32 score is within `bound` of the exact one; a gap above 2*bound proves the winner.
            unsure = (second - best) <= 2 * _error_bound(x32, codes, distance)
            if unsure.any():
                rows = unsure.nonzero().squeeze(1)
                x64 = prepare_queries(x.detach()[rows], distance, torch.float64)
                _, idx64, _ = _running_best(x64, codes, distance, memory_budget, track_second=False)
                idx[rows] = idx64
    return idx


def best_row_per_code(features: torch.Tensor, codes: torch.Tensor, distance: str,
                      memory_budget: int = DEFAULT_MEMORY_BUDGET,
                      generator: torch.Generator | None = None):
    """For each code, the feature row most similar to it (or, with `generator`, one sampled from
    the softmax over features of the similarity). Used for CVQ anchors.

    Returns (similarity of the chosen row up to a per-code constant, row index), both (K,).
    """
    with torch.autocast(device_type=features.device.type, enabled=False), torch.no_grad():
        # The codes play the queries: for l2 the score ||z||^2 - 2 e.z equals ||z - e||^2 up to
        # the per-code constant ||e||^2, so its argmin over features is the closest feature.
        queries = prepare_queries(codes.detach(), distance)
        score, idx, _ = _running_best(queries, features.detach(), distance, memory_budget, generator,
                                      track_second=False)
    return -score, idx
