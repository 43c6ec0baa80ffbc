"""FD-DINOv2's feature extractor with local weights: torch-fidelity 0.4.0's DINOv2 extractor (its
preprocessing: TF1-compatible bilinear resize of the uint8 images to 224 x 224, ImageNet mean/std;
its output: the CLS token after the final norm) with the network built from transformers'
`Dinov2Model`, because torch-fidelity itself only loads it from torch hub (a weights path raises
NotImplementedError there, and offline the hub is unreachable).

Weights: the official `dinov2_vit?14_pretrain.pth` (facebookresearch/dinov2; read with
weights_only=True, keys mapped to transformers' names) or a transformers folder (`save_pretrained`,
e.g. a local copy of facebook/dinov2-large). One detail of the official network is kept that
transformers' copy changes: the 37 x 37 position embeddings are resized to the 16 x 16 patch grid
by bicubic interpolation with scale factor (16 + 0.1) / 37 (dinov2's `interpolate_offset`), not to
the size 16 (transformers), which moves every feature slightly.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_dinov2 import MODEL_METADATA, FeatureExtractorDinoV2

# torch-fidelity's names -> (width, depth, heads, SwiGLU MLP), as dinov2/hub/backbones.py builds them
ARCHS = {"dinov2-vit-s-14": (384, 12, 6, False), "dinov2-vit-b-14": (768, 12, 12, False),
         "dinov2-vit-l-14": (1024, 24, 16, False), "dinov2-vit-g-14": (1536, 40, 24, True)}
assert set(ARCHS) == set(MODEL_METADATA)
OFFICIAL_IMAGE_SIZE, PATCH, INTERPOLATE_OFFSET = 518, 14, 0.1


def dinov2_config(name: str):
    from transformers import Dinov2Config

    width, depth, heads, swiglu = ARCHS[name]
    return Dinov2Config(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, mlp_ratio=4,
                        image_size=OFFICIAL_IMAGE_SIZE, patch_size=PATCH, layerscale_value=1.0,
                        layer_norm_eps=1e-6, use_swiglu_ffn=swiglu)


def official_to_transformers(state: dict, num_layers: int, swiglu: bool) -> dict:
    """facebookresearch/dinov2's state dict (blocks.i.attn.qkv, ls1.gamma, ...) under transformers'
    Dinov2Model names (the fused qkv and SwiGLU w12 split into their parts)."""
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.position_embeddings": state["pos_embed"],
           "embeddings.mask_token": state["mask_token"].reshape(1, -1),
           "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    for i in range(num_layers):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            q, k, v = state[f"{src}attn.qkv.{part}"].chunk(3)
            out.update({f"{dst}attention.q_proj.{part}": q, f"{dst}attention.k_proj.{part}": k,
                        f"{dst}attention.v_proj.{part}": v,
                        f"{dst}attention.o_proj.{part}": state[f"{src}attn.proj.{part}"],
                        f"{dst}norm1.{part}": state[f"{src}norm1.{part}"], f"{dst}norm2.{part}": state[f"{src}norm2.{part}"]})
            if swiglu:
                gate, up = state[f"{src}mlp.w12.{part}"].chunk(2)
                out.update({f"{dst}mlp.gate_proj.{part}": gate, f"{dst}mlp.up_proj.{part}": up,
                            f"{dst}mlp.down_proj.{part}": state[f"{src}mlp.w3.{part}"]})
            else:
                out.update({f"{dst}mlp.fc1.{part}": state[f"{src}mlp.fc1.{part}"],
                            f"{dst}mlp.fc2.{part}": state[f"{src}mlp.fc2.{part}"]})
        out[f"{dst}layer_scale1.lambda1"] = state[f"{src}ls1.gamma"]
        out[f"{dst}layer_scale2.lambda1"] = state[f"{src}ls2.gamma"]
    return out


def _official_position_embeddings(embeddings, height: int, width: int) -> torch.Tensor:
    """dinov2's interpolate_pos_encoding: bicubic by scale factor (n + 0.1) / M, no antialiasing."""
    table = embeddings.position_embeddings
    n, m = table.shape[1] - 1, int(round((table.shape[1] - 1) ** 0.5))
    rows, cols = height // PATCH, width // PATCH
    if rows * cols == n and rows == cols:
        return table
    grid = table[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((rows + INTERPOLATE_OFFSET) / m, (cols + INTERPOLATE_OFFSET) / m),
                         mode="bicubic", antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1).to(table.dtype)
    return torch.cat([table[:, :1], grid], dim=1)


class Dinov2Backbone(torch.nn.Module):
    """Normalised (B, 3, H, W) -> the CLS token after the final LayerNorm, as dinov2's hub model."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        embeddings = model.embeddings
        embeddings.interpolate_pos_encoding = lambda emb, h, w: _official_position_embeddings(embeddings, h, w)

    def forward(self, x):
        return self.model(pixel_values=x).pooler_output


def load_dinov2(name: str, weights_path: str) -> Dinov2Backbone:
    """The network of `name` with the weights of `weights_path` (an official .pth or a transformers folder)."""
    from transformers import Dinov2Model

    if name not in ARCHS:
        raise ValueError(f"unknown DINOv2 model {name!r}: use one of {sorted(ARCHS)}")
    if os.path.isdir(weights_path):
        model = Dinov2Model.from_pretrained(weights_path)
        want = dinov2_config(name)
        if (model.config.hidden_size, model.config.num_hidden_layers) != (want.hidden_size, want.num_hidden_layers):
            raise ValueError(f"{weights_path!r} is a {model.config.num_hidden_layers}-layer, {model.config.hidden_size}"
                             f"-wide DINOv2, not {name} ({want.num_hidden_layers} x {want.hidden_size})")
    else:
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{weights_path!r} is not a readable DINOv2 checkpoint: {e}") from None
        config = dinov2_config(name)
        missing = [k for k in ("pos_embed", "blocks.0.attn.qkv.weight", "norm.weight") if k not in state]
        if missing or state["norm.weight"].shape[0] != config.hidden_size:
            raise ValueError(f"{weights_path!r} is not the official {name} checkpoint ("
                             + (f"no {missing[0]!r}" if missing else f"width {state['norm.weight'].shape[0]}, "
                                f"expected {config.hidden_size}") + ")")
        model = Dinov2Model(config)
        mapped = official_to_transformers(state, config.num_hidden_layers, config.use_swiglu_ffn)
        if set(mapped) != set(model.state_dict()):
            import transformers

            odd = sorted(set(model.state_dict()) ^ set(mapped))[:3]
            raise ValueError(f"transformers {transformers.__version__} names Dinov2Model's weights otherwise (e.g. "
                             f"{odd}); lcgen maps the official checkpoint to the names of transformers 5.24: "
                             "convert it to a transformers folder instead, or install that version")
        model.load_state_dict(mapped, strict=True)
    return Dinov2Backbone(model.eval())


class LocalDinoV2(FeatureExtractorDinoV2):
    """torch-fidelity's DINOv2 extractor (its forward: resize, normalise, CLS features) on local weights."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, feature_extractor_internal_dtype=None,
                 **kwargs):
        if not feature_extractor_weights_path:
            raise ValueError(f"{name} needs local weights: --feature-extractor-weights = the official "
                             f"{MODEL_METADATA.get(name, 'dinov2')}_pretrain.pth or a transformers folder")
        FeatureExtractorBase.__init__(self, name, features_list)  # its checks, without the hub load
        self.feature_extractor_internal_dtype = {None: torch.float32, "float32": torch.float32,
                                                 "float64": torch.float64}[feature_extractor_internal_dtype]
        self.model = load_dinov2(name, feature_extractor_weights_path)
        self.to(self.feature_extractor_internal_dtype)
        self.requires_grad_(False)
        self.eval()
