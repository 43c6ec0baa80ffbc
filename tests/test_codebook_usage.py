import math

import pytest
import torch

from lcgen.eval.metrics import CodebookUsage


def test_utilisation_and_perplexity_by_hand_over_batches():
    usage = CodebookUsage(codebook_size=4)
    usage.update(torch.tensor([[[0, 0], [1, 1]]]))  # (1, 2, 2)
    usage.update(torch.tensor([[[0, 0], [0, 0]]]))
    # counts: code0 6, code1 2 -> used 2/4; p = (3/4, 1/4)
    assert usage.utilisation() == 0.5
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert usage.perplexity() == pytest.approx(math.exp(h))
    assert usage.summary()["tokens"] == 8


def test_uniform_usage_has_perplexity_k():
    usage = CodebookUsage(codebook_size=8)
    usage.update(torch.arange(8).view(1, 2, 4))
    assert usage.utilisation() == 1.0 and usage.perplexity() == pytest.approx(8.0)


def test_per_chunk_shared_and_product_codebooks():
    idx = torch.tensor([[[[0, 1], [0, 2]]]])  # (1, 1, 2, m=2): chunk0 uses {0}, chunk1 uses {1, 2}
    shared = CodebookUsage(4, num_chunks=2, shared_codebook=True)
    shared.update(idx)
    assert shared.per_chunk_utilisation().tolist() == [0.25, 0.5]
    assert shared.utilisation() == 0.75  # codes {0,1,2} of 4
    pq = CodebookUsage(4, num_chunks=2, shared_codebook=False)
    pq.update(idx)
    assert pq.utilisation() == 3 / 8
    assert pq.perplexity() == pytest.approx((1.0 + 2.0) / 2)


def test_bad_indices():
    usage = CodebookUsage(4, num_chunks=2)
    with pytest.raises(ValueError, match="shape"):
        usage.update(torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        usage.update(torch.full((1, 1, 1, 2), 4))
    with pytest.raises(TypeError):
        usage.update(torch.zeros(1, 1, 1, 2))
