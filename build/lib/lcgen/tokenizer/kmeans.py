"""Lloyd's k-means that scales to 100,000 centres: assignment uses the chunked nearest-code search
(no points x centres matrix), updates use bincount/index_add, and empty clusters are re-seeded with
the points farthest from their centres. Runs on whatever device `points` is on (GPU when present)."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .quantizers.search import DEFAULT_MEMORY_BUDGET, nearest_code


def kmeans(points: torch.Tensor, num_centres: int, iters: int = 20, seed: int = 0,
           memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool = False) -> torch.Tensor:
    """Cluster `points` (N, D) into `num_centres` centres (num_centres, D), float32."""
    if points.ndim != 2:
        raise ValueError(f"points must be (N, D), got {tuple(points.shape)}")
    n = points.shape[0]
    if not 0 < num_centres <= n:
        raise ValueError(f"need 0 < num_centres <= number of points, got {num_centres} centres for {n} points")
    if not torch.isfinite(points).all():
        raise ValueError("points contain NaN or inf")
    x = points.float()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    centres = x[torch.randperm(n, generator=gen)[:num_centres].to(x.device)].clone()
    for _ in tqdm(range(iters), desc="k-means", disable=not progress):
        assign = nearest_code(x, centres, "l2", memory_budget, exact=False)
        counts = torch.bincount(assign, minlength=num_centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled].unsqueeze(1).float()
        empty = (~filled).nonzero().squeeze(1)
        if empty.numel():
            # re-seed empty clusters with the worst-fitted points (splits the widest clusters)
            err = (x - centres[assign]).pow(2).sum(1)
            centres[empty] = x[err.topk(empty.numel()).indices]
    return centres
