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


@torch.no_grad()
def kmeans_plus_plus(points: torch.Tensor, num_centres: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability
    proportional to its squared distance to the nearest centre chosen so far. (num_centres, D) float32."""
    x = points.float()
    n = x.shape[0]
    if not 0 < num_centres <= n:
        raise ValueError(f"need 0 < num_centres <= number of points, got {num_centres} centres for {n} points")
    # inverse-CDF draws on the points' device: one uniform from the seeded CPU generator per centre, no
    # host sync and no copy of the N distances per centre (on a GPU, K = 100,000 centres means 100,000 draws)
    u = torch.rand(num_centres, generator=generator, dtype=torch.float64).to(x.device)
    chosen = torch.empty(num_centres, dtype=torch.long, device=x.device)
    chosen[0] = (u[0] * n).long().clamp(max=n - 1)
    nearest = (x - x[chosen[0]]).pow(2).sum(1)  # squared distance to the nearest chosen centre
    for i in range(1, num_centres):
        cdf = nearest.double().cumsum(0)
        # a zero total (every point on a chosen centre) draws index 0: any point will do then
        chosen[i] = torch.searchsorted(cdf, u[i] * cdf[-1], right=True).clamp(max=n - 1)
        nearest = torch.minimum(nearest, (x - x[chosen[i]]).pow(2).sum(1))
    return x[chosen].clone()


class MiniBatchKMeans:
    """Mini-batch k-means (Sculley 2010) that can be fed a stream: `initialise` with k-means++ on a first
    sample, then `partial_fit` batch after batch (each centre moves to the running mean of the points it
    has been assigned, a per-centre step of 1/count), and `end_epoch` re-seeds the centres no point
    reached in that pass with the worst-fitted points of the last batch. Only the centres, their counts
    and one batch are ever in memory."""

    def __init__(self, num_centres: int, seed: int = 0, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        if num_centres <= 0:
            raise ValueError(f"num_centres must be > 0, got {num_centres}")
        self.num_centres, self.memory_budget = num_centres, memory_budget
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.centres = self.counts = self.epoch_counts = None
        self.reseeded = 0  # centres re-seeded so far (empty clusters)
        self._last_batch = None

    def initialise(self, sample: torch.Tensor) -> None:
        _check_points(sample)
        self.centres = kmeans_plus_plus(sample, self.num_centres, self.generator)
        self.counts = torch.zeros(self.num_centres, dtype=torch.float64, device=self.centres.device)
        self.epoch_counts = torch.zeros_like(self.counts)

    def partial_fit(self, batch: torch.Tensor) -> None:
        if self.centres is None:
            raise RuntimeError("initialise the centres (k-means++ on a first sample) before partial_fit")
        _check_points(batch)
        x = batch.float().to(self.centres.device)
        assign = nearest_code(x, self.centres, "l2", self.memory_budget, exact=False)
        n = torch.bincount(assign, minlength=self.num_centres).double()
        sums = torch.zeros_like(self.centres, dtype=torch.float64).index_add_(0, assign, x.double())
        hit = n > 0
        self.counts += n
        # running mean with the moving centre: c += (sum - n c) / count
        step = (sums[hit] - n[hit, None] * self.centres[hit].double()) / self.counts[hit, None]
        self.centres[hit] += step.float()
        self.epoch_counts += n
        self._last_batch = (x, assign)

    def end_epoch(self) -> int:
        """Re-seed the centres that no point reached in this pass; returns how many."""
        empty = (self.epoch_counts == 0).nonzero().squeeze(1)
        if empty.numel() and self._last_batch is not None:
            x, assign = self._last_batch
            err = (x - self.centres[assign]).pow(2).sum(1)
            take = err.topk(min(empty.numel(), len(x))).indices
            self.centres[empty[:len(take)]] = x[take]
            self.counts[empty[:len(take)]] = 0
            self.reseeded += len(take)
        self.epoch_counts.zero_()
        return int(empty.numel())


def _check_points(points: torch.Tensor) -> None:
    if points.ndim != 2:
        raise ValueError(f"points must be (N, D), got {tuple(points.shape)}")
    if not torch.isfinite(points).all():
        raise ValueError("points contain NaN or inf")


def minibatch_kmeans(points: torch.Tensor, num_centres: int, epochs: int = 3, batch_size: int = 4096,
                     seed_points: int | None = None, seed: int = 0,
                     memory_budget: int = DEFAULT_MEMORY_BUDGET) -> MiniBatchKMeans:
    """Mini-batch k-means of in-memory `points` (N, D): k-means++ on a random sample of `seed_points`
    (default min(N, max(4 K, 10,000))), then `epochs` shuffled passes of `batch_size` points. Returns
    the fitted MiniBatchKMeans (`.centres`, `.reseeded`)."""
    _check_points(points)
    n = points.shape[0]
    if not 0 < num_centres <= n:
        raise ValueError(f"need 0 < num_centres <= number of points, got {num_centres} centres for {n} points")
    km = MiniBatchKMeans(num_centres, seed, memory_budget)
    order = torch.randperm(n, generator=km.generator).to(points.device)
    m = min(n, seed_points or max(4 * num_centres, 10_000))
    km.initialise(points[order[:max(m, num_centres)]])
    for _ in range(epochs):
        order = torch.randperm(n, generator=km.generator).to(points.device)
        for i in range(0, n, batch_size):
            km.partial_fit(points[order[i:i + batch_size]])
        km.end_epoch()
    return km
