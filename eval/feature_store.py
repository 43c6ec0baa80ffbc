"""Features of an image set on disk, in shards, with streaming statistics — the unit of resumption
and caching for every FID-style evaluation.

A store is a folder: `meta.json` (what the features are of: the source, the feature extractor with
its weights digest, the layers, the shard size), `shard-NNNNN.npz` (float32 features of images
[s * shard_size, (s + 1) * shard_size), one array per layer, written atomically) and, once complete,
`stats-<layer>.npz` (mu, sigma in float64, n, and the same meta). A rerun computes only the missing
shards; a store whose meta differs from the requested one is stale and is emptied with a warning,
never reused. Ranks of a multi-process run take shards s = rank, rank + W, ...

Memory is flat in the number of images: FID statistics are accumulated shard by shard in float64
(sum and sum of outer products, shifted by the first shard's mean against cancellation); IS/KID/PR,
defined on a feature matrix, load it, or for a large reference only a fixed-seed uniform subset of
its rows (`uniform_subset`, as ADM's 10,000-image reference batches).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

SHARD = "shard-{:05d}.npz"
LOCK = ".lock"
SUBSET_SEED = 0
CLASS_STATS_BYTES = 2 << 30  # float64 accumulators held at once by class_statistics (2 GiB: 64 classes at D = 2048)


def unique_tmp(path: str, suffix: str = ".tmp") -> str:
    """A temporary name beside `path` that no other process or run uses (renamed over `path` when done)."""
    return f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def uniform_subset(n: int, size: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """`size` sorted indices drawn without replacement, uniformly over range(n), by a fixed seed: a
    subset of a class-sorted split holds every class in proportion (the first `size` would not)."""
    if size <= 0:
        raise ValueError(f"subset size must be > 0, got {size}")
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


class StreamingStats:
    """mean and unbiased covariance (np.cov convention) of rows, accumulated in float64."""

    def __init__(self):
        self.n, self.shift, self.s1, self.s2 = 0, None, None, None

    def update(self, rows: np.ndarray) -> None:
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be (N, D), got {x.shape}")
        if self.shift is None:
            self.shift = x.mean(0)
            self.s1, self.s2 = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        x = x - self.shift
        self.n += len(x)
        self.s1 += x.sum(0)
        self.s2 += x.T @ x

    def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 images, got {self.n}")
        m = self.s1 / self.n
        sigma = (self.s2 - self.n * np.outer(m, m)) / (self.n - 1)
        return m + self.shift, (sigma + sigma.T) / 2


def rank_deficiency_warning(n: int, dim: int) -> str | None:
    if n <= dim:
        return (f"{n} images for {dim}-dimensional features: the covariance is rank-deficient (needs more than "
                f"{dim}), so FID is biased upward and not comparable to published values (those use 50,000)")
    return None


class FeatureStore:
    def __init__(self, folder: str, meta: dict, num_items: int, shard_size: int = 1000):
        if num_items <= 0:
            raise ValueError(f"nothing to extract features from ({num_items} images)")
        if shard_size <= 0:
            raise ValueError(f"shard_size must be > 0, got {shard_size}")
        self.folder = folder
        self.meta = json.loads(json.dumps({**meta, "num_items": num_items, "shard_size": shard_size}))
        self.num_items, self.shard_size = num_items, shard_size
        self.num_shards = -(-num_items // shard_size)

    # -- locking: many runs may share a cached reference -------------------------------------------
    @contextlib.contextmanager
    def _lock(self, mode: int):
        """flock on <folder>/.lock (never deleted: emptying a stale folder keeps it); yields whether
        the lock was taken (always, unless mode has LOCK_NB and another run holds it)."""
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(os.path.join(self.folder, LOCK), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def in_use(self):
        """Hold for a whole run (shared): other runs may add shards and read, none deletes or empties."""
        return self._lock(fcntl.LOCK_SH)

    # -- layout -------------------------------------------------------------------------------
    def prepare(self) -> bool:
        """Create the folder or check it; returns False (after emptying it) when it was stale.
        Call on one process only, before the others touch the store. Exclusive: waits for any
        other run that holds the store (`in_use`) before emptying it."""
        with self._lock(fcntl.LOCK_EX):
            path = os.path.join(self.folder, "meta.json")
            fresh = True
            if os.path.isfile(path):
                with open(path) as f:
                    old = json.load(f)
                if old == self.meta:
                    return True
                changed = sorted(k for k in set(old) | set(self.meta) if old.get(k) != self.meta.get(k))
                warnings.warn(f"stale features in {self.folder} (changed: {', '.join(changed)}): recomputing them")
                for name in os.listdir(self.folder):
                    if name != LOCK:
                        entry = os.path.join(self.folder, name)
                        shutil.rmtree(entry) if os.path.isdir(entry) else os.remove(entry)
                fresh = False
            tmp = unique_tmp(path)
            with open(tmp, "w") as f:
                json.dump(self.meta, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
            return fresh

    def shard_path(self, s: int) -> str:
        return os.path.join(self.folder, SHARD.format(s))

    def shard_range(self, s: int) -> range:
        return range(s * self.shard_size, min((s + 1) * self.shard_size, self.num_items))

    def missing_shards(self, rank: int = 0, world: int = 1) -> list[int]:
        return [s for s in range(rank, self.num_shards, world) if not os.path.isfile(self.shard_path(s))]

    def stats_path(self, layer: str) -> str:
        return os.path.join(self.folder, f"stats-{layer}.npz")

    def has_statistics(self, layer: str) -> bool:
        """A statistics file of this very meta is on disk (no shard needed to answer)."""
        path = self.stats_path(layer)
        if not os.path.isfile(path):
            return False
        with np.load(path) as z:
            return str(z["meta"]) == json.dumps(self.meta, sort_keys=True)

    # -- extraction ---------------------------------------------------------------------------
    @torch.no_grad()
    def extract(self, dataset, extractor, layers: list[str], batch_size: int, rank: int = 0, world: int = 1,
                batch_fn=None, num_workers: int = 0, device="cpu", progress: bool = True) -> int:
        """Compute this rank's missing shards; batch_fn maps a uint8 batch on `device` to the uint8
        images whose features are wanted (e.g. a tokenizer's reconstructions). Returns shards made."""
        todo = self.missing_shards(rank, world)
        for s in tqdm(todo, desc=f"features of {self.folder}", disable=not progress or not todo):
            loader = DataLoader(Subset(dataset, list(self.shard_range(s))), batch_size=batch_size,
                                num_workers=num_workers)
            parts = {layer: [] for layer in layers}
            for batch in loader:
                batch = batch.to(device)
                if batch_fn is not None:
                    batch = batch_fn(batch)
                for layer, feats in zip(layers, extractor(batch)):
                    parts[layer].append(feats.float().cpu().numpy())
            tmp = unique_tmp(self.shard_path(s), ".tmp.npz")  # two runs may make the same shard at once
            np.savez(tmp, **{layer: np.concatenate(p) for layer, p in parts.items()})
            os.replace(tmp, self.shard_path(s))
        return len(todo)

    # -- reading ------------------------------------------------------------------------------
    def _shards(self, layer: str):
        for s in range(self.num_shards):
            path = self.shard_path(s)
            if not os.path.isfile(path):
                raise ValueError(f"{path} is missing: the features of {self.folder} are incomplete")
            with np.load(path) as z:
                if layer not in z.files:
                    raise ValueError(f"{path} has no {layer!r} features (it has {z.files})")
                rows = z[layer]
            if len(rows) != len(self.shard_range(s)):
                raise ValueError(f"{path} holds {len(rows)} rows, expected {len(self.shard_range(s))}")
            yield rows

    def statistics(self, layer: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(mu, sigma, n) in float64, cached in stats-<layer>.npz; computed shard by shard."""
        path = self.stats_path(layer)
        if self.has_statistics(layer):
            with np.load(path) as z:
                return z["mu"].astype(np.float64), z["sigma"].astype(np.float64), int(z["n"])
        if os.path.isfile(path):
            warnings.warn(f"{path} was made from other features: recomputing it")
        acc = StreamingStats()
        for rows in self._shards(layer):
            acc.update(rows)
        mu, sigma = acc.mu_sigma()
        tmp = unique_tmp(path, ".tmp.npz")
        np.savez(tmp, mu=mu, sigma=sigma, n=acc.n, meta=json.dumps(self.meta, sort_keys=True))
        os.replace(tmp, path)
        return mu, sigma, acc.n

    def class_statistics(self, layer: str, labels: np.ndarray, max_bytes: int = CLASS_STATS_BYTES) -> dict:
        """{class: (mu, sigma, n)} in float64 for every class in `labels` (one per item, in item order)
        with at least 2 items ({class: (None, None, n)} for the others). Classes are taken in groups
        whose D x D accumulators fit `max_bytes`, one pass over the shards per group: memory is flat in
        the number of classes and of items (1,000 ImageNet classes at D = 2048: 16 passes)."""
        labels = np.asarray(labels)
        if labels.shape != (self.num_items,):
            raise ValueError(f"{len(labels)} labels for the {self.num_items} items of {self.folder}")
        dim = next(self._shards(layer)).shape[1]
        classes = np.unique(labels).tolist()
        group = max(1, int(max_bytes) // (8 * dim * dim))
        out = {}
        for start in range(0, len(classes), group):
            accs = {c: StreamingStats() for c in classes[start:start + group]}
            for s, rows in enumerate(self._shards(layer)):
                shard_labels = labels[s * self.shard_size:s * self.shard_size + len(rows)]
                for c, acc in accs.items():
                    mask = shard_labels == c
                    if mask.any():
                        acc.update(rows[mask])
            out.update({c: (*acc.mu_sigma(), acc.n) if acc.n >= 2 else (None, None, acc.n) for c, acc in accs.items()})
        return out

    def features(self, layer: str, rows: np.ndarray | None = None) -> torch.Tensor:
        """The (N, D) float32 matrix (for IS/KID/PR), or only its sorted `rows`, gathered shard by shard
        (memory: the rows asked for)."""
        if rows is None:
            return torch.from_numpy(np.concatenate(list(self._shards(layer))))
        parts = []
        for s, shard in enumerate(self._shards(layer)):
            lo, hi = np.searchsorted(rows, [s * self.shard_size, (s + 1) * self.shard_size])
            parts.append(shard[rows[lo:hi] - s * self.shard_size].copy())
        return torch.from_numpy(np.concatenate(parts))

    def drop_shards(self) -> bool:
        """Free the disk once the statistics are written (a later KID/PR recomputes them), unless
        another run holds the store (`in_use`): then nothing is deleted. Returns whether it dropped."""
        with self._lock(fcntl.LOCK_EX | fcntl.LOCK_NB) as taken:
            if not taken:
                return False
            for s in range(self.num_shards):
                if os.path.isfile(self.shard_path(s)):
                    os.remove(self.shard_path(s))
            return True
