"""Published priors as ordinary lcgen models: LlamaGen's class-conditional GPTs and VQGAN-LC's GPT-LC
(minGPT) -> `GPTPrior`, and DiT checkpoints (facebookresearch/DiT's and VQGAN-LC's DiT-LC, which keeps DiT's `models.py`) -> `DiTModel`.

LlamaGen's c2i `Transformer` is lcgen's `GPTPrior` with `position_scheme="rope_2d"`: the same
RMSNorm / SwiGLU / bias-free blocks, the class embedding table with its null row `num_classes` as the
first sequence step (`cls_token_num` 1), a fused `wqkv` in (q, k, v) order and an untied head. Keys:

| LlamaGen                                  | lcgen `GPTPrior`                     |
|-------------------------------------------|--------------------------------------|
| `tok_embeddings.weight`                   | `token_embedding.weight`             |
| `cls_embedding.embedding_table.weight`    | `class_embedding.weight`             |
| `layers.i.attention.wqkv` / `.wo`         | `blocks.i.attn.qkv` / `.proj`        |
| `layers.i.feed_forward.w1/w2/w3`          | `blocks.i.ffn.w1/w2/w3`              |
| `layers.i.attention_norm` / `ffn_norm`    | `blocks.i.attn_norm` / `ffn_norm`    |
| `norm`, `output`                          | `norm`, `head`                       |
"""
from __future__ import annotations

import re

import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from lcgen.official_checkpoints import take

from .dit import DIT_SIZES, DiTModel, sincos_2d
from .gpt import GPT_SIZES, GPTPrior
from .ldm import LDM_CROSS_ATTENTION_SIZES, ClassCrossAttentionUNet

# LlamaGen's GPT_models with class-conditional checkpoints (c2i_B_256.pt ... c2i_XXL_384.pt, c2i_3B_384.pt)
LLAMAGEN_GPT_MODELS = ("GPT-B", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-XXXL", "GPT-3B")
_LAYER = {"attention.wqkv": "attn.qkv", "attention.wo": "attn.proj", "feed_forward.w1": "ffn.w1",
          "feed_forward.w2": "ffn.w2", "feed_forward.w3": "ffn.w3", "attention_norm": "attn_norm",
          "ffn_norm": "ffn_norm"}
_TOP = {"tok_embeddings": "token_embedding", "cls_embedding.embedding_table": "class_embedding", "norm": "norm",
        "output": "head"}


def _rename(key: str, layers: str, per_layer: dict, top: dict) -> str:
    """`<layers>.i.<name>.<weight|bias>` -> `blocks.i.<per_layer[name]>.<...>`, `<name>.<...>` -> `<top[name]>.<...>`."""
    m = re.fullmatch(rf"{layers}\.(\d+)\.(.+)\.(weight|bias)", key)
    if m and m.group(2) in per_layer:
        return f"blocks.{m.group(1)}.{per_layer[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(.+)\.(weight|bias)", key)
    if m and m.group(1) in top:
        return f"{top[m.group(1)]}.{m.group(2)}"
    raise KeyError(key)


def parse_llamagen_name(filename: str) -> tuple[str, int]:
    """`c2i_L_384.pt` -> ("GPT-L", 384): the model and image size LlamaGen's file names carry."""
    m = re.search(r"c2i_(B|L|XL|XXL|XXXL|3B)_(\d+)", filename)
    if not m:
        raise ValueError(f"cannot read the model and image size from {filename!r} (expected c2i_<size>_<res>.pt); "
                         f"pass them explicitly")
    return f"GPT-{m.group(1)}", int(m.group(2))


def gpt_from_llamagen(state: dict[str, torch.Tensor], model: str | None = "GPT-B", image_size: int = 256,
                      downsample_size: int = 16, num_heads: int | None = None, rope_base: float = 10000.0) -> GPTPrior:
    """A LlamaGen c2i GPT state dict (the "model" entry of c2i_B_256.pt, or an FSDP file itself) -> `GPTPrior` (eval).

    The vocabulary, width, depth and class count come from the weights; the head count from `model`
    (LlamaGen's GPT_models) or `num_heads`; the token grid from image_size / downsample_size."""
    if model is not None and model not in LLAMAGEN_GPT_MODELS:
        raise ValueError(f"unknown LlamaGen model {model!r}; expected one of {LLAMAGEN_GPT_MODELS}")
    if model is None and not (isinstance(num_heads, int) and num_heads > 0):
        raise ValueError("pass model (e.g. 'GPT-B') or num_heads")
    if not (isinstance(image_size, int) and isinstance(downsample_size, int) and image_size > 0 and downsample_size > 0):
        raise ValueError(f"image_size and downsample_size must be positive ints, got {image_size!r}, {downsample_size!r}")
    if image_size % downsample_size:
        raise ValueError(f"image_size {image_size} is not divisible by downsample_size {downsample_size}")
    state = {k: v for k, v in state.items() if k != "freqs_cis" and not k.endswith(("k_cache", "v_cache"))}
    for need in ("tok_embeddings.weight", "cls_embedding.embedding_table.weight", "layers.0.attention.wqkv.weight"):
        if need not in state:
            raise ValueError(f"not a LlamaGen c2i GPT checkpoint: no {need}")
    vocab, dim = state["tok_embeddings.weight"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
    if model is not None:
        want_layers, num_heads, width = GPT_SIZES[model]
        if (dim, layers) != (width, want_layers):
            raise ValueError(f"the checkpoint has width {dim} and {layers} layers, but {model} has {width} and "
                             f"{want_layers}: pass the right model")
    wqkv = state["layers.0.attention.wqkv.weight"]
    if wqkv.shape[0] != 3 * dim:
        raise ValueError(f"grouped-query attention (wqkv {tuple(wqkv.shape)}) is not supported: lcgen's GPT has "
                         f"n_kv_head == n_head")
    grid = image_size // downsample_size
    prior = GPTPrior(codebook_size=vocab, grid_height=grid, grid_width=grid, tokens_per_position=1,
                     num_classes=state["cls_embedding.embedding_table.weight"].shape[0] - 1, hidden_size=dim,
                     num_layers=layers, num_heads=num_heads, ffn_multiple_of=256, dropout=0.0, norm_eps=1e-5,
                     position_scheme="rope_2d", rope_base=rope_base)
    try:
        weights = {_rename(k, "layers", _LAYER, _TOP): v for k, v in state.items()}
    except KeyError as e:
        raise ValueError(f"unexpected key {e.args[0]!r} in the LlamaGen GPT checkpoint") from None
    take(weights, {k: tuple(v.shape) for k, v in prior.state_dict().items()}, f"LlamaGen {model or 'GPT'}")
    prior.load_state_dict(weights, strict=True)
    return prior.eval()


# VQGAN-LC's GPT-LC (vqgan-gpt-lc/models/mingpt.py, minGPT) -> lcgen GPTPrior with norm_type="layernorm",
# ffn_type="gelu", bias=True. Its q, k, v are three linears, concatenated here into lcgen's fused qkv.
_MINGPT_LAYER = {"ln1": "attn_norm", "ln2": "ffn_norm", "attn.proj": "attn.proj", "mlp.0": "ffn.fc1",
                 "mlp.2": "ffn.fc2"}
_MINGPT_TOP = {"ln_f": "norm"}
GPT_LC_HEADS = {1024: 16}  # models_gpt.py's "small" GPT-LC: 24 layers, 16 heads, width 1024


def gpt_from_vqgan_lc(state: dict[str, torch.Tensor], num_classes: int = 1000, grid_size: int = 16,
                      num_heads: int | None = None) -> GPTPrior:
    """A GPT-LC state dict (VQGAN-LC's `VQGANTransformer`: the `transformer.*` keys of gpt-lc-100K-f16.pth;
    its `vqgan.*` keys are the tokenizer) -> `GPTPrior` (eval).

    minGPT keeps the class in its vocabulary: `tok_emb` holds K image tokens then `num_classes` class
    tokens (class c is token K + c, the first sequence step), and its head scores all K + num_classes
    while sampling keeps the first K. lcgen's class embedding takes the class rows and its head the
    image rows; the null-class row (classifier-free guidance) was never trained and is zero, so a
    converted GPT-LC samples with guidance_scale 1, as GPT-LC does. Positions: the first
    grid_size**2 of minGPT's learned `pos_emb` (block size 257)."""
    if any(k.startswith("transformer.") for k in state):
        state = {k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")}
    for need in ("tok_emb.weight", "pos_emb", "blocks.0.attn.query.weight", "head.weight"):
        if need not in state:
            raise ValueError(f"not a VQGAN-LC GPT-LC (minGPT) checkpoint: no {need}")
    if not (isinstance(num_classes, int) and num_classes > 0 and isinstance(grid_size, int) and grid_size > 0):
        raise ValueError(f"num_classes and grid_size must be positive ints, got {num_classes!r}, {grid_size!r}")
    vocab, dim = state["tok_emb.weight"].shape
    k = vocab - num_classes
    seq_len = grid_size * grid_size
    if k <= 0:
        raise ValueError(f"tok_emb has {vocab} rows: too few for {num_classes} classes")
    if state["pos_emb"].shape[1] < seq_len:
        raise ValueError(f"pos_emb has {state['pos_emb'].shape[1]} positions, fewer than the {seq_len} of a "
                         f"{grid_size}x{grid_size} grid")
    num_heads = num_heads or GPT_LC_HEADS.get(dim)
    if num_heads is None:
        raise ValueError(f"width {dim} is not GPT-LC's ({sorted(GPT_LC_HEADS)}): pass num_heads")
    layers = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
    prior = GPTPrior(codebook_size=k, grid_height=grid_size, grid_width=grid_size, tokens_per_position=1,
                     num_classes=num_classes, hidden_size=dim, num_layers=layers, num_heads=num_heads, dropout=0.0,
                     norm_eps=1e-5, position_scheme="learned", norm_type="layernorm", ffn_type="gelu", bias=True)
    tok, head = state["tok_emb.weight"], state["head.weight"]
    weights = {"token_embedding.weight": tok[:k], "head.weight": head[:k],
               "class_embedding.weight": torch.cat([tok[k:], tok.new_zeros(1, dim)]),
               "position_embedding": state["pos_emb"][:, :seq_len]}
    for i in range(layers):
        for part in ("weight", "bias"):
            weights[f"blocks.{i}.attn.qkv.{part}"] = torch.cat(
                [state[f"blocks.{i}.attn.{name}.{part}"] for name in ("query", "key", "value")])
    # what is left after the embeddings, the head and the fused q/k/v (minGPT's causal mask is a buffer)
    handled = re.compile(r"tok_emb\.weight|head\.weight|pos_emb|blocks\.\d+\.attn\.((query|key|value)\.(weight|bias)|mask)")
    try:
        weights.update({_rename(key, "blocks", _MINGPT_LAYER, _MINGPT_TOP): v for key, v in state.items()
                        if not handled.fullmatch(key)})
    except KeyError as e:
        raise ValueError(f"unexpected key {e.args[0]!r} in the GPT-LC checkpoint") from None
    take(weights, {name: tuple(v.shape) for name, v in prior.state_dict().items()}, "GPT-LC")
    prior.load_state_dict(weights, strict=True)
    return prior.eval()


LDM_UNET_PREFIX = "model.diffusion_model."


def ldm_from_latent_diffusion(state: dict[str, torch.Tensor], size: str = "LDM-LC-f16", use_ema: bool = True):
    """A latent-diffusion `LatentDiffusion` state dict with class cross-attention (VQGAN-LC's ldm-lc-f16.pth /
    ldm-lc-f8.pth "state_dict") -> `ClassCrossAttentionUNet` (eval).

    The UNet's keys (`model.diffusion_model.*`, or with use_ema its EMA copy `model_ema.*`, which LDM
    samples with: `ema_scope`) go through diffusers' own LDM-to-diffusers UNet converter; the class
    embedding is `cond_stage_model.embedding.weight` (num_classes + 1 rows). `size` names the UNet
    (LDM_CROSS_ATTENTION_SIZES); latent channels and side come from the weights and the size."""
    if size not in LDM_CROSS_ATTENTION_SIZES:
        raise ValueError(f"unknown LDM-LC size {size!r}; expected one of {sorted(LDM_CROSS_ATTENTION_SIZES)}")
    for need in (LDM_UNET_PREFIX + "input_blocks.0.0.weight", LDM_UNET_PREFIX + "out.2.weight",
                 "cond_stage_model.embedding.weight"):
        if need not in state:
            raise ValueError(f"not a class-conditional latent-diffusion checkpoint: no {need}")
    unet_keys = [k for k in state if k.startswith(LDM_UNET_PREFIX)]
    if use_ema and any(k.startswith("model_ema.") for k in state):
        # LitEma keeps each parameter as a buffer named without dots: model_ema.diffusion_modelinput_blocks00weight
        flat = {k: "model_ema." + k[len("model."):].replace(".", "") for k in unet_keys}
        missing = [k for k, e in flat.items() if e not in state]
        if missing:
            raise ValueError(f"the checkpoint's EMA copy lacks {len(missing)} UNet weight(s), e.g. {missing[0]}: "
                             f"convert without EMA")
        unet_state = {k: state[flat[k]] for k in unet_keys}
    else:
        unet_state = {k: state[k] for k in unet_keys}
    classes, context = state["cond_stage_model.embedding.weight"].shape
    first = state[LDM_UNET_PREFIX + "input_blocks.0.0.weight"]
    side = {"LDM-LC-f16": 16, "LDM-LC-f8": 32}[size]
    model = ClassCrossAttentionUNet(num_classes=classes - 1, context_dim=context, sample_size=side,
                                    in_channels=first.shape[1], out_channels=state[LDM_UNET_PREFIX + "out.2.weight"].shape[0],
                                    **LDM_CROSS_ATTENTION_SIZES[size])
    weights = {"unet." + k: v for k, v in convert_ldm_unet_checkpoint(unet_state, dict(model.unet.config)).items()}
    weights["class_embedding.weight"] = state["cond_stage_model.embedding.weight"]
    take(weights, {k: tuple(v.shape) for k, v in model.state_dict().items()}, f"LDM-LC ({size})")
    model.load_state_dict(weights, strict=True)
    return model.eval()


# DiT's models.py names -> lcgen DiTModel names (blocks.i.* and the final layer)
_DIT_BLOCK = {"attn.qkv": "qkv", "attn.proj": "proj", "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2",
              "adaLN_modulation.1": "adaLN_modulation.1"}
_DIT_TOP = {"x_embedder.proj": "patch_embed", "t_embedder.mlp.0": "t_embedder.0", "t_embedder.mlp.2": "t_embedder.2",
            "y_embedder.embedding_table": "y_embedder", "final_layer.linear": "proj_out",
            "final_layer.adaLN_modulation.1": "adaLN_out.1"}


def dit_from_official(state: dict[str, torch.Tensor], num_heads: int | None = None) -> DiTModel:
    """A DiT `models.py` state dict (DiT-XL-2-256x256.pt, DiT-LC's checkpoint's "ema") -> `DiTModel` (eval).

    Latent channels, patch, width, depth, classes, latent side and learn_sigma come from the weights;
    the heads from DiT's named sizes by width (XL: 16), or `num_heads`. DiT's fixed sin-cos `pos_embed`
    is checked against lcgen's (the same table) and not loaded."""
    for need in ("x_embedder.proj.weight", "pos_embed", "final_layer.linear.weight", "y_embedder.embedding_table.weight"):
        if need not in state:
            raise ValueError(f"not a DiT checkpoint: no {need}")
    width, channels, patch, _ = state["x_embedder.proj.weight"].shape
    tokens = state["pos_embed"].shape[1]
    grid = int(round(tokens ** 0.5))
    if grid * grid != tokens:
        raise ValueError(f"pos_embed has {tokens} positions: not a square grid")
    out = state["final_layer.linear.weight"].shape[0] // (patch * patch)
    if out not in (channels, 2 * channels):
        raise ValueError(f"final layer gives {out} channels for {channels}-channel latents")
    if num_heads is None:
        heads = {w: h for _, w, h in DIT_SIZES.values()}
        if width not in heads:
            raise ValueError(f"width {width} is not a DiT size {sorted(heads)}: pass num_heads")
        num_heads = heads[width]
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / width
    if not torch.allclose(state["pos_embed"].float(), sincos_2d(width, grid)[None], atol=1e-6):
        raise ValueError("the checkpoint's pos_embed is not DiT's fixed 2-D sin-cos table")
    model = DiTModel(sample_size=grid * patch, patch_size=patch, in_channels=channels, hidden_size=width,
                     num_layers=layers, num_heads=num_heads, mlp_ratio=mlp_ratio,
                     num_classes=state["y_embedder.embedding_table.weight"].shape[0] - 1, learn_sigma=out == 2 * channels)
    try:
        weights = {_rename(k, "blocks", _DIT_BLOCK, _DIT_TOP): v for k, v in state.items() if k != "pos_embed"}
    except KeyError as e:
        raise ValueError(f"unexpected key {e.args[0]!r} in the DiT checkpoint") from None
    take(weights, {k: tuple(v.shape) for k, v in model.state_dict().items()}, "DiT")
    model.load_state_dict(weights, strict=True)
    return model.eval()
