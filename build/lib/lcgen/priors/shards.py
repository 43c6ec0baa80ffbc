"""Token shards: what extraction writes and prior training reads.

A shard directory holds `extraction.json` (tokenizer, dataset, shapes, latent statistics, class
names) and `shard-<k>.safetensors` files. Shard k covers dataset items [k*S, (k+1)*S) and holds
`labels` int64 (n,), `indices` int32 (n, V, h, w[, m]) and `latents` (n, V, C, h, w) in the stored
dtype, where V is the number of views (1, or 2 with the horizontally flipped view, as LlamaGen).
Each shard is written to a `.tmp` name and renamed, so a shard that exists is complete.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

META_NAME = "extraction.json"


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def read_meta(path: str) -> dict:
    file = os.path.join(path, META_NAME)
    if not os.path.isfile(file):
        raise ValueError(f"{path!r} is not a token-shard directory (no {META_NAME}); run `lcgen extract` first")
    with open(file) as f:
        meta = json.load(f)
    if not meta.get("complete"):
        raise ValueError(f"the extraction in {path!r} is incomplete ({len(meta.get('shards_done', []))} of "
                         f"{meta.get('num_shards')} shards): run the same `lcgen extract` again to finish it")
    return meta


def _item_view(seed: int, epoch: int, index: int, views: int) -> int:
    g = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2 ** 63))
    return int(torch.randint(views, (1,), generator=g))


class TokenShardDataset(Dataset):
    """Items {"indices" or "latents": one view, "labels": int64} from a shard directory.

    The view of item i in epoch e is drawn from a generator seeded by (seed, e, i), so a resumed run
    sees the same views. Everything is held in memory (ImageNet at 16x16 indices: ~1.3 GB int32).
    """

    def __init__(self, path: str, key: str, seed: int = 0, max_samples: int | None = None):
        if key not in ("indices", "latents"):
            raise ValueError(f"key must be 'indices' or 'latents', got {key!r}")
        self.meta = read_meta(path)
        if key not in self.meta["stored"]:
            raise ValueError(f"{path!r} was extracted without {key} (stored: {self.meta['stored']}); "
                             f"extract again with --store {key}")
        data, labels = [], []
        for k in range(self.meta["num_shards"]):
            with safe_open(os.path.join(path, shard_name(k)), framework="pt") as f:
                data.append(f.get_tensor(key))
                labels.append(f.get_tensor("labels"))
        self.data, self.labels = torch.cat(data), torch.cat(labels)
        if max_samples is not None:
            self.data, self.labels = self.data[:max_samples], self.labels[:max_samples]
        self.key, self.seed, self.epoch, self.views = key, seed, 0, self.data.shape[1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        v = _item_view(self.seed, self.epoch, i, self.views) if self.views > 1 else 0
        x = self.data[i, v]
        return {self.key: x.long() if self.key == "indices" else x.float(), "labels": self.labels[i]}
