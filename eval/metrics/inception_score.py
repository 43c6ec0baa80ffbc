"""Inception Score from classifier logits, with ADM's split rule.

IS = exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over the split, averaged over splits.
ADM's evaluator (guided-diffusion `evaluations/evaluator.py`, `compute_inception_score`) splits the
samples *in order* into consecutive parts of 5,000 (the last may be shorter) and reports the mean
over parts. torch-fidelity instead shuffles (seed 2020) into 10 equal parts: at 50,000 samples both
have 5,000-image parts, at other counts the part size differs and so does the score (it grows with
the part size), which is why the rule is named in every report.
"""
from __future__ import annotations

import torch

ADM_SPLIT_SIZE = 5000


def inception_score(logits: torch.Tensor, split_size: int = ADM_SPLIT_SIZE) -> tuple[float, float]:
    """(mean, std over parts) of the IS of (N, classes) logits in consecutive parts of `split_size`."""
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must be (N, classes) with N > 0, got {tuple(logits.shape)}")
    if split_size <= 0:
        raise ValueError(f"split_size must be > 0, got {split_size}")
    log_p = torch.log_softmax(logits.double(), dim=1)
    scores = []
    for part in log_p.split(split_size):
        log_marginal = torch.logsumexp(part, dim=0) - torch.log(torch.tensor(float(part.shape[0]), dtype=torch.float64))
        kl = (part.exp() * (part - log_marginal)).sum(1).mean()
        scores.append(kl.exp())
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(unbiased=False)) if len(scores) > 1 else 0.0
