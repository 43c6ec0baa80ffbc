"""Evaluation metrics: tensor in, number out."""
from .codebook_usage import CodebookUsage
from .inception_score import inception_score
from .reconstruction import l1_error, psnr, ssim

__all__ = ["CodebookUsage", "inception_score", "l1_error", "psnr", "ssim"]
