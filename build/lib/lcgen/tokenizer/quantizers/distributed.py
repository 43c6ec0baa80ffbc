"""Data-parallel helpers for stateful quantizers.

Every stateful update (EMA statistics, CVQ usage, anchors) goes through these so that all ranks
end a step with the same codebook. They are no-ops when torch.distributed is not initialised.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (and return it)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate the rows of `tensor` from every rank, in rank order; ranks may differ in rows."""
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    count = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    longest = max(counts)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[:c] for g, c in zip(gathered, counts)], dim=0)


def best_across_ranks(score: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """For each entry i, return rows[i] from the rank whose score[i] is highest (lowest rank on ties).

    score: (K,) float, rows: (K, D). Every rank gets the same answer.
    """
    if not is_distributed():
        return rows
    world = dist.get_world_size()
    scores = [torch.empty_like(score) for _ in range(world)]
    dist.all_gather(scores, score.contiguous())
    all_rows = [torch.empty_like(rows) for _ in range(world)]
    dist.all_gather(all_rows, rows.contiguous())
    winner = torch.stack(scores).argmax(dim=0)  # (K,) first maximum = lowest rank
    stacked = torch.stack(all_rows)  # (world, K, D)
    return stacked[winner, torch.arange(rows.shape[0], device=rows.device)]
