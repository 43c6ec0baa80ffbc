"""The Fréchet distance between two Gaussians, in float64, by eigenvalues (no scipy `sqrtm`):

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

tr((S1 S2)^(1/2)) is the sum of square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2), which is
symmetric positive semi-definite, so `eigh` applies and tiny negative round-off eigenvalues are
clamped to zero instead of producing the complex parts scipy's `sqrtm` returns on near-singular
covariances. Used for precomputed statistics (e.g. ADM's reference batches) and cross-checked
against torch-fidelity's value on the same features (tests/test_fid.py).
"""
from __future__ import annotations

import warnings

import numpy as np


def _as_stats(mu, sigma, name: str):
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1:
        raise ValueError(f"{name}: mu must be a vector, got shape {mu.shape}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: sigma must be ({mu.shape[0]}, {mu.shape[0]}) to match mu, got {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: statistics contain NaN or inf")
    return mu, (sigma + sigma.T) / 2  # symmetrise away round-off


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (the FID formula), float64."""
    mu1, sigma1 = _as_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _as_stats(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    w, v = np.linalg.eigh(sigma1)
    if w.min() < -1e-6 * max(abs(w).max(), 1.0):
        warnings.warn(f"sigma1 has a negative eigenvalue {w.min():.3g}: it is not a covariance matrix")
    sqrt1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = sqrt1 @ sigma2 @ sqrt1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
