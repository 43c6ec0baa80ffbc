"""Blocked brute-force scores with a running best: the exact search's workhorse.

Every token is scored against every code, one (token block x code block) score buffer at a time,
in the queries' dtype with autocast off; the runner-up is tracked for the fp32 exactness check
(`error_bound`). `search.nearest_code` calls this over the whole codebook or, through
`cell_search`, over the few cells of a low-dimensional codebook that can hold a token's nearest code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lcgen.cpu_linear import linear, takes_onednn

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # hard cap, in bytes, on the score buffer
CODE_BLOCK = 2048  # codes per block
FOLD_BIAS_MAX_DIM = 32  # fold the l2 bias into the GEMM up to this D (the copy of x it needs is small)
_FP32_UNIT_ROUNDOFF = 2.0**-24


def working_block_bytes(x: torch.Tensor, memory_budget: int) -> int:
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


def running_best(x, codes, distance, memory_budget, gumbel: torch.Generator | None = None,
                  track_second: bool = True, code_block: int = CODE_BLOCK):
    """Blocked argmin over codes of the score for every row of x (already prepared).

    Score: ||e||^2 - 2 x.e for 'l2' (||x||^2 is constant per row), -x.e for 'cos'. Returns
    (best_score, best_index, second_score). With `gumbel`, Gumbel noise is subtracted from each
    score before the argmin, which samples index j with probability softmax(-score)_j.
    """
    n, k = x.shape[0], codes.shape[0]
    code_block = min(k, code_block)
    block_bytes = working_block_bytes(x, memory_budget)
    token_block = max(1, min(n, block_bytes // (x.element_size() * code_block)))
    best = x.new_full((n,), math.inf)
    best_idx = torch.zeros(n, dtype=torch.long, device=x.device)
    second = x.new_full((n,), math.inf)
    onednn = takes_onednn(x, x)  # the GEMM's two sides: x and the code blocks, in x's dtype on its device
    buffer = None if onednn else x.new_empty(token_block * code_block)
    # At small D the score block's passes, not the GEMM, are the cost: the l2 bias ||e||^2 then rides
    # in the GEMM as one more coordinate ([x, 1] . [-2e, ||e||^2]) instead of being copied into the
    # block first (a length-(D+1) dot product, inside error_bound's gamma_(D+4))
    fold_bias = distance == "l2" and x.shape[1] <= FOLD_BIAS_MAX_DIM
    if fold_bias:
        x = torch.cat([x, x.new_ones(n, 1)], dim=1)
    for c0 in range(0, k, code_block):
        cb = codes[c0:c0 + code_block].to(x.dtype)
        if distance == "cos":
            cb = F.normalize(cb, dim=-1).neg()  # scores -x.e straight from the GEMM
        elif fold_bias:
            cb = torch.cat([cb * -2.0, cb.pow(2).sum(-1, keepdim=True)], dim=1)
        bias = cb.pow(2).sum(-1) if distance == "l2" and not fold_bias else None
        if onednn and bias is not None:
            cb = cb * -2.0  # exact: the scores come out as x.(-2e) + ||e||^2 from one GEMM with its bias
        for t0 in range(0, n, token_block):
            xb = x[t0:t0 + token_block]
            if onednn:  # where torch's own GEMM takes a slow path (lcgen.cpu_linear); a fresh block
                s = linear(xb, cb, bias)
            else:
                s = buffer[: xb.shape[0] * cb.shape[0]].view(xb.shape[0], cb.shape[0])
                if bias is None:
                    torch.mm(xb, cb.t(), out=s)
                else:
                    torch.addmm(bias.unsqueeze(0), xb, cb.t(), alpha=-2.0, out=s)
            if gumbel is not None:
                u = torch.rand(s.shape, generator=gumbel, device=s.device).clamp_(1e-20, 1.0)
                s.add_(u.log_().neg_().log_())  # -Gumbel = log(-log u)
            bb, bi, bs = best[t0:t0 + token_block], best_idx[t0:t0 + token_block], second[t0:t0 + token_block]
            if c0 == 0:  # the first code block sets every row: no filter, no gather
                rows = None
            else:
                # values alone first (amin is ~20x cheaper than min-with-indices on CPU): a row whose
                # block minimum does not beat its runner-up (its best, without second tracking) keeps
                # both, so indices and the block's runner-up are computed only for the rows this block
                # changes, after the first blocks a small share
                rows = (s.amin(dim=1) < (bs if track_second else bb)).nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
            _update(s, rows, bb, bi, bs, c0, track_second)
    return best, best_idx, second


def _update(s, rows, best, best_idx, second, c0, track_second):
    """Fold the score block s (T, C) for codes [c0, c0 + C) into the running best (and runner-up) of
    the rows `rows` of the block (None: all of them, in place, without gathering copies)."""
    def take(t):
        return t if rows is None else t.index_select(0, rows)

    def put(t, value):
        t.copy_(value) if rows is None else t.index_copy_(0, rows, value)

    sub = take(s)
    val, idx = sub.min(dim=1)  # the first of equal minima: the lowest index
    b_old = take(best)
    if track_second:
        sub.scatter_(1, idx.unsqueeze(1), math.inf)
        val2 = sub.amin(dim=1)
        # runner-up of the union of {best, second} and {val, val2}
        put(second, torch.minimum(torch.maximum(b_old, val), torch.minimum(take(second), val2)))
    better = val < b_old  # strict: earlier (lower) index wins ties
    new_idx, new_best = torch.where(better, idx + c0, take(best_idx)), torch.where(better, val, b_old)
    put(best_idx, new_idx)
    put(best, new_best)


def error_bound(x, codes, distance):
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
