"""CVQ-VAE online clustered codebook (Zheng & Vedaldi 2023), also LooC's revival.

Inside each training forward, after the batch is quantised with the current codebook:
  N_k <- gamma*N_k + (1-gamma)*n_k/N          running usage (n_k: batch count of code k)
  alpha_k = exp(-N_k*K*10/(1-gamma) - 1e-3)   near 1 for unused codes, near 0 at uniform usage
  e_k <- (1-alpha_k)*e_k + alpha_k*anchor_k   every code, no dead-code threshold
Anchors come from the raw, detached batch features:
  closest    the feature most similar to code k (under the lookup distance)
  probrandom a feature sampled from softmax over features of their similarity to code k
  random     entry k of a ring pool of past features (CVQ's FeaturePool)
Under data parallelism counts are all-reduced and the winning anchor is chosen across ranks
(random pools are fed by all ranks' features and sampled with a generator seeded identically), so
every rank ends the step with the same codebook.
"""
from __future__ import annotations


import torch
import torch.nn as nn

from .distributed import all_gather_rows, all_reduce_sum, best_across_ranks, is_distributed
from .search import best_row_per_code

ANCHORS = ("closest", "random", "probrandom")


def update_running_usage(usage: torch.Tensor, groups, decay: float, sync_distributed: bool) -> None:
    """N_k <- gamma*N_k + (1-gamma)*n_k/N in place, per codebook; usage: (G, K); groups: list over
    codebooks of (features, indices (n,)). Counts are summed over data-parallel ranks first."""
    g, k = usage.shape
    counts = usage.new_zeros(g, k + 1)  # last column: number of features
    for i, (_, inds) in enumerate(groups):
        counts[i, :k] = torch.bincount(inds, minlength=k).float()
        counts[i, k] = inds.numel()
    if sync_distributed:
        all_reduce_sum(counts)
    usage.mul_(decay).add_(counts[:, :k] / counts[:, k:].clamp_min(1), alpha=1 - decay)


def revival_rate(usage: torch.Tensor, decay: float) -> torch.Tensor:
    """CVQ's alpha_k = exp(-N_k*K*10/(1-gamma) - 1e-3): ~1 for a code unused for a few hundred steps,
    ~0 for one used at anything near the uniform rate 1/K."""
    return torch.exp(-usage * usage.shape[-1] * 10 / (1 - decay) - 1e-3)


class OnlineClustering(nn.Module):
    def __init__(self, num_codebooks: int, codebook_size: int, code_dim: int, decay: float = 0.99,
                 anchor: str = "closest", distance: str = "cos", seed: int = 0, sync_distributed: bool = True):
        super().__init__()
        self.decay, self.anchor, self.distance = decay, anchor, distance
        self.seed, self.sync_distributed = seed, sync_distributed
        self.register_buffer("usage", torch.zeros(num_codebooks, codebook_size))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        if anchor == "random":
            pool = (torch.rand(num_codebooks, codebook_size, code_dim) * 2 - 1) / codebook_size
            self.register_buffer("pool", pool)
            self.register_buffer("pool_filled", torch.zeros(num_codebooks, dtype=torch.long))

    def alpha(self) -> torch.Tensor:
        return revival_rate(self.usage, self.decay)

    def _generator(self, device, per_rank: bool) -> torch.Generator:
        rank = torch.distributed.get_rank() if (per_rank and is_distributed()) else 0
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed * 1_000_003 + int(self.steps) * 1009 + rank)
        return gen

    @torch.no_grad()
    def step(self, codebook: torch.Tensor, groups) -> torch.Tensor:
        """codebook: (G, K, d) before the update; groups: list over codebooks of (features (n, d),
        indices (n,)). Updates the running usage and returns the revived codebook (G, K, d)."""
        update_running_usage(self.usage, groups, self.decay, self.sync_distributed)
        alpha = self.alpha().unsqueeze(-1)
        anchors = torch.stack([self._anchors(i, codebook[i], feats) for i, (feats, _) in enumerate(groups)])
        self.steps += 1
        return codebook.float() * (1 - alpha) + anchors * alpha

    def _anchors(self, group: int, codes: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        feats = feats.detach().float()
        sync = self.sync_distributed and is_distributed()
        if self.anchor == "random":
            if sync:
                feats = all_gather_rows(feats)
            return self._query_pool(group, feats)
        gen = self._generator(feats.device, per_rank=True) if self.anchor == "probrandom" else None
        score, rows = best_row_per_code(feats, codes, self.distance, generator=gen)
        anchors = feats[rows]
        if sync:
            anchors = best_across_ranks(score, anchors)
        return anchors

    def _query_pool(self, group: int, feats: torch.Tensor) -> torch.Tensor:
        """CVQ's FeaturePool.query: fill the pool, then replace random entries with new features."""
        pool, k = self.pool[group], self.pool.shape[1]
        gen = self._generator(feats.device, per_rank=False)  # identical on every rank
        n = feats.shape[0]
        if n > k:
            pool.copy_(feats[torch.randint(0, n, (k,), generator=gen, device=feats.device)])
            self.pool_filled[group] = k
        elif self.pool_filled[group] < k:
            start = int(self.pool_filled[group])
            take = min(n, k - start)
            pool[start:start + take] = feats[:take]
            self.pool_filled[group] = start + take
        else:
            slots = torch.randperm(k, generator=gen, device=feats.device)[:n]
            pool[slots] = feats
        return pool.clone()
