"""Dead-code pull: CVQ-VAE's revival mirrored for a codebook whose codes cannot move one by one.

CVQ moves each rarely used code towards its anchor, the batch feature closest to it. VQGAN-LC's
codes are a frozen table seen through one shared projector, so no code can move alone; instead each
rarely used code pulls its anchor towards itself, through the encoder's gradient:

  N_k, alpha_k                 CVQ's running usage and rate (`online_clustering`), ~1 for a dead code
  r(k) = argmin_n ||z_n - e_k||  the batch latent closest to code k (exact search, codes as queries);
                               a latent chosen by several codes answers only the closest of them
  loss = w * sum_k alpha_k * ||z_r(k) - sg(e_k)||^2 / (N * d)
  ("code-pull": the same loss with sg on the latent, so the codes, i.e. VQGAN-LC's projector, move)

Normalised by the N latents of the batch (and d), one dead code's pull weighs as much as one latent's
commitment term, so a dead code is revived when its closest latent crosses into its cell; codes in
use (alpha ~ 0) pull nothing. An lcgen option, not in VQGAN-LC's code. Under data parallelism the
usage is summed over ranks (every rank sees the same dead codes) and each rank pulls its own closest
latent; DDP averages the gradients.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .online_clustering import revival_rate, update_running_usage
from .search import nearest_code

# which side the pull's gradient moves: the latents (the encoder) or the codes (for VQGAN-LC, the projector)
MOVES = ("latents", "codes")
DEAD_RATE = 1e-3  # codes with alpha below this pull nothing (skipped from the search)


class DeadCodePull(nn.Module):
    def __init__(self, num_codebooks: int, codebook_size: int, decay: float = 0.99, distance: str = "l2",
                 weight: float = 1.0, move: str = "latents", sync_distributed: bool = True):
        super().__init__()
        if move not in MOVES:
            raise ValueError(f"move must be one of {MOVES}, got {move!r}")
        self.decay, self.distance, self.weight, self.sync_distributed = decay, distance, weight, sync_distributed
        self.move = move
        self.register_buffer("usage", torch.zeros(num_codebooks, codebook_size))
        self.dead_fraction = None  # share of codes pulling at the last training batch (logged by the training loop)

    def loss(self, codebook: torch.Tensor, groups) -> torch.Tensor:
        """codebook: (G, K, d); groups: list over codebooks of (latents (n, d) with their gradient,
        indices (n,)). Updates the running usage, then returns the pull loss (a scalar)."""
        with torch.no_grad():
            update_running_usage(self.usage, [(None, inds) for _, inds in groups], self.decay, self.sync_distributed)
            alpha = revival_rate(self.usage, self.decay)  # (G, K)
            self.dead_fraction = (alpha > DEAD_RATE).float().mean()
        total, count = codebook.new_zeros(()), 0
        for i, (latents, _) in enumerate(groups):
            count += latents.numel()
            dead = (alpha[i] > DEAD_RATE).nonzero().squeeze(1)
            if dead.numel() == 0 or latents.shape[0] == 0:
                continue
            codes = codebook[i, dead]  # (k, d)
            # the codes are the queries and the latents the table: the exact search of the lookup
            rows = nearest_code(codes.detach(), latents.detach(), self.distance)  # (k,)
            if self.move == "latents":
                gap = (latents[rows] - codes.detach()).pow(2).sum(1)  # (k,)
            else:
                gap = (latents[rows].detach() - codes).pow(2).sum(1)
            # each latent answers one dead code only, the closest of those that chose it (ties: the lowest
            # code index, by the stable sort): pulled towards several it would settle between them, in
            # none of their cells
            order = torch.sort(gap.detach(), stable=True).indices
            first = rows.new_full((latents.shape[0],), len(rows)).scatter_reduce(
                0, rows[order], torch.arange(len(rows), device=rows.device), "amin")  # per latent: rank in order
            keep = order[first[first < len(rows)]]
            total = total + (alpha[i, dead[keep]] * gap[keep]).sum()
        return self.weight * total / max(count, 1)
