"""Fused nearest-code search in Triton: the (tokens x codes) score matrix never leaves the chip.

One program takes a block of query rows and walks the whole codebook a tile at a time: the tile's
scores (||e||^2 - 2 x.e for 'l2', -x.e for 'cos') are a `tl.dot` in true fp32 (no TF32, so the
rounding is the blocked search's and `blocked_search.error_bound` still bounds it), folded into the
row's running best, its index and its runner-up in registers, and dropped. Memory beyond a contiguous
fp32 copy of the codes is O(N + K): the brute force instead writes and re-reads every score, which
at VQGAN-LC's D' = 8 costs more than the 16 flops each score takes. `search.nearest_code` proves or re-checks the winners in fp64 as for the
brute force, so the answer is the same.

Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (Triton's interpreter; how the
tests check it without a GPU).
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

BLOCK_N = 64  # query rows per program
BLOCK_K = 128  # codes per tile


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def triton_usable(device: torch.device) -> bool:
    """Whether the fused kernel can run on tensors of this device: CUDA with Triton installed, or
    any device's CPU tensors under the interpreter."""
    if not triton_importable():
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


@functools.lru_cache(maxsize=None)
def _kernel(interpret: bool):
    """The jitted kernel, built on first use (and once per interpreter setting, which Triton reads
    when a function is decorated)."""
    import triton
    import triton.language as tl

    @triton.jit
    def nearest_code_kernel(x_ptr, c_ptr, norm_ptr, best_ptr, idx_ptr, second_ptr, n, k, d,
                            stride_x, stride_c, COS: tl.constexpr, TRACK_SECOND: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
        rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < n
        lanes = tl.arange(0, BLOCK_K)
        best = tl.full((BLOCK_N,), float("inf"), tl.float32)
        second = tl.full((BLOCK_N,), float("inf"), tl.float32)
        best_idx = tl.zeros((BLOCK_N,), tl.int64)
        for k0 in range(0, k, BLOCK_K):
            cols = k0 + lanes.to(tl.int64)
            col_ok = cols < k
            dots = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
            for d0 in range(0, d, BLOCK_D):
                dims = d0 + tl.arange(0, BLOCK_D)
                dim_ok = dims < d
                xb = tl.load(x_ptr + rows[:, None] * stride_x + dims[None, :],
                             mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
                cb = tl.load(c_ptr + cols[None, :] * stride_c + dims[:, None],
                             mask=dim_ok[:, None] & col_ok[None, :], other=0.0)  # (BLOCK_D, BLOCK_K)
                dots = tl.dot(xb, cb, dots, input_precision="ieee")
            if COS:
                s = -dots
            else:
                s = tl.load(norm_ptr + cols, mask=col_ok, other=0.0)[None, :] - 2.0 * dots
            s = tl.where(col_ok[None, :], s, float("inf"))
            val = tl.min(s, axis=1)
            arg = tl.argmin(s, axis=1, tie_break_left=True)  # the lowest index among equal minima
            if TRACK_SECOND:
                rest = tl.min(tl.where(lanes[None, :] == arg[:, None], float("inf"), s), axis=1)
                # runner-up of the union of {best, second} and {val, rest}
                second = tl.minimum(tl.maximum(best, val), tl.minimum(second, rest))
            better = val < best  # strict: an earlier tile wins ties
            best_idx = tl.where(better, arg.to(tl.int64) + k0, best_idx)
            best = tl.where(better, val, best)
        tl.store(best_ptr + rows, best, mask=row_ok)
        tl.store(idx_ptr + rows, best_idx, mask=row_ok)
        if TRACK_SECOND:
            tl.store(second_ptr + rows, second, mask=row_ok)

    return nearest_code_kernel


def fused_running_best(x: torch.Tensor, codes: torch.Tensor, distance: str, track_second: bool = True):
    """The blocked search's (best score, best index, runner-up score) for prepared fp32 queries x
    (N, D) (l2-normalised for 'cos') against raw codes (K, D), in one fused kernel."""
    if not triton_usable(x.device):
        raise RuntimeError("the fused Triton search needs a CUDA tensor and Triton, or TRITON_INTERPRET=1 on CPU")
    x = x.float().contiguous()
    c = codes.float()
    if distance == "cos":
        c = F.normalize(c, dim=-1)
    c = c.contiguous()
    n, d = x.shape
    k = c.shape[0]
    norms = c.pow(2).sum(-1) if distance == "l2" else c.new_empty(1)
    best = x.new_empty(n)
    idx = torch.empty(n, dtype=torch.long, device=x.device)
    second = x.new_full((n,), float("inf"))
    block_d = max(16, min(64, 1 << (d - 1).bit_length()))  # tl.dot needs >= 16 along each side
    grid = (max(1, -(-n // BLOCK_N)),)
    _kernel(interpreting())[grid](x, c, norms, best, idx, second, n, k, d, x.stride(0), c.stride(0),
                                  COS=distance == "cos", TRACK_SECOND=track_second,
                                  BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, BLOCK_D=block_d)
    return best, idx, second
