"""Stage one: quantizers, autoencoders, losses, codebook initialisation."""
from .model import TokenizerEncoding, TokenizerOutput, VQTokenizer

__all__ = ["VQTokenizer", "TokenizerEncoding", "TokenizerOutput"]
