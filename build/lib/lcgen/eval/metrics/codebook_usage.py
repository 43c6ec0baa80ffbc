"""Codebook utilisation and perplexity accumulated over any number of batches.

Counts use `torch.bincount` (never a one-hot of size K). Utilisation is the share of codes used at
least once (VQGAN-LC, CVQ-VAE and LooC all report this); perplexity is exp(entropy) of the code
frequencies. For chunked indices (B, H, W, m) counts are kept per chunk: with a shared codebook
(LooC) the overall figures pool all chunks over the K codes; with one codebook per chunk (PQ)
overall utilisation is used (chunk, code) pairs / (m*K) and perplexity is the mean over chunks.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class CodebookUsage:
    def __init__(self, codebook_size: int, num_chunks: int = 1, shared_codebook: bool = True):
        if codebook_size <= 0 or num_chunks <= 0:
            raise ValueError(f"codebook_size and num_chunks must be > 0, got {codebook_size}, {num_chunks}")
        self.codebook_size, self.num_chunks, self.shared_codebook = codebook_size, num_chunks, shared_codebook
        self.counts = torch.zeros(num_chunks, codebook_size, dtype=torch.long)  # (m, K)

    @classmethod
    def for_quantizer(cls, quantizer) -> "CodebookUsage":
        return cls(quantizer.codebook_size, quantizer.num_chunks, quantizer.shared_codebook)

    def update(self, indices: torch.Tensor) -> None:
        """indices: int (B, H, W) for one chunk or (B, H, W, m)."""
        if indices.is_floating_point():
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
        expected_ndim = 3 if self.num_chunks == 1 else 4
        if indices.ndim != expected_ndim or (self.num_chunks > 1 and indices.shape[-1] != self.num_chunks):
            raise ValueError(f"indices must have shape (B, H, W{', %d' % self.num_chunks if self.num_chunks > 1 else ''}),"
                             f" got {tuple(indices.shape)}")
        idx = indices.reshape(-1, self.num_chunks).long()
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.codebook_size):
            raise ValueError(f"indices must lie in [0, {self.codebook_size})")
        # count where the indices live (no per-batch copy to the host); counts follow them there
        self.counts = self.counts.to(idx.device)
        offsets = torch.arange(self.num_chunks, device=idx.device) * self.codebook_size  # chunk j -> bins [jK, (j+1)K)
        flat = (idx + offsets).reshape(-1)
        self.counts += torch.bincount(flat, minlength=self.num_chunks * self.codebook_size).view_as(self.counts)

    def all_reduce(self) -> None:
        """Sum counts over data-parallel ranks (call once before reading on every rank)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.counts, op=dist.ReduceOp.SUM)

    @staticmethod
    def _perplexity(counts: torch.Tensor) -> torch.Tensor:
        p = counts.double() / counts.sum(-1, keepdim=True).clamp_min(1)
        entropy = -(p * p.clamp_min(1e-300).log()).sum(-1)
        return entropy.exp()

    def per_chunk_utilisation(self) -> torch.Tensor:
        return (self.counts > 0).double().mean(-1)  # (m,)

    def per_chunk_perplexity(self) -> torch.Tensor:
        return self._perplexity(self.counts)  # (m,)

    def utilisation(self) -> float:
        if self.shared_codebook:
            return float((self.counts.sum(0) > 0).double().mean())
        return float((self.counts > 0).double().mean())

    def perplexity(self) -> float:
        if self.shared_codebook:
            return float(self._perplexity(self.counts.sum(0)))
        return float(self.per_chunk_perplexity().mean())

    def summary(self) -> dict:
        out = {"utilisation": self.utilisation(), "perplexity": self.perplexity(),
               "codebook_size": self.codebook_size, "tokens": int(self.counts.sum() // self.num_chunks)}
        if self.num_chunks > 1:
            out["per_chunk_utilisation"] = self.per_chunk_utilisation().tolist()
            out["per_chunk_perplexity"] = self.per_chunk_perplexity().tolist()
        return out
