"""Small randomly initialised components shared by the prior, pipeline and extraction tests."""
import torch
from diffusers import DDIMScheduler

from lcgen.priors.dit import DiTModel
from lcgen.priors.gpt import GPTPrior
from lcgen.priors.ldm import build_ldm_unet
from lcgen.tokenizer import VQTokenizer

NAMES = {i: f"class{i}" for i in range(10)}
NAMES[3] = "dress, frock"  # a synonym list, as ImageNet's id2label


def tiny_tokenizer(kind: str = "looc", embed_dim: int = 16) -> VQTokenizer:
    options = {"chunk_dim": 4} if kind in ("looc", "pq") else {}
    torch.manual_seed(0)
    return VQTokenizer(backbone="vqvae", in_channels=1, resolution=28, embed_dim=embed_dim, quantizer_kind=kind,
                       codebook_size=32, quantizer_options=options, hidden_channels=16, residual_channels=8,
                       num_residual_layers=1).eval()


def tiny_gpt(tok: VQTokenizer, num_classes: int = 10) -> GPTPrior:
    return GPTPrior(codebook_size=tok.config.codebook_size, grid_height=7, grid_width=7,
                    tokens_per_position=getattr(tok.quantizer, "num_chunks", 1), num_classes=num_classes,
                    hidden_size=32, num_layers=2, num_heads=2, ffn_multiple_of=16).eval()


def tiny_dit(tok: VQTokenizer, num_classes: int = 10) -> DiTModel:
    return DiTModel(sample_size=7, patch_size=1, in_channels=tok.config.embed_dim, hidden_size=32, num_layers=2,
                    num_heads=2, num_classes=num_classes).eval()


def tiny_unet(tok: VQTokenizer, num_classes: int = 10):
    return build_ldm_unet("LDM-T", 7, tok.config.embed_dim, num_classes, block_out_channels=(32,),
                          norm_num_groups=8, attention_head_dim=8).eval()


def randomize(model, std: float = 0.2):
    """Zero-initialised heads (adaLN-Zero, GPT's head) make every sample alike: perturb them."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def tiny_pipeline(family: str, num_classes: int = 10, id2label=None):
    from lcgen.pipelines import PIPELINES

    tok = tiny_tokenizer()
    labels = (NAMES if num_classes else {}) if id2label is None else id2label
    if family == "gpt":
        return PIPELINES["gpt"](tok, randomize(tiny_gpt(tok, num_classes)), id2label=labels)
    if family == "sit":
        return PIPELINES["sit"](tok, randomize(tiny_dit(tok, num_classes)), id2label=labels, num_inference_steps=3)
    model = tiny_unet(tok, num_classes) if family == "ldm" else randomize(tiny_dit(tok, num_classes))
    return PIPELINES[family](tok, model, DDIMScheduler(clip_sample=False), id2label=labels, num_inference_steps=3)
