"""Encoder/decoder pairs a VQTokenizer can use: the taming VQGAN (via diffusers' blocks) and the
small VQ-VAE of CVQ-VAE and LooC."""
from .vqgan import build_vqgan
from .vqvae import VQVAEDecoder, VQVAEEncoder

__all__ = ["build_vqgan", "VQVAEEncoder", "VQVAEDecoder"]
