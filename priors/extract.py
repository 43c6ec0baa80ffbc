"""`lcgen extract`: run a trained tokenizer once over a dataset and write token shards.

Prior training reads these shards, never images (LlamaGen's extract_codes_c2i.py, fast-DiT's
extract_features.py): the tokenizer's encoder and its 100K-code search run once, not every epoch.
With `flip_view=True` the horizontally flipped image is encoded too and stored as a second view.
Resumable: shards are written atomically in dataset order, and a rerun with the same arguments
skips the shards that exist.
"""
from __future__ import annotations

import hashlib
import json
import os
import time

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from lcgen.checks import check_output_folder
from lcgen.data import build_dataset, collate_skipping_bad
from lcgen.tokenizer import VQTokenizer

from .shards import META_NAME, shard_name

STORABLE = ("indices", "latents")
LATENT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# arguments that must match for a rerun to continue an earlier extraction
_IDENTITY = ("tokenizer", "tokenizer_weights", "dataset", "split", "resolution", "data_dir", "max_samples",
             "shard_size", "views", "stored", "latent_dtype")


def weights_digest(folder: str) -> str:
    """sha256 over the folder's safetensors files (sorted by name): a retrained tokenizer saved to the same
    path is another tokenizer, and shards encoded by the old one must not be continued or reused."""
    h = hashlib.sha256()
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")):
        h.update(name.encode())
        with open(os.path.join(folder, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _check_args(store, latent_dtype, batch_size, shard_size):
    bad = [s for s in store if s not in STORABLE]
    if bad or not store:
        raise ValueError(f"store must be a non-empty subset of {STORABLE}, got {list(store)}")
    if latent_dtype not in LATENT_DTYPES:
        raise ValueError(f"latent_dtype must be one of {sorted(LATENT_DTYPES)}, got {latent_dtype!r}")
    if batch_size <= 0 or shard_size <= 0:
        raise ValueError(f"batch_size and shard_size must be > 0, got {batch_size} and {shard_size}")


def _write_meta(output_dir: str, meta: dict) -> None:
    tmp = os.path.join(output_dir, META_NAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(tmp, os.path.join(output_dir, META_NAME))


def _write_shard(output_dir: str, k: int, tensors: dict, metadata: dict) -> None:
    final = os.path.join(output_dir, shard_name(k))
    save_file(tensors, final + ".tmp", metadata=metadata)
    os.replace(final + ".tmp", final)


@torch.no_grad()
def _encode_views(tok, images, views: int):
    """(latents, indices) each with a view axis: (B, V, C, h, w), (B, V, h, w[, m])."""
    lat, idx = [], []
    for v in range(views):
        x = images if v == 0 else torch.flip(images, dims=[-1])
        z = tok.encode_latents(x)
        lat.append(z)
        idx.append(tok.quantize(z).indices)
    return torch.stack(lat, 1), torch.stack(idx, 1)


def extract(tokenizer: str, dataset: str, output_dir: str, split: str = "train", resolution: int | None = None,
            data_dir: str | None = None, max_samples: int | None = None, flip_view: bool = False,
            store=STORABLE, latent_dtype: str = "float16", batch_size: int = 256, shard_size: int = 10_000,
            device: str = "cpu", num_workers: int = 0) -> dict:
    """Encode `dataset`/`split` with the tokenizer saved at `tokenizer`; returns the metadata written.

    Args:
        tokenizer: a saved VQTokenizer folder.
        dataset, split, resolution, data_dir, max_samples: as lcgen.data.build_dataset (center crop).
        flip_view: also store the horizontally flipped view (views = 2).
        store: which of "indices", "latents" to write (LDM/DiT/SiT read latents, GPT indices).
        latent_dtype: storage dtype of the latents ("float16" halves the disk of "float32").
        shard_size: dataset items per shard (the unit of resumption).
    """
    store = list(store)
    _check_args(store, latent_dtype, batch_size, shard_size)
    if not os.path.isfile(os.path.join(tokenizer, "config.json")):
        raise ValueError(f"tokenizer {tokenizer!r} is not a saved VQTokenizer folder (no config.json)")
    check_output_folder("output_dir", output_dir)
    tok = VQTokenizer.from_pretrained(tokenizer).to(device).eval()
    ds = build_dataset(dataset, split, resolution, "center", False, tok.config.in_channels, False, data_dir,
                       max_samples)
    views = 2 if flip_view else 1
    num_shards = -(-len(ds) // shard_size)
    identity = dict(tokenizer=os.path.abspath(tokenizer), tokenizer_weights=weights_digest(tokenizer), dataset=dataset,
                    split=split, resolution=resolution, data_dir=data_dir, max_samples=max_samples, shard_size=shard_size, views=views, stored=store,
                    latent_dtype=latent_dtype)
    os.makedirs(output_dir, exist_ok=True)
    meta_file = os.path.join(output_dir, META_NAME)
    if os.path.isfile(meta_file):
        with open(meta_file) as f:
            old = json.load(f)
        diff = {k: (old.get(k), identity[k]) for k in _IDENTITY if old.get(k) != identity[k]}
        if diff:
            raise ValueError(f"{output_dir!r} holds an extraction with other arguments {diff} (was, now): "
                             f"use another output_dir or delete it")
    quantizer = tok.quantizer
    meta = {**identity, "num_images": len(ds), "num_shards": num_shards, "complete": False,
            "codebook_size": tok.config.codebook_size, "tokens_per_position": getattr(quantizer, "num_chunks", 1),
            "embed_dim": tok.config.embed_dim, "downsample_factor": tok.downsample_factor,
            "class_names": getattr(ds, "class_names", None), "shards_done": []}
    done = [k for k in range(num_shards) if os.path.isfile(os.path.join(output_dir, shard_name(k)))]
    meta["shards_done"] = done
    _write_meta(output_dir, meta)

    start = time.time()
    for k in tqdm([k for k in range(num_shards) if k not in done], desc="shards", initial=len(done), total=num_shards):
        items = Subset(ds, range(k * shard_size, min((k + 1) * shard_size, len(ds))))
        loader = DataLoader(items, batch_size=batch_size, collate_fn=collate_skipping_bad, num_workers=num_workers)
        lat, idx, labels, skipped = [], [], [], 0
        for batch in loader:
            skipped += int(batch["num_skipped"])
            if batch["pixel_values"].numel() == 0:
                continue
            z, i = _encode_views(tok, batch["pixel_values"].to(device), views)
            lat.append(z.float().cpu())
            idx.append(i.to(torch.int32).cpu())
            labels.append(batch["labels"])
        lat, idx, labels = torch.cat(lat), torch.cat(idx), torch.cat(labels)
        tensors = {"labels": labels.contiguous()}
        if "indices" in store:
            tensors["indices"] = idx.contiguous()
        if "latents" in store:
            tensors["latents"] = lat.to(LATENT_DTYPES[latent_dtype]).contiguous()
        z64 = lat.double()
        _write_shard(output_dir, k, tensors, {"count": str(z64.numel()), "sum": repr(z64.sum().item()),
                                              "sumsq": repr((z64 * z64).sum().item()), "skipped": str(skipped)})
        meta["shards_done"] = sorted(meta["shards_done"] + [k])
        _write_meta(output_dir, meta)

    count = total = sumsq = 0.0
    skipped = 0
    for k in range(num_shards):
        with safe_open(os.path.join(output_dir, shard_name(k)), framework="pt") as f:
            m = f.metadata()
            count, total, sumsq = count + float(m["count"]), total + float(m["sum"]), sumsq + float(m["sumsq"])
            skipped += int(m["skipped"])
            if k == 0:
                shape = {n: list(f.get_slice(n).get_shape()[2:]) for n in f.keys() if n != "labels"}
    mean = total / count
    meta.update(complete=True, latent_mean=mean, latent_std=max(sumsq / count - mean * mean, 0.0) ** 0.5,
                skipped_images=skipped, index_shape=shape.get("indices"), latent_shape=shape.get("latents"),
                seconds=round(time.time() - start, 1))
    _write_meta(output_dir, meta)
    return meta
