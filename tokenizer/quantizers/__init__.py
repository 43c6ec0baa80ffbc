"""Quantizers: one entry point, `build_quantizer(kind, dim=C, codebook_size=K, **options)`.

Each kind is a named combination of `VectorQuantizer` options with its paper's defaults; any
option can be overridden, and options compose (e.g. kind="looc" with codebook="frozen_projected"
is LooC chunking over a VQGAN-LC frozen codebook).
"""
from __future__ import annotations

import inspect

from .search import nearest_code
from .vector_quantizer import QuantizerOutput, VectorQuantizer

# loss weights: VQGAN-LC puts 1.0 on commitment and 0.33 on the codebook side; CVQ/LooC (VQ-VAE
# convention) put beta = 0.25 on commitment and 1.0 on the codebook side.
KINDS: dict[str, dict] = {
    "vq": dict(codebook="learned", distance="l2", commitment_weight=1.0, codebook_weight=0.33),
    "ema": dict(codebook="ema", decay=0.99, commitment_weight=1.0, codebook_weight=0.0),
    "fc": dict(codebook="learned", code_dim=8, commitment_weight=1.0, codebook_weight=0.33),
    "lc": dict(codebook="frozen_projected", code_dim=8, commitment_weight=1.0, codebook_weight=0.33),
    "cvq": dict(codebook="learned", revival="cvq", decay=0.99, anchor="closest", distance="cos",
                commitment_weight=0.25, codebook_weight=1.0),
    "looc": dict(codebook="learned", chunk_dim=4, shared_codebook=True, interp_scale=0, revival="cvq",
                 decay=0.99, anchor="closest", distance="cos", commitment_weight=0.25, codebook_weight=1.0),
    "pq": dict(codebook="learned", chunk_dim=4, shared_codebook=False, distance="l2",
               commitment_weight=0.25, codebook_weight=1.0),
    # LooC's PQ baseline (quantizer_zoo/PQ): m LooC sub-quantizers, each with its own codebook, cosine
    # lookup and CVQ revival, their losses summed -- the like-for-like comparison of LooC's Table 1
    "looc-pq": dict(codebook="learned", chunk_dim=4, shared_codebook=False, revival="cvq", decay=0.99,
                    anchor="closest", distance="cos", commitment_weight=0.25, codebook_weight=1.0,
                    sum_codebook_losses=True),
}

_OPTIONS = set(inspect.signature(VectorQuantizer.__init__).parameters) - {"self", "dim", "codebook_size"}


def build_quantizer(kind: str, dim: int, codebook_size: int, **options) -> VectorQuantizer:
    """Build the quantizer `kind` (one of KINDS) for latents with `dim` channels and K codes.

    For "pq", codebook_size is the size of each of the m sub-codebooks.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown quantizer kind {kind!r}; expected one of {sorted(KINDS)}")
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise TypeError(f"unknown quantizer option(s) {unknown} for kind {kind!r}; valid options: {sorted(_OPTIONS)}")
    settings = {**KINDS[kind], **options}
    return VectorQuantizer(dim, codebook_size, **settings)


__all__ = ["build_quantizer", "KINDS", "VectorQuantizer", "QuantizerOutput", "nearest_code"]
