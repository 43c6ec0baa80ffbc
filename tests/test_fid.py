"""lcgen.eval.fid.frechet_distance against closed forms and torch-fidelity on the same features."""
import numpy as np
import pytest

from lcgen.eval.fid import frechet_distance


def random_cov(d, seed, rank=None):
    a = np.random.default_rng(seed).normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


def test_identical_statistics_give_zero():
    mu, s = np.arange(5.0), random_cov(5, 0)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-10


def test_one_dimensional_gaussians():
    # d^2 = (m1 - m2)^2 + (s1 - s2)^2 for N(m1, s1^2), N(m2, s2^2)
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1, abs=1e-12)


def test_diagonal_covariances():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = 1.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(np.zeros(3), np.diag(a), np.ones(3) / np.sqrt(3), np.diag(b)) == pytest.approx(expected)


def test_matches_torch_fidelity_on_the_same_features():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    import torch

    rng = np.random.default_rng(0)
    f1 = torch.from_numpy(rng.normal(size=(400, 16)))
    f2 = torch.from_numpy(rng.normal(loc=0.3, scale=1.2, size=(300, 16)) @ rng.normal(size=(16, 16)) * 0.5)
    s1, s2 = fid_features_to_statistics(f1), fid_features_to_statistics(f2)
    ref = fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"]
    assert frechet_distance(s1["mu"], s1["sigma"], s2["mu"], s2["sigma"]) == pytest.approx(ref, rel=1e-9)


def test_rank_deficient_covariances_stay_real_and_non_negative():
    s1, s2 = random_cov(32, 1, rank=5), random_cov(32, 2, rank=5)  # fewer samples than dimensions
    d = frechet_distance(np.zeros(32), s1, np.zeros(32), s2)
    assert np.isfinite(d) and d > 0


@pytest.mark.parametrize("args,match", [
    ((np.zeros((2, 2)), np.eye(2), np.zeros(2), np.eye(2)), "mu must be a vector"),
    ((np.zeros(2), np.eye(3), np.zeros(2), np.eye(2)), "sigma must be"),
    ((np.zeros(2), np.eye(2), np.zeros(3), np.eye(3)), "dimensions differ"),
    ((np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2)), "NaN"),
])
def test_bad_statistics(args, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(*args)
