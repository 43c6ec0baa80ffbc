"""`GPTPrior`: a class-conditional Llama-style transformer over token grids in raster order.

LlamaGen's recipe (RMSNorm, SwiGLU, bias-free linears, the class embedding as the first token with
its null id `num_classes`, a zero-initialised untied head), written by hand as a diffusers
`ModelMixin` so a pipeline saves it: `transformers.LlamaForCausalLM` was measured slower to sample
(benchmarks/gpt_sampling.py: its classifier-free guidance runs a second, unbatched forward pass) and
puts the class in the vocabulary. Positions are learned absolute embeddings, as VQGAN-LC's minGPT.

Grids with m indices per position (LooC, PQ: (h, w, m)) are modelled with m output heads over the
shared K-way vocabulary: one sequence step per *position* (not per index), the m indices of the
previous position enter as a sum of slot-specific embeddings, and the m heads predict the next
position's indices independently given the prefix. The sequence stays h*w long; the price is that
the m indices of one position do not see each other (measured in benchmarks/RESULTS.md).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch.utils.checkpoint import checkpoint

from .sampling import guide, sample_tokens

# named sizes: (layers, heads, width). B/L/XL/XXL as LlamaGen; T and S are small CPU sizes.
GPT_SIZES = {
    "GPT-T": (4, 4, 128),
    "GPT-S": (8, 8, 256),
    "GPT-B": (12, 12, 768),
    "GPT-L": (24, 16, 1024),
    "GPT-XL": (36, 20, 1280),
    "GPT-XXL": (48, 24, 1536),
}


def _find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cache=None, pos: int = 0):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        else:  # static cache (B, heads, L, hd): write this step, attend to everything so far
            ck, cv = cache
            ck[:, :, pos:pos + t], cv[:, :, pos:pos + t] = k, v
            y = F.scaled_dot_product_attention(q, ck[:, :, :pos + t], cv[:, :, :pos + t], is_causal=t > 1 and pos == 0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1, self.w3 = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class _Block(nn.Module):
    def __init__(self, dim, heads, hidden, dropout, eps):
        super().__init__()
        self.attn_norm, self.ffn_norm = nn.RMSNorm(dim, eps=eps), nn.RMSNorm(dim, eps=eps)
        self.attn, self.ffn = _Attention(dim, heads, dropout), _FeedForward(dim, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, cache=None, pos=0):
        x = x + self.drop(self.attn(self.attn_norm(x), cache, pos))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class GPTPrior(ModelMixin, ConfigMixin):
    """Autoregressive prior p(indices | class).

    Args:
        codebook_size: K, the vocabulary of each index (100,000 for VQGAN-LC).
        grid_height, grid_width: the token grid (16x16 for f16 at 256 px).
        tokens_per_position: m indices per position (1; LooC/PQ: channels / chunk_dim).
        num_classes: classes; 0 makes the prior unconditional (only the null class token exists).
        hidden_size, num_layers, num_heads: the transformer (see GPT_SIZES).
        ffn_multiple_of: SwiGLU hidden = round_up(8/3 * hidden_size, ffn_multiple_of) (LlamaGen: 256).
        dropout: residual / attention dropout (LlamaGen: 0.1).
    """

    @register_to_config
    def __init__(self, codebook_size: int = 16384, grid_height: int = 16, grid_width: int = 16,
                 tokens_per_position: int = 1, num_classes: int = 1000, hidden_size: int = 768,
                 num_layers: int = 12, num_heads: int = 12, ffn_multiple_of: int = 256, dropout: float = 0.0,
                 norm_eps: float = 1e-5):
        super().__init__()
        for name, v in (("codebook_size", codebook_size), ("grid_height", grid_height), ("grid_width", grid_width),
                        ("tokens_per_position", tokens_per_position), ("num_layers", num_layers)):
            if v <= 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {num_classes}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        m, k = tokens_per_position, codebook_size
        self.seq_len = grid_height * grid_width
        self.class_embedding = nn.Embedding(num_classes + 1, hidden_size)  # row num_classes = null
        self.token_embedding = nn.Embedding(m * k, hidden_size)  # slot j of a position uses rows [j*K, (j+1)*K)
        self.register_buffer("slot_offset", torch.arange(m) * k, persistent=False)
        self.position_embedding = nn.Parameter(torch.zeros(1, self.seq_len, hidden_size))
        hidden = _find_multiple(int(2 * 4 * hidden_size / 3), ffn_multiple_of)
        self.blocks = nn.ModuleList(_Block(hidden_size, num_heads, hidden, dropout, norm_eps) for _ in range(num_layers))
        self.norm = nn.RMSNorm(hidden_size, eps=norm_eps)
        self.head = nn.Linear(hidden_size, m * k, bias=False)
        self.apply(self._init)
        nn.init.normal_(self.position_embedding, std=0.02)
        nn.init.zeros_(self.head.weight)  # LlamaGen: the head starts at uniform predictions

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def _check(self, indices, class_labels):
        c = self.config
        shape = (c.grid_height, c.grid_width) + ((c.tokens_per_position,) if c.tokens_per_position > 1 else ())
        if indices.dtype not in (torch.int32, torch.int64) or tuple(indices.shape[1:]) != shape:
            raise ValueError(f"indices must be integer (B, {', '.join(map(str, shape))}), got "
                             f"{indices.dtype} {tuple(indices.shape)}")
        if class_labels.shape != indices.shape[:1]:
            raise ValueError(f"class_labels must have shape ({indices.shape[0]},), got {tuple(class_labels.shape)}")

    def _embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, m) indices -> (B, T, D): the sum of the m slot embeddings."""
        return self.token_embedding(tokens + self.slot_offset).sum(-2)

    def hidden_states(self, indices: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced final hidden states (B, L, D); position i predicts the i-th position's indices."""
        self._check(indices, class_labels)
        b = indices.shape[0]
        tokens = indices.reshape(b, self.seq_len, self.config.tokens_per_position).long()
        x = torch.cat([self.class_embedding(class_labels.long())[:, None], self._embed_tokens(tokens[:, :-1])], 1)
        x = x + self.position_embedding
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h).unflatten(-1, (self.config.tokens_per_position, self.config.codebook_size))

    def forward(self, indices: torch.Tensor, class_labels: torch.Tensor, return_loss: bool = False,
                loss_chunk_size: int = 4096) -> torch.Tensor:
        """Logits (B, L, m, K) for every position (materialised), or with return_loss=True the
        memory-aware mean cross-entropy of `loss` (the training call: it goes through DDP's forward)."""
        if return_loss:
            return self.loss(indices, class_labels, loss_chunk_size)
        return self._logits(self.hidden_states(indices, class_labels))

    def loss(self, indices: torch.Tensor, class_labels: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
        """Mean cross-entropy over all indices, computed `chunk_size` positions at a time with the
        chunk's fp32 logits recomputed in backward: peak logit memory chunk_size*m*K*4 bytes
        instead of B*L*m*K*4 (3.3 GB at B=32, L=256, K=100K)."""
        h = self.hidden_states(indices, class_labels).flatten(0, 1)  # (B*L, D)
        targets = indices.reshape(h.shape[0], self.config.tokens_per_position).long()

        def chunk_loss(hc, tc):
            return F.cross_entropy(self._logits(hc).float().flatten(0, 1), tc.flatten(), reduction="sum")

        total = h.new_zeros((), dtype=torch.float32)
        for s in range(0, h.shape[0], chunk_size):
            hc, tc = h[s:s + chunk_size], targets[s:s + chunk_size]
            total = total + (checkpoint(chunk_loss, hc, tc, use_reentrant=False) if torch.is_grad_enabled()
                             else chunk_loss(hc, tc))
        return total / targets.numel()

    @torch.no_grad()
    def generate(self, class_labels: torch.Tensor, guidance_scale: float = 1.0, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, generator=None, progress=None) -> torch.Tensor:
        """Sample index grids (B, h, w[, m]) with a static KV cache.

        With guidance_scale != 1 the conditional and null-class rows run in one batch of 2B and the
        logits are mixed as uncond + scale * (cond - uncond) before temperature / top-k / top-p.
        `progress` is an optional callable wrapping the step range (a tqdm bar).
        """
        c = self.config
        b = class_labels.shape[0]
        labels = class_labels.to(self.device).long()
        cfg = guidance_scale != 1.0
        if cfg:
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])
        rows, hd = labels.shape[0], c.hidden_size // c.num_heads
        caches = [(torch.empty(rows, c.num_heads, self.seq_len, hd, device=self.device, dtype=self.dtype),
                   torch.empty(rows, c.num_heads, self.seq_len, hd, device=self.device, dtype=self.dtype))
                  for _ in self.blocks]
        out = torch.empty(b, self.seq_len, c.tokens_per_position, dtype=torch.long, device=self.device)
        x = self.class_embedding(labels)[:, None]
        steps = range(self.seq_len)
        for t in (progress(steps) if progress else steps):
            h = x + self.position_embedding[:, t:t + 1]
            for block, cache in zip(self.blocks, caches):
                h = block(h, cache, t)
            logits = self._logits(self.norm(h))[:, 0].float()  # (rows, m, K)
            if cfg:
                logits = guide(logits[:b], logits[b:], guidance_scale)
            nxt = sample_tokens(logits.cpu() if _cpu_generator(generator) else logits, temperature, top_k, top_p,
                                generator).to(self.device)
            out[:, t] = nxt
            x = self._embed_tokens((torch.cat([nxt, nxt]) if cfg else nxt)[:, None])
        shape = (b, c.grid_height, c.grid_width) + ((c.tokens_per_position,) if c.tokens_per_position > 1 else ())
        return out.reshape(shape)


def _cpu_generator(generator) -> bool:
    g = generator[0] if isinstance(generator, list) else generator
    return g is not None and g.device.type == "cpu"
