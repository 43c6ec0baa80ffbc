"""Nearest-code search: exact against fp64 brute force, bounded memory, fp32 under autocast."""
import subprocess
import sys
import textwrap

import pytest
import torch

from lcgen import cpu_linear
from lcgen.tokenizer.quantizers.search import best_row_per_code, nearest_code, resolve_method

GEMMS = ["torch"] + (["onednn"] if cpu_linear._onednn_available() else [])


@pytest.fixture(params=GEMMS)
def cpu_gemm(request):
    """The brute force's score GEMM forced to each path lcgen.cpu_linear can take, whatever the CPU."""
    with cpu_linear.using_cpu_gemm(request.param):
        yield request.param


def fp64_argmin(x, codes, distance="l2"):
    x, codes = x.double(), codes.double()
    if distance == "cos":
        x = torch.nn.functional.normalize(x, dim=1)
        codes = torch.nn.functional.normalize(codes, dim=1)
        return (x @ codes.t()).argmax(1)
    return torch.cdist(x, codes).argmin(1)


@pytest.mark.parametrize("distance", ["l2", "cos"])
@pytest.mark.parametrize("n,k,d", [(500, 3000, 8), (300, 1000, 64), (64, 20000, 4)])
def test_matches_fp64_bruteforce(distance, n, k, d):
    x, codes = torch.randn(n, d), torch.randn(k, d)
    assert torch.equal(nearest_code(x, codes, distance), fp64_argmin(x, codes, distance))


@pytest.mark.parametrize("distance", ["l2", "cos"])
@pytest.mark.parametrize("d,offset", [(768, 0.0), (64, 0.0), (8, 20.0)])
def test_brute_force_exact_on_either_gemm(cpu_gemm, distance, d, offset):
    """The blocked brute force on torch's GEMM and on oneDNN's: the fp64 argmin, also where fp32
    cancellation misorders the plain formula (the offset case), with blocks small enough to span codes."""
    g = torch.Generator().manual_seed(7)
    spread = 0.01 if offset else 1.0
    x = offset + spread * torch.randn(300, d, generator=g)
    codes = offset + spread * torch.randn(3000, d, generator=g)
    assert torch.equal(nearest_code(x, codes, distance, method="brute", memory_budget=1 << 18),
                       fp64_argmin(x, codes, distance))


def test_exact_where_fp32_cancellation_misorders():
    # Large offset, tiny spacing: ||e||^2 - 2 x.e cancels catastrophically in fp32 (reference §5.6).
    torch.manual_seed(1)
    codes = 20 + 0.01 * torch.randn(4096, 8)
    x = 20 + 0.01 * torch.randn(2000, 8)
    ref = fp64_argmin(x, codes)
    # the plain fp32 formula gets some of these wrong ...
    naive = (codes.pow(2).sum(1) - 2 * x @ codes.t()).argmin(1)
    assert (naive != ref).any()
    # ... the guarded search does not
    assert torch.equal(nearest_code(x, codes), ref)


def test_exact_ties_pick_lowest_index_across_blocks():
    codes = torch.randn(20000, 4)
    codes[15000] = codes[3]  # duplicate in another 8192-code block
    x = codes[3:4] + 0.0
    assert nearest_code(x, codes).item() == 3
    assert nearest_code(x, codes, memory_budget=4096).item() == 3


def test_small_memory_budget_same_answer():
    x, codes = torch.randn(1000, 8), torch.randn(5000, 8)
    assert torch.equal(nearest_code(x, codes, memory_budget=1 << 16), fp64_argmin(x, codes))


def test_search_is_fp32_under_bf16_autocast():
    x, codes = torch.randn(400, 16), torch.randn(4000, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        idx = nearest_code(x, codes)
    assert torch.equal(idx, fp64_argmin(x, codes))


def test_best_row_per_code_closest_and_sampled():
    feats, codes = torch.randn(300, 8), torch.randn(50, 8)
    _, rows = best_row_per_code(feats, codes, "l2")
    assert torch.equal(rows, torch.cdist(codes.double(), feats.double()).argmin(1))
    _, rows = best_row_per_code(feats, codes, "cos")
    sim = torch.nn.functional.normalize(codes.double(), dim=1) @ torch.nn.functional.normalize(feats.double(), dim=1).t()
    assert torch.equal(rows, sim.argmax(1))


def test_gumbel_sampling_follows_softmax_of_similarity():
    # one code, three features with cosine similarity 1, 0, -1: softmax gives e/(e+1+1/e) ...
    codes = torch.tensor([[1.0, 0.0]])
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([best_row_per_code(feats, codes, "cos", generator=gen)[1] for _ in range(4000)]).flatten()
    freq = torch.bincount(draws, minlength=3).double() / draws.numel()
    expected = torch.softmax(torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64), 0)
    assert torch.allclose(freq, expected, atol=0.03)


@pytest.mark.parametrize("offset,spread", [(0.0, 1.0), (20.0, 0.01)])
def test_kdtree_matches_fp64_bruteforce_and_brute(offset, spread):
    # the second case is the fp32-cancellation one: the tree's fp64 differences need no re-check there
    g = torch.Generator().manual_seed(2)
    codes = offset + spread * torch.randn(20000, 8, generator=g)
    x = offset + spread * torch.randn(3000, 8, generator=g)
    ref = fp64_argmin(x, codes)
    assert torch.equal(nearest_code(x, codes, method="kdtree"), ref)
    assert torch.equal(nearest_code(x, codes, method="brute"), ref)
    assert torch.equal(nearest_code(x.double(), codes, method="kdtree"), fp64_argmin(x.double(), codes))


def test_kdtree_ties_pick_lowest_index():
    g = torch.Generator().manual_seed(3)
    codes = torch.randn(20000, 8, generator=g)
    codes[15000] = codes[3]
    codes[17] = codes[19999]
    x = torch.stack([codes[3], codes[19999], codes[3] + 1e-3])
    assert nearest_code(x, codes, method="kdtree").tolist() == [3, 17, 3]
    assert nearest_code(x, codes, method="kdtree", exact=False)[2].item() in (3, 15000)


def test_auto_method_by_shape_and_device():
    x = torch.randn(4, 8)
    assert resolve_method("auto", x, torch.randn(100000, 8), "l2") == "kdtree-simd"  # VQGAN-LC's D' = 8
    assert resolve_method("auto", x, torch.randn(1024, 8), "l2") == "kdtree-simd"
    assert resolve_method("auto", torch.randn(4, 64), torch.randn(100000, 64), "l2") == "brute"
    assert resolve_method("auto", x, torch.randn(100000, 8), "cos") == "brute"
    with pytest.raises(ValueError, match="kdtree"):
        nearest_code(x, torch.randn(10, 8), "cos", method="kdtree")
    with pytest.raises(ValueError, match="method"):
        nearest_code(x, torch.randn(10, 8), method="faiss")


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="distance"):
        nearest_code(torch.randn(2, 3), torch.randn(4, 3), "cosine")
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        nearest_code(torch.randn(2, 3), torch.randn(4, 5))


@pytest.mark.slow
def test_65536_tokens_against_100k_codes_under_1gb():
    """The issue's bound, measured as peak RSS growth of a fresh process."""
    script = textwrap.dedent("""
        import torch
        from lcgen.tokenizer.quantizers.search import nearest_code

        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024

        torch.manual_seed(0)
        x, codes = torch.randn(65536, 8), torch.randn(100000, 8)
        sample = torch.randint(0, 65536, (256,))
        open("/proc/self/clear_refs", "w").write("5")  # reset peak RSS (VmHWM) to the current RSS
        before = status("VmRSS:")
        idx = nearest_code(x, codes)
        extra = status("VmHWM:") - before
        ref = torch.cdist(x[sample].double(), codes.double()).argmin(1)
        assert torch.equal(idx[sample], ref)
        print(extra)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    extra = int(out.stdout.strip().splitlines()[-1])
    full_matrix = 65536 * 100000 * 4
    assert extra < 1 << 30, f"extra peak memory {extra / 2**20:.0f} MiB"
    assert extra < full_matrix / 20


@pytest.mark.parametrize("distance", ["l2", "cos"])
def test_running_best_returns_the_two_smallest_scores_over_many_blocks(cpu_gemm, distance):
    """Best and runner-up of the blocked pass (indices and runner-ups computed only for rows a block
    changes) against a sort of the whole score matrix; small blocks so most rows skip most blocks."""
    from lcgen.tokenizer.quantizers.blocked_search import prepare_queries, running_best

    g = torch.Generator().manual_seed(0)
    x, codes = torch.randn(300, 16, generator=g), torch.randn(5000, 16, generator=g)
    q = prepare_queries(x, distance)
    best, idx, second = running_best(q, codes, distance, 64 * 1024, code_block=128)
    c = codes if distance == "l2" else torch.nn.functional.normalize(codes, dim=1)
    scores = c.pow(2).sum(1) - 2 * q @ c.t() if distance == "l2" else -(q @ c.t())
    top2 = scores.sort(dim=1).values[:, :2]
    torch.testing.assert_close(best, top2[:, 0], rtol=0, atol=1e-4)
    torch.testing.assert_close(second, top2[:, 1], rtol=0, atol=1e-4)
    assert (scores.gather(1, idx[:, None]).squeeze(1) - top2[:, 0]).abs().max() < 1e-4
