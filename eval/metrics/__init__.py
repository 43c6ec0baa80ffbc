from .codebook_usage import CodebookUsage

__all__ = ["CodebookUsage"]
