"""`GPTPrior`: a class-conditional Llama-style transformer over token grids in raster order.

LlamaGen's recipe (RMSNorm, SwiGLU, bias-free linears, the class embedding as the first token with
its null id `num_classes`, a zero-initialised untied head), written by hand as a diffusers
`ModelMixin` so a pipeline saves it: `transformers.LlamaForCausalLM` was measured slower to sample
(benchmarks/gpt_sampling.py: its classifier-free guidance runs a second, unbatched forward pass) and
puts the class in the vocabulary. Positions are learned absolute embeddings (VQGAN-LC's minGPT) or
LlamaGen's 2-D rotary embedding (`position_scheme="rope_2d"`), which converted LlamaGen checkpoints use.

Grids with m indices per position (LooC, PQ: (h, w, m)) are modelled with m output heads over the
shared K-way vocabulary: one sequence step per *position* (not per index), the m indices of the
previous position enter as a sum of slot-specific embeddings, and the m heads predict the next
position's indices independently given the prefix. The sequence stays h*w long; the price is that
the m indices of one position do not see each other (measured in benchmarks/RESULTS.md).
"""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch.utils.checkpoint import checkpoint

from lcgen.cpu_linear import Linear
from lcgen.strict_loading import StrictLoadingMixin

from .sampling import guide, sample_tokens

# named sizes: (layers, heads, width). B/L/XL/XXL/XXXL/3B as LlamaGen; T and S are small CPU sizes.
GPT_SIZES = {
    "GPT-T": (4, 4, 128),
    "GPT-S": (8, 8, 256),
    "GPT-B": (12, 12, 768),
    "GPT-L": (24, 16, 1024),
    "GPT-XL": (36, 20, 1280),
    "GPT-XXL": (48, 24, 1536),
    "GPT-XXXL": (48, 40, 2560),
    "GPT-3B": (24, 32, 3200),
}


POSITION_SCHEMES = ("learned", "rope_2d")
NORM_TYPES = ("rmsnorm", "layernorm")
FFN_TYPES = ("swiglu", "gelu")


def _find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


def rope_2d_table(grid_height: int, grid_width: int, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """LlamaGen's 2-D rotary table for the sequence [class, position 0, ..., position L-2]: (L, head_dim/2, 2)
    (cos, sin) per interleaved pair. The first head_dim/4 pairs turn with the row, the rest with the
    column, each at frequencies base^(-2i / (head_dim/2)). The class token's entry is all zeros (cos
    and sin 0, as LlamaGen's table): its query and key enter attention as zero vectors."""
    if head_dim % 4:
        raise ValueError(f"rope_2d needs a head dim divisible by 4, got {head_dim}")
    half = head_dim // 2
    # fp32 throughout, as LlamaGen computes it, so converted checkpoints see the same rotations
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))  # (head_dim/4,)
    rows = torch.outer(torch.arange(grid_height).float(), freqs)  # (h, head_dim/4)
    cols = torch.outer(torch.arange(grid_width).float(), freqs)  # (w, head_dim/4)
    angles = torch.cat([rows[:, None].expand(-1, grid_width, -1), cols[None].expand(grid_height, -1, -1)], -1)
    table = torch.stack([angles.cos(), angles.sin()], -1).flatten(0, 1)  # (h*w, head_dim/2, 2)
    return torch.cat([torch.zeros(1, half, 2), table[:-1]])  # the last position is never an input


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x (B, heads, T, hd) by table (T, hd/2, 2), in fp32."""
    # one complex product (a + ib)(cos + i sin) per pair: the rotation in one kernel (6x faster than
    # the four real products at decode sizes), fp32 even in a half-precision model
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())  # (B, heads, T, hd/2)
    turn = torch.view_as_complex(table.float().contiguous())  # (T, hd/2)
    return torch.view_as_real(pairs * turn).flatten(-2).type_as(x)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, bias: bool = False):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = Linear(dim, 3 * dim, bias=bias)
        self.proj = Linear(dim, dim, bias=bias)

    def forward(self, x, cache=None, pos: int = 0, rope=None):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if rope is not None:  # (t, hd/2, 2): the rows of this call's positions; q and k in one call
            q, k = apply_rope(torch.stack([q, k]), rope)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        elif isinstance(pos, torch.Tensor):  # the fixed-shape step of compiled decoding: pos (1,), t = 1
            ck, cv = cache
            ck.index_copy_(2, pos, k)
            cv.index_copy_(2, pos, v)
            visible = (torch.arange(ck.shape[2], device=pos.device) <= pos)[None]  # (1, L): the keys written so far
            y = F.scaled_dot_product_attention(q, ck, cv, attn_mask=visible)
        else:  # static cache (B, heads, L, hd): write this step, attend to everything so far
            ck, cv = cache
            ck[:, :, pos:pos + t], cv[:, :, pos:pos + t] = k, v
            y = F.scaled_dot_product_attention(q, ck[:, :, :pos + t], cv[:, :, :pos + t], is_causal=t > 1 and pos == 0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _FeedForward(nn.Module):
    """LlamaGen's SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int, bias: bool = False):
        super().__init__()
        self.w1, self.w3 = Linear(dim, hidden, bias=bias), Linear(dim, hidden, bias=bias)
        self.w2 = Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class _GeluFeedForward(nn.Module):
    """GPT-2's / minGPT's MLP: fc2(gelu(fc1 x)) with the exact (erf) GELU."""

    def __init__(self, dim: int, hidden: int, bias: bool = True):
        super().__init__()
        self.fc1, self.fc2 = Linear(dim, hidden, bias=bias), Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def _norm(norm_type: str, dim: int, eps: float) -> nn.Module:
    return nn.RMSNorm(dim, eps=eps) if norm_type == "rmsnorm" else nn.LayerNorm(dim, eps=eps)


class _Block(nn.Module):
    def __init__(self, dim, heads, hidden, dropout, eps, norm_type="rmsnorm", ffn_type="swiglu", bias=False):
        super().__init__()
        self.attn_norm, self.ffn_norm = _norm(norm_type, dim, eps), _norm(norm_type, dim, eps)
        self.attn = _Attention(dim, heads, dropout, bias)
        self.ffn = (_FeedForward if ffn_type == "swiglu" else _GeluFeedForward)(dim, hidden, bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, cache=None, pos=0, rope=None):
        x = x + self.drop(self.attn(self.attn_norm(x), cache, pos, rope))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class GPTPrior(StrictLoadingMixin, ModelMixin, ConfigMixin):
    """Autoregressive prior p(indices | class).

    Args:
        codebook_size: K, the vocabulary of each index (100,000 for VQGAN-LC).
        grid_height, grid_width: the token grid (16x16 for f16 at 256 px).
        tokens_per_position: m indices per position (1; LooC/PQ: channels / chunk_dim).
        num_classes: classes; 0 makes the prior unconditional (only the null class token exists).
        hidden_size, num_layers, num_heads: the transformer (see GPT_SIZES).
        ffn_multiple_of: SwiGLU hidden = round_up(8/3 * hidden_size, ffn_multiple_of) (LlamaGen: 256).
        dropout: residual / attention dropout (LlamaGen: 0.1).
        norm_eps: RMSNorm epsilon (LlamaGen: 1e-5).
        position_scheme: "learned" (absolute embeddings, one vector per position) or "rope_2d" (LlamaGen's
            2-D rotary embedding of queries and keys, see `rope_2d_table`); rope_base: its base.
        norm_type: "rmsnorm" (LlamaGen) or "layernorm" (GPT-2 / minGPT, VQGAN-LC's GPT-LC).
        ffn_type: "swiglu" (LlamaGen; hidden from ffn_multiple_of) or "gelu" (GPT-2 / minGPT: 4 x hidden_size).
        bias: biases in the attention and feed-forward linears (minGPT: True; LlamaGen: False). The head
            has none in either.
    """

    @register_to_config
    def __init__(self, codebook_size: int = 16384, grid_height: int = 16, grid_width: int = 16,
                 tokens_per_position: int = 1, num_classes: int = 1000, hidden_size: int = 768,
                 num_layers: int = 12, num_heads: int = 12, ffn_multiple_of: int = 256, dropout: float = 0.0,
                 norm_eps: float = 1e-5, position_scheme: str = "learned", rope_base: float = 10000.0,
                 norm_type: str = "rmsnorm", ffn_type: str = "swiglu", bias: bool = False):
        super().__init__()
        for name, value, allowed in (("position_scheme", position_scheme, POSITION_SCHEMES),
                                     ("norm_type", norm_type, NORM_TYPES), ("ffn_type", ffn_type, FFN_TYPES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
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
        if position_scheme == "learned":
            self.position_embedding = nn.Parameter(torch.zeros(1, self.seq_len, hidden_size))
        else:
            self.position_embedding = None
            self.register_buffer("rope", rope_2d_table(grid_height, grid_width, hidden_size // num_heads, rope_base),
                                 persistent=False)
        hidden = (_find_multiple(int(2 * 4 * hidden_size / 3), ffn_multiple_of) if ffn_type == "swiglu"
                  else 4 * hidden_size)
        self.blocks = nn.ModuleList(_Block(hidden_size, num_heads, hidden, dropout, norm_eps, norm_type, ffn_type, bias)
                                    for _ in range(num_layers))
        self.norm = _norm(norm_type, hidden_size, norm_eps)
        self.head = Linear(hidden_size, m * k, bias=False)
        self.apply(self._init)
        if self.position_embedding is not None:
            nn.init.normal_(self.position_embedding, std=0.02)
        nn.init.zeros_(self.head.weight)  # LlamaGen: the head starts at uniform predictions

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

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
        x, rope = self._add_positions(x, 0)
        for block in self.blocks:
            x = block(x, rope=rope)
        return self.norm(x)

    def _add_positions(self, x: torch.Tensor, start: int):
        """Sequence steps [start, start + T) of x (B, T, D): learned embeddings added, or the rotary rows."""
        if isinstance(start, torch.Tensor):  # compiled decoding: one step at the (1,) position tensor
            rows = start
        else:
            rows = slice(start, start + x.shape[1])
        if self.position_embedding is not None:
            return x + self.position_embedding[:, rows], None
        return x, self.rope[rows]

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

    def kv_caches(self, rows: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One (keys, values) pair of zeroed (rows, heads, L, head_dim) tensors per block. Zeroed, not
        empty: the fixed-shape step multiplies the masked entries by probability 0, and uninitialised
        memory can hold NaN or inf, which 0 does not cancel."""
        c = self.config
        shape = (rows, c.num_heads, self.seq_len, c.hidden_size // c.num_heads)
        return [(torch.zeros(shape, device=self.device, dtype=self.dtype),
                 torch.zeros(shape, device=self.device, dtype=self.dtype)) for _ in self.blocks]

    def decode_step(self, x: torch.Tensor, pos, caches) -> torch.Tensor:
        """One sampling step: the embeddings x (rows, 1, D) of sequence step `pos` -> next-position
        logits (rows, m, K) in fp32, the step's keys and values written into `caches`. `pos` is an int
        (eager: attention over the cache's first pos + 1 entries) or a (1,) long tensor (the
        fixed-shape step `torch.compile` traces once: attention over the whole cache, later entries
        masked)."""
        h, rope = self._add_positions(x, pos)
        for block, cache in zip(self.blocks, caches):
            h = block(h, cache, pos, rope)
        return self._logits(self.norm(h))[:, 0].float()

    @torch.no_grad()
    def generate(self, class_labels: torch.Tensor, guidance_scale: float = 1.0, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, generator=None, progress=None,
                 compile: bool = False) -> torch.Tensor:
        """Sample index grids (B, h, w[, m]) with a static KV cache.

        With guidance_scale != 1 the conditional and null-class rows run in one batch of 2B and the
        logits are mixed as uncond + scale * (cond - uncond) before temperature / top-k / top-p.
        `progress` is an optional callable wrapping the step range (a tqdm bar).
        compile=True runs the model's step through `torch.compile` (traced once per model and row
        count, see `compiled_decoding`); guidance and sampling stay eager, so a fixed generator draws
        the same random numbers as the eager path.
        """
        c = self.config
        b = class_labels.shape[0]
        labels = class_labels.to(self.device).long()
        cfg = guidance_scale != 1.0
        if cfg:
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])
        if compile:
            step, caches = compiled_decoding(self, labels.shape[0])
            positions = torch.arange(self.seq_len, device=self.device)
        else:
            step, caches = GPTPrior.decode_step, self.kv_caches(labels.shape[0])
        out = torch.empty(b, self.seq_len, c.tokens_per_position, dtype=torch.long, device=self.device)
        x = self.class_embedding(labels)[:, None]
        steps = range(self.seq_len)
        for t in (progress(steps) if progress else steps):
            logits = step(self, x, positions[t:t + 1] if compile else t, caches)  # (rows, m, K) fp32
            if cfg:
                logits = guide(logits[:b], logits[b:], guidance_scale)
            nxt = sample_tokens(logits.cpu() if _cpu_generator(generator) else logits, temperature, top_k, top_p,
                                generator).to(self.device)
            out[:, t] = nxt
            x = self._embed_tokens((torch.cat([nxt, nxt]) if cfg else nxt)[:, None])
        shape = (b, c.grid_height, c.grid_width) + ((c.tokens_per_position,) if c.tokens_per_position > 1 else ())
        return out.reshape(shape)


# model -> {(rows, device, dtype): (compiled step, its caches)}; weak, so a freed model frees its caches
_COMPILED = weakref.WeakKeyDictionary()


def compiled_decoding(model: GPTPrior, rows: int):
    """`GPTPrior.decode_step` (called as step(model, x, pos, caches)) compiled for a fixed shape, and the KV caches it writes, kept per model and
    row count: the caches are allocated once so that CUDA graphs (mode "reduce-overhead" on CUDA)
    replay on the same addresses, and later calls neither retrace nor reallocate. On the CPU the
    default inductor mode is used. Weights are read at run time (not frozen), so training between
    calls is seen."""
    key = (rows, model.device, model.dtype)
    entries = _COMPILED.setdefault(model, {})
    if key not in entries:
        caches = model.kv_caches(rows)
        if model.device.type == "cuda":
            for tensor in (t for pair in caches for t in pair):
                torch._dynamo.mark_static_address(tensor)
        mode = "reduce-overhead" if model.device.type == "cuda" else None
        # the unbound method: a bound one in the value would keep the weak key (the model) alive
        entries[key] = (torch.compile(GPTPrior.decode_step, fullgraph=True, dynamic=False, mode=mode), caches)
    return entries[key]


def _cpu_generator(generator) -> bool:
    g = generator[0] if isinstance(generator, list) else generator
    return g is not None and g.device.type == "cpu"
