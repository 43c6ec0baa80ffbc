"""One vector quantizer whose options compose into every method lcgen ships.

    z (B, C, H, W) -> [1x1 project C -> code_dim] -> [LooC upsample] -> split into m chunks of d*
      -> exact nearest code in a (shared or per-chunk) codebook -> straight-through -> back.

The codebook source (learned / EMA / VQGAN-LC frozen+projector), the chunking (one chunk, LooC's
shared codebook, PQ's per-chunk codebooks), the distance (l2 / cos), CVQ revival and LooC's
extrapolation-by-interpolation are independent options; `build_quantizer` names the papers'
combinations. Quantisation runs in fp32 with autocast off whatever the caller's precision.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.utils import BaseOutput

from lcgen.checks import check_choice, check_finite, check_positive_int

from .codebooks import FrozenProjectedCodebook, LearnedCodebook
from .ema import EMACodebook
from .interpolation import interpolate_down, interpolate_up
from .latent_pull import DeadCodePull
from .online_clustering import ANCHORS, OnlineClustering
from .search import DEFAULT_MEMORY_BUDGET, nearest_code

CODEBOOKS = ("learned", "ema", "frozen_projected")
DISTANCES = ("l2", "cos")
REVIVALS = (None, "cvq", "latent-pull", "code-pull")


@dataclass
class QuantizerOutput(BaseOutput):
    """quantized: (B, C, H, W) straight-through codes; indices: int64 (B, H, W) or (B, H, W, m);
    loss: scalar codebook/commitment loss."""

    quantized: torch.Tensor
    indices: torch.Tensor = None  # defaults: accelerate rebuilds outputs from a dict
    loss: torch.Tensor = None


def code_to_latent_scale(codebook: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """RMS spread of the code vectors about their mean over that of the latent chunks about theirs:
    (G, K, d*) codes, (N, m, d*) latents -> a scalar. Far from 1 (VQGAN-LC's projected codes can start
    orders of magnitude wider than the encoder's latents) the nearest-code search sends every latent
    to the few codes at the edge of the codebook, and the projector cannot align the rest."""
    codes = codebook.reshape(-1, codebook.shape[-1])
    latents = flat.reshape(-1, flat.shape[-1])
    spread = lambda v: (v - v.mean(0)).pow(2).sum(1).mean().sqrt()  # noqa: E731
    return spread(codes) / spread(latents).clamp_min(1e-12)


class VectorQuantizer(nn.Module):
    """Composable vector quantizer; see the module docstring and `build_quantizer` for presets.

    Args (defaults are plain VQGAN's):
        dim: channels C of the input latent.
        codebook_size: K entries per codebook.
        codebook: "learned" (gradient-trained), "ema" (VQGAN-EMA) or "frozen_projected" (VQGAN-LC).
        code_dim: width the latent is quantised at; if != dim, 1x1 projections in and out (VQGAN-FC).
        chunk_dim: d*, size of a code vector; the code_dim (x interp_scale^2) channels of each
            position are split into m = channels / d* chunks. None: one chunk (d* = code_dim).
        shared_codebook: one codebook for all chunks (LooC) or one per chunk (PQ).
        interp_scale: LooC extrapolation-by-interpolation factor beta (0 = off).
        distance: "l2" (squared Euclidean) or "cos" (cosine lookup; raw codes are output).
        normalize: l2-normalise latents and codes, and output normalised codes (ViT-VQGAN style).
        commitment_weight, codebook_weight: loss = cw*mse(sg(zq), z) + bw*mse(zq, sg(z)).
        sum_codebook_losses: with per-chunk codebooks, the sum of each codebook's loss instead of their
            mean (LooC's PQ baseline adds its m sub-quantizers' losses): m x the loss above.
        decay: EMA decay of the EMA codebook and of CVQ's running usage (gamma).
        eps: Laplace smoothing of the EMA codebook.
        revival: None, "cvq" (online clustering: unused codes move to their anchors; any non-frozen
            codebook), "latent-pull" (lcgen's mirror for a frozen codebook: each unused code pulls
            its closest batch latent towards itself through the encoder's gradient; see latent_pull)
            or "code-pull" (the same loss, its gradient on the codes: for VQGAN-LC, the projector).
        pull_weight: weight of the pull loss relative to the commitment term (x commitment_weight).
        anchor: CVQ anchor, "closest", "random" or "probrandom".
        init_codebook: VQGAN-LC frozen codebook, a (K, D) tensor or a .safetensors file.
        frozen_dim: D of the random frozen codebook used when init_codebook is None.
        projector_init: VQGAN-LC projector start, "vqgan-lc" (the paper's) or "latent-stats" (lcgen's:
            rescaled and shifted onto the first training batch's latents; see FrozenProjectedCodebook).
        projector: VQGAN-LC projector, "linear" (the paper's) or "mlp" (its --use_cblinear 2).
        memory_budget: bytes the nearest-code search may use for score blocks.
        sync_distributed: all-reduce statistics and share anchors across data-parallel ranks.
        seed: seeds the random anchors (identically on every rank).
    """

    def __init__(self, dim: int, codebook_size: int, *, codebook: str = "learned", code_dim: int | None = None,
                 chunk_dim: int | None = None, shared_codebook: bool = True, interp_scale: int = 0,
                 distance: str = "l2", normalize: bool = False, commitment_weight: float = 1.0,
                 codebook_weight: float = 0.33, sum_codebook_losses: bool = False, decay: float = 0.99,
                 eps: float = 1e-5,
                 revival: str | None = None, pull_weight: float = 1.0, anchor: str = "closest", init_codebook=None,
                 frozen_dim: int = 768, projector_init: str = "vqgan-lc", projector: str = "linear", memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 sync_distributed: bool = True, seed: int = 0):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("codebook_size", codebook_size)
        check_choice("codebook", codebook, CODEBOOKS)
        check_choice("distance", distance, DISTANCES)
        check_choice("revival", revival, REVIVALS)
        check_choice("anchor", anchor, ANCHORS)
        code_dim = dim if code_dim is None else code_dim
        check_positive_int("code_dim", code_dim)
        check_positive_int("interp_scale", interp_scale, allow_zero=True)
        channels = code_dim * max(interp_scale, 1) ** 2  # channels that are split into chunks
        chunk_dim = code_dim if chunk_dim is None else chunk_dim
        check_positive_int("chunk_dim", chunk_dim)
        if channels % chunk_dim:
            raise ValueError(f"chunk_dim={chunk_dim} must divide the {channels} quantised channels "
                             f"(code_dim={code_dim} x interp_scale^2={max(interp_scale, 1) ** 2})")
        check_finite("commitment_weight", commitment_weight, 0)
        check_finite("codebook_weight", codebook_weight, 0)
        check_finite("eps", eps, 0)
        check_finite("pull_weight", pull_weight, 0)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if codebook == "frozen_projected" and revival == "cvq":
            raise ValueError("revival needs a codebook it can move; the VQGAN-LC codebook is frozen "
                             "(pass revival=None or 'latent-pull', e.g. kind='looc' with codebook='frozen_projected', "
                             "revival=None)")
        if codebook == "frozen_projected" and not shared_codebook:
            raise ValueError("a frozen projected codebook is shared by all chunks (shared_codebook=True)")
        if init_codebook is not None and codebook != "frozen_projected":
            raise ValueError("init_codebook is only used by codebook='frozen_projected' (kind 'lc')")
        if projector_init != "vqgan-lc" and codebook != "frozen_projected":
            raise ValueError("projector_init is only used by codebook='frozen_projected' (kind 'lc')")
        if projector != "linear" and codebook != "frozen_projected":
            raise ValueError("projector is only used by codebook='frozen_projected' (kind 'lc')")
        check_positive_int("memory_budget", memory_budget)

        self.dim, self.codebook_size, self.code_dim, self.chunk_dim = dim, codebook_size, code_dim, chunk_dim
        self.num_chunks = channels // chunk_dim
        self.shared_codebook = shared_codebook
        self.num_codebooks = 1 if shared_codebook else self.num_chunks
        self.interp_scale, self.distance, self.normalize = interp_scale, distance, normalize
        self.commitment_weight, self.codebook_weight = commitment_weight, codebook_weight
        # every codebook's mean loss has the same number of terms, so their sum is G x the overall mean
        self.loss_scale = float(self.num_codebooks) if sum_codebook_losses else 1.0
        self.memory_budget = memory_budget
        self.scale_ratio = None  # code_to_latent_scale of the last training batch (logged by the training loop)

        self.project_in = nn.Conv2d(dim, code_dim, 1) if code_dim != dim else nn.Identity()
        self.project_out = nn.Conv2d(code_dim, dim, 1) if code_dim != dim else nn.Identity()
        if codebook == "learned":
            self.codebook = LearnedCodebook(self.num_codebooks, codebook_size, chunk_dim)
        elif codebook == "ema":
            self.codebook = EMACodebook(self.num_codebooks, codebook_size, chunk_dim, decay, eps, sync_distributed)
        else:
            self.codebook = FrozenProjectedCodebook(codebook_size, chunk_dim, init_codebook, frozen_dim, projector_init,
                                                    projector)
        self.reviver = (OnlineClustering(self.num_codebooks, codebook_size, chunk_dim, decay, anchor, distance,
                                         seed, sync_distributed) if revival == "cvq" else None)
        self.puller = (DeadCodePull(self.num_codebooks, codebook_size, decay, distance, commitment_weight * pull_weight,
                                    "latents" if revival == "latent-pull" else "codes", sync_distributed)
                       if revival in ("latent-pull", "code-pull") else None)
        # which codebook each chunk uses: all the shared one, or its own
        chunk_codebook = torch.zeros(self.num_chunks, dtype=torch.long) if shared_codebook else torch.arange(self.num_chunks)
        self.register_buffer("chunk_codebook", chunk_codebook, persistent=False)

    # ---------------------------------------------------------------- helpers
    @property
    def index_shape_suffix(self) -> tuple:
        """Trailing index dims per position: () for one chunk, (m,) otherwise."""
        return () if self.num_chunks == 1 else (self.num_chunks,)

    def codebook_weight_tensor(self) -> torch.Tensor:
        """The code vectors used for lookup, (G, K, d*), fp32."""
        w = self.codebook.weight().float()
        return F.normalize(w, dim=-1) if self.normalize else w

    def _check_latent(self, z):
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"expected a tensor z of shape (B, {self.dim}, H, W), got {type(z).__name__}")
        if z.ndim != 4:
            raise ValueError(f"expected z of shape (B, {self.dim}, H, W) (rank 4), got rank {z.ndim} {tuple(z.shape)}")
        if not z.is_floating_point():
            raise TypeError(f"expected a floating-point z, got {z.dtype}")
        if z.shape[1] != self.dim:
            raise ValueError(f"expected {self.dim} channels in z of shape (B, C, H, W), got {z.shape[1]}")
        if not torch.isfinite(z).all():
            raise ValueError("z contains NaN or inf")

    def _to_flat(self, h):
        b, c, hh, ww = h.shape
        return h.permute(0, 2, 3, 1).reshape(b * hh * ww, self.num_chunks, self.chunk_dim)  # (N, m, d*)

    def _from_flat(self, x, b, hh, ww):
        x = x.reshape(b, hh, ww, self.num_chunks * self.chunk_dim).permute(0, 3, 1, 2)  # (B, m*d*, h, w)
        if self.interp_scale:
            x = interpolate_down(x, self.interp_scale)  # (B, code_dim, h, w)
        return self.project_out(x)  # (B, C, h, w)

    def _search(self, flat, codebook):
        if self.shared_codebook:
            idx = nearest_code(flat.reshape(-1, self.chunk_dim), codebook[0], self.distance, self.memory_budget)
            return idx.view(flat.shape[0], self.num_chunks)  # (N, m)
        return torch.stack([nearest_code(flat[:, j], codebook[j], self.distance, self.memory_budget)
                            for j in range(self.num_chunks)], dim=1)  # (N, m)

    def _groups(self, flat, indices):
        """(features, indices) per codebook: all chunks pooled when shared, one chunk each for PQ."""
        if self.shared_codebook:
            return [(flat.reshape(-1, self.chunk_dim), indices.reshape(-1))]
        return [(flat[:, j], indices[:, j]) for j in range(self.num_chunks)]

    # ---------------------------------------------------------------- forward
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        self._check_latent(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            h = self.project_in(z.float())  # (B, code_dim, H, W)
            if self.normalize:
                h = F.normalize(h, dim=1)
            if self.interp_scale:
                h = interpolate_up(h, self.interp_scale)  # (B, s^2 code_dim, H, W)
            b, _, hh, ww = h.shape
            flat = self._to_flat(h)  # (N, m, d*)
            if self.training and isinstance(self.codebook, FrozenProjectedCodebook) and self.codebook.needs_alignment:
                self.codebook.align_to(flat)
            codebook = self.codebook_weight_tensor()  # (G, K, d*)
            indices = self._search(flat, codebook)  # (N, m)
            zq = codebook[self.chunk_codebook.unsqueeze(0), indices]  # (N, m, d*)
            loss = self.commitment_weight * F.mse_loss(flat, zq.detach())
            if self.codebook_weight and zq.requires_grad:
                loss = loss + self.codebook_weight * F.mse_loss(zq, flat.detach())
            if self.training and self.puller is not None:
                loss = loss + self.puller.loss(codebook, self._groups(flat, indices))
            loss = self.loss_scale * loss
            if self.training:
                self.scale_ratio = code_to_latent_scale(codebook.detach(), flat.detach())
                self._update_codebook(flat.detach(), indices)
            quantized = self._from_flat(flat + (zq - flat).detach(), b, hh, ww)  # straight-through
        indices = indices.view(b, hh, ww, *self.index_shape_suffix)
        return QuantizerOutput(quantized=quantized.to(z.dtype), indices=indices, loss=loss)

    @torch.no_grad()
    def _update_codebook(self, flat, indices):
        """Training-mode codebook updates, after the outputs were computed with the old codebook."""
        groups = self._groups(flat, indices)
        if isinstance(self.codebook, EMACodebook):
            self.codebook.update(groups)
        if self.reviver is not None:
            self.codebook.assign(self.reviver.step(self.codebook.weight().detach(), groups))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes for an index grid (B, H, W) or (B, H, W, m) -> (B, C, H, W) float32."""
        suffix = self.index_shape_suffix
        if not isinstance(indices, torch.Tensor) or indices.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"indices must be an int64 tensor, got {getattr(indices, 'dtype', type(indices).__name__)}")
        if indices.ndim != 3 + len(suffix) or tuple(indices.shape[3:]) != suffix:
            raise ValueError(f"indices must have shape (B, H, W{', ' + str(suffix[0]) if suffix else ''}), "
                             f"got {tuple(indices.shape)}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(f"indices must lie in [0, {self.codebook_size}), got [{int(indices.min())}, {int(indices.max())}]")
        b, hh, ww = indices.shape[:3]
        with torch.autocast(device_type=indices.device.type, enabled=False):
            codebook = self.codebook_weight_tensor()
            flat_idx = indices.reshape(b * hh * ww, self.num_chunks).long()
            zq = codebook[self.chunk_codebook.unsqueeze(0), flat_idx]  # (N, m, d*)
            return self._from_flat(zq, b, hh, ww)
