"""Published tokenizers as ordinary `VQTokenizer`s: LlamaGen's VQ-16 / VQ-8, taming's VQGAN and
VQGAN-LC's 100K-code f16 / f8 tokenizers.

Both are taming's encoder/decoder, which lcgen's "vqgan" backbone builds from diffusers' blocks, so a
conversion is a renaming of keys (and the 1x1-conv attention projections reshaped to linears):

| official                                  | lcgen (diffusers Encoder/Decoder)               |
|-------------------------------------------|-------------------------------------------------|
| LlamaGen `conv_blocks.i.res.j`, taming `down.i.block.j` | `down_blocks.i.resnets.j`         |
| `...attn.j.{norm,q,k,v,proj_out}`         | `...attentions.j.{group_norm,to_q,to_k,to_v,to_out.0}` |
| `downsample.conv` / `upsample.conv`       | `downsamplers.0.conv` / `upsamplers.0.conv`     |
| LlamaGen `mid.0/1/2`, taming `mid.block_1/attn_1/block_2` | `mid_block.resnets.0/attentions.0/resnets.1` |
| `norm_out`, `nin_shortcut`, `quant_conv`  | `conv_norm_out`, `conv_shortcut`, `pre_quant_conv` |
| `quantize.embedding.weight` (K, D)        | `quantizer.codebook.embed` (1, K, D)            |
| VQGAN-LC `tok_embeddings.weight` (K, 768) | `quantizer.codebook.frozen` (the frozen initial codebook) |
| VQGAN-LC `codebook_projection` (Linear)   | `quantizer.codebook.projector`                  |

Decoder levels: LlamaGen stores them lowest resolution first (as diffusers does); taming stores
`up.i` by level (highest resolution first), so its `up.i` is `up_blocks.(L-1-i)`.
LlamaGen places attention in the lowest-resolution level only (`attn_resolutions` = that side) and
l2-normalises latents and codes; taming uses `attn_resolutions` from its config and plain l2 codes.
"""
from __future__ import annotations

import os
import re

import torch

from lcgen.official_checkpoints import take

from .model import VQTokenizer

# LlamaGen's VQ_models: encoder/decoder ch_mult; ch 128, 2 res blocks, z 256 in both
LLAMAGEN_VQ_MODELS = {"VQ-16": (1, 1, 2, 2, 4), "VQ-8": (1, 2, 2, 4)}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_MID_LLAMAGEN = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}
_MID_TAMING = {"block_1": "resnets.0", "attn_1": "attentions.0", "block_2": "resnets.1"}


def _rename_block_part(rest: str) -> str:
    """Inside a resnet or attention block: taming's names -> diffusers'."""
    head, _, tail = rest.partition(".")
    if head in _ATTN:
        return f"{_ATTN[head]}.{tail}"
    return rest.replace("nin_shortcut", "conv_shortcut")


def _rename(key: str, num_levels: int, source: str) -> str:
    """One official key -> the lcgen key (raises on a name neither layout has)."""
    top = {"quant_conv": "pre_quant_conv", "post_quant_conv": "post_quant_conv",
           "codebook_projection": "quantizer.codebook.projector"}
    first, _, rest = key.partition(".")
    if first in top:
        return f"{top[first]}.{rest}"
    if key == "quantize.embedding.weight":
        return "quantizer.codebook.embed"
    if key == "tok_embeddings.weight":
        return "quantizer.codebook.frozen"
    if first not in ("encoder", "decoder"):
        raise KeyError(key)
    side = first
    if rest.startswith("norm_out."):
        return f"{side}.conv_norm_out.{rest[len('norm_out.'):]}"
    if rest.split(".")[0] in ("conv_in", "conv_out"):
        return f"{side}.{rest}"
    mid = re.fullmatch(r"mid\.(\w+?)\.(.+)", rest)
    if mid:
        names = _MID_LLAMAGEN if source == "llamagen" else _MID_TAMING
        return f"{side}.mid_block.{names[mid.group(1)]}.{_rename_block_part(mid.group(2))}"
    if source == "llamagen":
        m = re.fullmatch(r"conv_blocks\.(\d+)\.(res|attn|downsample|upsample)\.(.+)", rest)
    else:
        m = re.fullmatch(r"(?:down|up)\.(\d+)\.(block|attn|downsample|upsample)\.(.+)", rest)
    if not m:
        raise KeyError(key)
    level, part, tail = int(m.group(1)), m.group(2), m.group(3)
    if source == "taming" and side == "decoder":
        level = num_levels - 1 - level
    blocks = "down_blocks" if side == "encoder" else "up_blocks"
    if part in ("downsample", "upsample"):
        return f"{side}.{blocks}.{level}.{part}rs.0.{tail}"
    group = "resnets" if part in ("res", "block") else "attentions"
    j, _, inner = tail.partition(".")
    return f"{side}.{blocks}.{level}.{group}.{j}.{_rename_block_part(inner)}"


def convert_state_dict(state: dict[str, torch.Tensor], num_levels: int, source: str) -> dict[str, torch.Tensor]:
    """Official taming-layout weights (`source` "llamagen" or "taming") -> lcgen `VQTokenizer` names."""
    out = {}
    for key, value in state.items():
        try:
            new = _rename(key, num_levels, source)
        except KeyError:
            raise ValueError(f"unexpected key {key!r} in the {source} checkpoint") from None
        if re.search(r"\.to_(q|k|v|out\.0)\.weight$", new):
            value = value.reshape(value.shape[0], value.shape[1])  # 1x1 conv -> linear
        if new == "quantizer.codebook.embed":  # (K, D) -> (1, K, D)
            value = value[None]
        out[new] = value
    return out


def _load_into(model: VQTokenizer, weights: dict[str, torch.Tensor], source: str) -> VQTokenizer:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    take(weights, expected, source)
    model.load_state_dict(weights, strict=True)
    return model.eval()


def llamagen_vq_model(checkpoint: str, model: str | None = None) -> str:
    """`model` checked, or read from LlamaGen's file name: VQ-8 for `vq_ds8_*`, VQ-16 otherwise."""
    if model is not None:
        if model not in LLAMAGEN_VQ_MODELS:
            raise ValueError(f"unknown LlamaGen VQ model {model!r}; expected one of {sorted(LLAMAGEN_VQ_MODELS)}")
        return model
    return "VQ-8" if re.search(r"ds8", os.path.basename(checkpoint)) else "VQ-16"


def llamagen_vq_config(model: str = "VQ-16", codebook_size: int = 16384, codebook_embed_dim: int = 8,
                       image_size: int = 256, ch: int = 128, z_channels: int = 256) -> dict:
    """The `VQTokenizer` config of LlamaGen's `VQ_models[model]` (its `ModelArgs` defaults otherwise)."""
    if model not in LLAMAGEN_VQ_MODELS:
        raise ValueError(f"unknown LlamaGen VQ model {model!r}; expected one of {sorted(LLAMAGEN_VQ_MODELS)}")
    ch_mult = LLAMAGEN_VQ_MODELS[model]
    factor = 2 ** (len(ch_mult) - 1)
    if image_size % factor:
        raise ValueError(f"image_size {image_size} is not divisible by {model}'s downsampling factor {factor}")
    return dict(backbone="vqgan", in_channels=3, resolution=image_size, ch=ch, ch_mult=ch_mult, num_res_blocks=2,
                attn_resolutions=(image_size // factor,), z_channels=z_channels, embed_dim=codebook_embed_dim,
                quantizer_kind="vq", codebook_size=codebook_size,
                quantizer_options={"normalize": True, "commitment_weight": 0.25, "codebook_weight": 1.0})


def tokenizer_from_llamagen(state: dict[str, torch.Tensor], model: str = "VQ-16", image_size: int = 256) -> VQTokenizer:
    """A LlamaGen VQ state dict (the "model" entry of vq_ds16_c2i.pt, as `load_state_dict` reads it) -> `VQTokenizer`.
    K and the code dim come from `quantize.embedding.weight`, the widths (ch 128, z 256 in the published
    files) from the encoder's first and last convs; the usage ring buffer is dropped."""
    state = {k: v for k, v in state.items() if k != "quantize.codebook_used"}
    for need in ("quantize.embedding.weight", "encoder.conv_in.weight", "encoder.conv_out.weight"):
        if need not in state:
            raise ValueError(f"not a LlamaGen VQ checkpoint: no {need}")
    k, d = state["quantize.embedding.weight"].shape
    config = llamagen_vq_config(model, k, d, image_size, ch=state["encoder.conv_in.weight"].shape[0],
                                z_channels=state["encoder.conv_out.weight"].shape[0])
    tok = VQTokenizer(**config)
    return _load_into(tok, convert_state_dict(state, len(config["ch_mult"]), "llamagen"), f"LlamaGen {model}")


def taming_config(ddconfig: dict, n_embed: int, embed_dim: int) -> dict:
    """The `VQTokenizer` config of taming's `VQModel(ddconfig, n_embed, embed_dim)` (its model.yaml params)."""
    need = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "resolution", "in_channels", "out_ch")
    missing = [k for k in need if k not in ddconfig]
    if missing:
        raise ValueError(f"taming ddconfig lacks {missing}")
    if ddconfig["in_channels"] != ddconfig["out_ch"] or ddconfig.get("double_z", False):
        raise ValueError("only taming VQ models with in_channels == out_ch and double_z false convert")
    if float(ddconfig.get("dropout", 0.0)) != 0.0:
        raise ValueError("taming checkpoints trained with dropout > 0 are not supported (lcgen's blocks have none)")
    return dict(backbone="vqgan", in_channels=ddconfig["in_channels"], resolution=ddconfig["resolution"], ch=ddconfig["ch"],
                ch_mult=tuple(ddconfig["ch_mult"]), num_res_blocks=ddconfig["num_res_blocks"],
                attn_resolutions=tuple(ddconfig["attn_resolutions"]), z_channels=ddconfig["z_channels"],
                embed_dim=embed_dim, quantizer_kind="vq", codebook_size=n_embed,
                quantizer_options={"commitment_weight": 0.25, "codebook_weight": 1.0})


def tokenizer_from_taming(state: dict[str, torch.Tensor], ddconfig: dict, n_embed: int, embed_dim: int) -> VQTokenizer:
    """A taming `VQModel` state dict (Lightning `state_dict`, loss/discriminator weights dropped) -> `VQTokenizer`."""
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    config = taming_config(ddconfig, n_embed, embed_dim)
    tok = VQTokenizer(**config)
    return _load_into(tok, convert_state_dict(state, len(config["ch_mult"]), "taming"), "taming VQGAN")


# VQGAN-LC's vqgan_configs/vq-f16.yaml and vq-f8.yaml (its runs set embed_dim 8 by argument, use_cblinear 1)
VQGAN_LC_DDCONFIGS = {
    "f16": dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 1, 2, 2, 4],
                num_res_blocks=2, attn_resolutions=[16], dropout=0.0),
    # attn_resolutions [16] matches no level of the f8 encoder (256..32 px): attention in the mid blocks only
    "f8": dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 2, 4],
               num_res_blocks=2, attn_resolutions=[16], dropout=0.0),
}
# VQGAN-LC's training-only modules, not part of the tokenizer
_VQGAN_LC_DROPPED = ("discriminator.", "perceptual_loss.")


def tokenizer_from_vqgan_lc(state: dict[str, torch.Tensor], config: str = "f16",
                            codebook: torch.Tensor | None = None) -> VQTokenizer:
    """A VQGAN-LC tokenizer state dict (the "state_dict" entry of vqgan-lc-100K-f16-dim8.pth) -> `VQTokenizer`
    with the "lc" quantizer: the frozen codebook (K, 768) projected by the trained linear layer, l2 search.

    The frozen codebook is `tok_embeddings.weight` when the checkpoint holds it, else `codebook` (the
    released `codebook-100K.pth` tensor); the discriminator and LPIPS weights are dropped."""
    if config not in VQGAN_LC_DDCONFIGS:
        raise ValueError(f"unknown VQGAN-LC config {config!r}; expected one of {sorted(VQGAN_LC_DDCONFIGS)}")
    state = {k: v for k, v in state.items() if not k.startswith(_VQGAN_LC_DROPPED)}
    if "codebook_projection.weight" not in state:
        raise ValueError("not a VQGAN-LC use_cblinear=1 checkpoint: no codebook_projection.weight "
                         "(MLP projectors, use_cblinear=2, are not supported)")
    if "tok_embeddings.weight" not in state:
        if codebook is None:
            raise ValueError("the checkpoint has no tok_embeddings.weight: pass the frozen codebook file (--codebook)")
        state["tok_embeddings.weight"] = codebook
    frozen = state["tok_embeddings.weight"].float()
    if frozen.ndim != 2 or frozen.shape[1] != state["codebook_projection.weight"].shape[1]:
        raise ValueError(f"codebook {tuple(frozen.shape)} does not fit the projector "
                         f"{tuple(state['codebook_projection.weight'].shape)}")
    ddconfig = VQGAN_LC_DDCONFIGS[config]
    embed_dim = state["codebook_projection.weight"].shape[0]
    tok = VQTokenizer(**{**taming_config(ddconfig, frozen.shape[0], embed_dim), "quantizer_kind": "lc",
                         "quantizer_options": None}, init_codebook=frozen)
    state["tok_embeddings.weight"] = frozen
    return _load_into(tok, convert_state_dict(state, len(ddconfig["ch_mult"]), "taming"), f"VQGAN-LC {config}")
