"""The space a latent prior (LDM, DiT, SiT) models, and the way back to the tokenizer's latent.

- "global": (z - shift) * scale with one mean and standard deviation over all channels (the
  extraction's), as LDM's scale factor.
- "chunk": every chunk of d* channels that the tokenizer snaps by cosine becomes its unit direction
  times sqrt(d*) (unit mean square per channel). A cosine snap ignores each chunk's norm, so this is
  exactly what the decoder sees; the raw latent's chunk norms and its per-channel scale differences
  (both large for the demo's LooC tokenizer, per the issue-12 review) are not left for the prior to learn.
  The way back is the identity: the snap discards the norm again.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMALIZATIONS = ("auto", "global", "chunk")


def snaps_chunks_by_cosine(quantizer) -> bool:
    """True when the quantizer looks each chunk of the latent's own channels up by cosine (LooC, CVQ):
    no projection or interpolation in between."""
    return (quantizer.distance == "cos" and isinstance(quantizer.project_in, nn.Identity)
            and not quantizer.interp_scale)


def resolve_normalization(normalization: str, quantizer) -> str:
    """"auto" -> "chunk" for a cosine snap of the latent's chunks, else "global"; "chunk" is refused
    where the snap is not by cosine on the latent's own chunks."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"latent normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if normalization == "auto":
        return "chunk" if snaps_chunks_by_cosine(quantizer) else "global"
    if normalization == "chunk" and not snaps_chunks_by_cosine(quantizer):
        raise ValueError("latent normalization 'chunk' needs a tokenizer that snaps the latent's chunks by cosine "
                         f"(distance={quantizer.distance!r}); use 'global'")
    return normalization


@dataclass
class LatentSpace:
    """normalization ("global" or "chunk"), the global shift/scale, and the tokenizer's chunk size d*."""

    normalization: str = "global"
    shift: float = 0.0
    scale: float = 1.0
    chunk_dim: int = 1

    def to_prior(self, z: torch.Tensor) -> torch.Tensor:
        """Tokenizer latent (B, C, H, W) -> what the prior models."""
        if self.normalization == "chunk":
            b, c, h, w = z.shape
            u = F.normalize(z.float().view(b, c // self.chunk_dim, self.chunk_dim, h, w), dim=2)
            return (u * self.chunk_dim ** 0.5).view(b, c, h, w).to(z.dtype)
        return (z - self.shift) * self.scale

    def to_tokenizer(self, x: torch.Tensor) -> torch.Tensor:
        """A sample of the prior -> a latent the tokenizer snaps to the same codes as the prior meant."""
        if self.normalization == "chunk":
            return x  # the cosine snap ignores each chunk's norm
        return x / self.scale + self.shift
