"""VQGAN-EMA codebook: code vectors are exponential moving averages of their assigned features."""
from __future__ import annotations

import torch
import torch.nn as nn

from .distributed import all_reduce_sum


class EMACodebook(nn.Module):
    """cluster_size <- d*cluster_size + (1-d)*n_k; embed_avg <- d*embed_avg + (1-d)*sum z;
    embed = embed_avg / Laplace-smoothed cluster_size (taming / VQGAN-LC, decay 0.99, eps 1e-5).
    Counts and sums are all-reduced first, so every rank computes the same codebook."""

    def __init__(self, num_codebooks: int, codebook_size: int, code_dim: int, decay: float = 0.99,
                 eps: float = 1e-5, sync_distributed: bool = True):
        super().__init__()
        self.decay, self.eps, self.sync_distributed = decay, eps, sync_distributed
        embed = torch.empty(num_codebooks, codebook_size, code_dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.zeros(num_codebooks, codebook_size))  # taming: zeros
        self.register_buffer("embed_avg", embed.clone())

    def weight(self) -> torch.Tensor:
        return self.embed

    @torch.no_grad()
    def update(self, groups) -> None:
        """groups: list over codebooks of (features (n, d), indices (n,))."""
        g, k, d = self.embed.shape
        counts = self.embed.new_zeros(g, k)
        sums = self.embed.new_zeros(g, k, d)
        for i, (feats, inds) in enumerate(groups):
            counts[i] = torch.bincount(inds, minlength=k).float()
            sums[i].index_add_(0, inds, feats.float())
        if self.sync_distributed:
            stats = all_reduce_sum(torch.cat([counts.unsqueeze(-1), sums], dim=-1))
            counts, sums = stats[..., 0], stats[..., 1:]
        self.cluster_size.lerp_(counts, 1 - self.decay)
        self.embed_avg.lerp_(sums, 1 - self.decay)
        self.embed.copy_(self.embed_avg / self.smoothed_cluster_size().unsqueeze(-1))

    def smoothed_cluster_size(self) -> torch.Tensor:
        n = self.cluster_size.sum(-1, keepdim=True)
        return (self.cluster_size + self.eps) / (n + self.cluster_size.shape[-1] * self.eps) * n

    @torch.no_grad()
    def assign(self, new: torch.Tensor) -> None:
        """Overwrite code vectors (online clustering) and keep embed_avg consistent with them, so
        the next EMA step does not pull a revived code back (espnet#6284)."""
        self.embed.copy_(new)
        self.embed_avg.copy_(new * self.smoothed_cluster_size().unsqueeze(-1))
