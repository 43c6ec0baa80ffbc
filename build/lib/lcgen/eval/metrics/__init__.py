"""Evaluation metrics: tensor in, number out."""
from .codebook_usage import CodebookUsage
from .reconstruction import l1_error, psnr, ssim

__all__ = ["CodebookUsage", "l1_error", "psnr", "ssim"]
