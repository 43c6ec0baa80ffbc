"""Two CPU processes (gloo): every rank ends each training step with the same codebook, and for the
deterministic updates (EMA, CVQ/LooC 'closest') that codebook equals a single process fed the
union of both ranks' batches."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lcgen.tokenizer.quantizers import build_quantizer

CASES = {
    "ema": dict(kind="ema"),
    "cvq_closest": dict(kind="cvq"),
    "cvq_l2_closest": dict(kind="cvq", distance="l2"),
    "looc_interp": dict(kind="looc", interp_scale=2),
    "pq_revival": dict(kind="pq", revival="cvq"),
    "cvq_probrandom": dict(kind="cvq", anchor="probrandom"),
    "cvq_random": dict(kind="cvq", anchor="random"),
}
DETERMINISTIC = {"ema", "cvq_closest", "cvq_l2_closest", "looc_interp", "pq_revival"}
STEPS, DIM, K = 3, 8, 32


def _make(case):
    opts = dict(CASES[case])
    kind = opts.pop("kind")
    torch.manual_seed(1234)  # same initial codebook everywhere
    return build_quantizer(kind, dim=DIM, codebook_size=K, **opts)


def _batch(step, rank):
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(2 + rank, DIM, 3, 3, generator=g) * (1 + rank)  # ranks differ in size and scale


def _codebook(q):
    return q.codebook.weight().detach().clone()


def _lc_pull():
    """A frozen VQGAN-LC codebook with the latent pull: its state is the running usage."""
    torch.manual_seed(1234)
    return build_quantizer("lc", dim=DIM, codebook_size=K, init_codebook=torch.randn(K, 16), revival="latent-pull")


def _worker(rank, world, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    out = {}
    for case in CASES:
        q = _make(case)
        for step in range(STEPS):
            q(_batch(step, rank))
        out[case] = (_codebook(q), q.reviver.usage.clone() if q.reviver is not None else None)
    q = _lc_pull()
    out["lc_pull"] = [q(_batch(step, rank)).loss.item() for step in range(STEPS)], q.puller.usage.clone()
    results[rank] = out
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_results():
    manager = mp.Manager()
    results = manager.dict()
    mp.start_processes(_worker, args=(2, _free_port(), results), nprocs=2, join=True, start_method="spawn")
    return dict(results)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ranks_hold_identical_codebooks(two_rank_results, case):
    (cb0, usage0), (cb1, usage1) = two_rank_results[0][case], two_rank_results[1][case]
    assert torch.equal(cb0, cb1)
    if usage0 is not None:
        assert torch.equal(usage0, usage1)
    # and the codebook actually moved from its initialisation
    assert not torch.allclose(cb0, _codebook(_make(case)))


@pytest.mark.parametrize("case", sorted(DETERMINISTIC))
def test_two_ranks_equal_one_process_on_the_union(two_rank_results, case):
    q = _make(case)
    for step in range(STEPS):
        q(torch.cat([_batch(step, 0), _batch(step, 1)]))
    assert torch.allclose(two_rank_results[0][case][0], _codebook(q), atol=1e-5)


def test_latent_pull_usage_is_summed_over_ranks(two_rank_results):
    """Every rank sees the same dead codes (the usage of the union of both batches); each pulls its own
    closest latents, so the losses differ by rank."""
    (loss0, usage0), (loss1, usage1) = two_rank_results[0]["lc_pull"], two_rank_results[1]["lc_pull"]
    q = _lc_pull()
    for step in range(STEPS):
        q(torch.cat([_batch(step, 0), _batch(step, 1)]))
    assert torch.equal(usage0, usage1) and torch.allclose(usage0, q.puller.usage, atol=1e-7)
    assert usage0.sum() > 0 and loss0 != loss1
