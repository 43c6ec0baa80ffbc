"""Exact nearest-code search with bounded memory.

The full tokens x codes distance matrix is never built when it would exceed `memory_budget`
bytes: codes and tokens are processed in blocks with a running best, codes are cast (and
normalised) one block at a time, and one score buffer is reused. Scores are computed in fp32 with
autocast off (bf16/fp16 distances pick the wrong code up to 99% of the time). fp32 can still
mis-order two codes whose distances differ by less than the rounding error of ||e||^2 - 2 x.e,
so the runner-up is tracked too: any row whose best and second-best scores are closer than a
rigorous fp32 error bound is re-searched in fp64. The result equals an fp64 brute-force argmin
except on exact ties (lowest index wins).

That blocked brute force (`blocked_search`) is one of four methods; at small D on CPU (VQGAN-LC's
D' = 8) lcgen's compiled k-d tree with vectorised leaves (`simd_kdtree`) gives the same answer
several times faster, and scipy's k-d tree (`kdtree_search`) is its fallback and the fp64-input
path; on CUDA a fused Triton kernel (`triton_search`) scores tiles in registers with the brute
force's fp32 rounding, so the same fp64 re-check applies. `resolve_method` picks between them by
shape, dtype and device.
"""
from __future__ import annotations

import torch

from .blocked_search import DEFAULT_MEMORY_BUDGET, error_bound, prepare_queries, running_best
from . import simd_kdtree
from .kdtree_search import kdtree_nearest
from .triton_search import fused_running_best, triton_usable

METHODS = ("auto", "brute", "kdtree", "kdtree-simd", "triton")
# "auto" takes lcgen's SIMD k-d tree for l2 on CPU with fp32 (or narrower) inputs, whose conversion
# to fp32 is exact, where it beat the blocked brute force. 8,192 queries against a projected
# Gaussian codebook, the tree rebuilt every call, against K = 64 / 1,024 / 16,384 / 100,000 codes,
# 2-core Zen 5: D = 8: 2.5x / 10.7x / 11.7x / 28x; D = 16: 3.2x / 4.6x / 4.6x / 2.8x; D = 32: 2.0x
# / 3.1x / 2.3x / 1.75x. (Where the tree prunes little, from D = 13 and for small K, the extension
# scores every code in the expanded form, which fuses the argmin into the FMAs the brute force's
# GEMM does; before that scan, on a 2-core Xeon, the tree alone lost to the brute force at D = 16,
# K = 100,000 and D = 32, K >= 16,384.) So: any K up to D = 32, the kernel's limit.
SIMD_KDTREE_MAX_CODES = ((simd_kdtree.MAX_DIM, None),)  # (largest D, largest K there)
SIMD_KDTREE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Otherwise (fp64 inputs, or no compiler) scipy's k-d tree for l2 at D <= KDTREE_MAX_DIM and
# K >= KDTREE_MIN_CODES on CPU. Measured
# on a 2-core CPU, D = 8, 12,544 queries: the tree is 0.3x the brute force at K = 1,024, 0.7x at
# 4,096, 1.4x (synthetic) to 2.8x (trained LC codes) at 16,384, 6x at 50,000, 9x at 100,000.
KDTREE_MAX_DIM = 16
KDTREE_MIN_CODES = 16384
# On CUDA "auto" takes the fused Triton kernel at D <= TRITON_MAX_DIM, where the brute force's cost is
# writing and re-reading its score blocks (16 flops a score at D = 8 against 8 bytes of traffic), and
# the cuBLAS GEMM brute force above it. Not yet measured on a GPU (none was lent): a by-reasoning default.
TRITON_MAX_DIM = 32

__all__ = ["DEFAULT_MEMORY_BUDGET", "METHODS", "nearest_code", "best_row_per_code", "resolve_method"]


def resolve_method(method: str, x: torch.Tensor, codes: torch.Tensor, distance: str) -> str:
    """The search method `nearest_code` runs for these inputs."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "kdtree" and (distance != "l2" or x.device.type != "cpu"):
        raise ValueError("method='kdtree' supports distance='l2' on CPU tensors only")
    if method == "kdtree-simd":
        if distance != "l2" or x.device.type != "cpu":
            raise ValueError("method='kdtree-simd' supports distance='l2' on CPU tensors only")
        if x.dtype not in SIMD_KDTREE_DTYPES or codes.dtype not in SIMD_KDTREE_DTYPES:
            raise ValueError("method='kdtree-simd' searches in fp32 and takes fp32, fp16 or bf16 tensors; got "
                             f"{x.dtype} and {codes.dtype} (method='kdtree' searches fp64 inputs in fp64)")
        if codes.shape[1] > simd_kdtree.MAX_DIM:
            raise ValueError(f"method='kdtree-simd' takes D <= {simd_kdtree.MAX_DIM}, got D = {codes.shape[1]}")
        if not simd_kdtree.available():
            raise ValueError("method='kdtree-simd' needs its C++ extension, which could not be built here "
                             "(a C++ compiler and ninja are needed; see the warning)")
    if method == "triton" and not triton_usable(x.device):
        raise ValueError("method='triton' needs CUDA tensors and the triton package (or TRITON_INTERPRET=1 "
                         f"for CPU tensors); got a {x.device.type} tensor")
    if method != "auto":
        return method
    if x.device.type == "cuda":
        return "triton" if codes.shape[1] <= TRITON_MAX_DIM and triton_usable(x.device) else "brute"
    if distance != "l2" or x.device.type != "cpu":
        return "brute"
    d, k = codes.shape[1], codes.shape[0]
    tree_wins = any(d <= max_d and (max_k is None or k <= max_k) for max_d, max_k in SIMD_KDTREE_MAX_CODES)
    if tree_wins and x.dtype in SIMD_KDTREE_DTYPES and codes.dtype in SIMD_KDTREE_DTYPES and simd_kdtree.available():
        return "kdtree-simd"
    return "kdtree" if d <= KDTREE_MAX_DIM and k >= KDTREE_MIN_CODES else "brute"


def nearest_code(x: torch.Tensor, codes: torch.Tensor, distance: str = "l2",
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, exact: bool = True, method: str = "auto") -> torch.Tensor:
    """Index of the nearest code for every row of x.

    x: (N, D) float, codes: (K, D) float. distance: "l2" (squared Euclidean) or "cos" (largest
    cosine similarity). Returns int64 (N,). Extra memory is about `memory_budget` bytes plus
    O(N) (plus a normalised copy of x for 'cos'; plus the tree for "kdtree"; for "kdtree-simd", the
    tree, or the flat scan's two layouts, and a copy of the codes, two to three times the codebook,
    kept for the last two codebooks).
    exact=False skips the fp64 re-check. method: "brute" scores every code; "kdtree" searches
    scipy's k-d tree in fp64 (`kdtree_search`; l2 on CPU), with the same answer; "kdtree-simd"
    lcgen's compiled k-d tree in fp32 (`simd_kdtree`; l2 on CPU, fp32/fp16/bf16 inputs, D <= 32),
    with the same answer; "triton" the fused
    kernel (`triton_search`; CUDA, or CPU under TRITON_INTERPRET=1), with the same answer; "auto"
    picks by shape and device (`resolve_method`).
    """
    if distance not in ("l2", "cos"):
        raise ValueError(f"distance must be 'l2' or 'cos', got {distance!r}")
    if x.ndim != 2 or codes.ndim != 2 or x.shape[1] != codes.shape[1]:
        raise ValueError(f"expected x (N, D) and codes (K, D), got {tuple(x.shape)} and {tuple(codes.shape)}")
    asked = method
    method = resolve_method(method, x, codes, distance)
    with torch.autocast(device_type=x.device.type, enabled=False), torch.no_grad():
        codes = codes.detach()
        if method == "kdtree":  # fp64 distances from the queries as given
            idx, unsure = kdtree_nearest(x.detach(), codes, prove=exact)
        elif method == "kdtree-simd":  # fp32 distances from the queries as given (exactly convertible)
            try:
                idx, unsure = simd_kdtree.simd_kdtree_nearest(x.detach(), codes)
            except simd_kdtree.NonFiniteCodes:
                if asked != "auto":
                    raise
                method = "brute"  # a diverged codebook: the tree refuses NaN/inf codes, the brute force ranks them
        if method not in ("kdtree", "kdtree-simd"):
            x32 = prepare_queries(x.detach(), distance)
            if method == "triton":
                best, idx, second = fused_running_best(x32, codes, distance, track_second=exact)
            else:
                best, idx, second = running_best(x32, codes, distance, memory_budget, track_second=exact)
            # Every fp32 score is within `bound` of the exact one; a gap above 2*bound proves the winner.
            unsure = (second - best) <= 2 * error_bound(x32, codes, distance) if exact and codes.shape[0] > 1 else None
        if exact and unsure is not None and unsure.any():
            rows = unsure.nonzero().squeeze(1)
            x64 = prepare_queries(x.detach()[rows], distance, torch.float64)
            _, idx64, _ = running_best(x64, codes, distance, memory_budget, track_second=False)
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
        score, idx, _ = running_best(queries, features.detach(), distance, memory_budget, generator,
                                      track_second=False)
    return -score, idx
