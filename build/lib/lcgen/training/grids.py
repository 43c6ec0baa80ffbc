"""Image grids a run logs: originals above their reconstructions (tokenizer training and evaluation)."""
from __future__ import annotations

import torch
from torchvision.utils import make_grid


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, per_row: int = 8) -> torch.Tensor:
    """(3, H', W') float grid in [0, 1]: rows alternate originals / reconstructions; inputs in [-1, 1]."""
    n = (len(originals) // per_row) * per_row or len(originals)
    rows = []
    for i in range(0, n, per_row):
        rows += [originals[i:i + per_row], reconstructions[i:i + per_row]]
    x = torch.cat(rows).detach().float().cpu().clamp(-1, 1).add(1).div(2)
    return make_grid(x, nrow=min(per_row, n), padding=2, pad_value=1.0)
