"""lcgen's compiled k-d tree (`simd_kdtree`): the fp64 argmin (ties to the lowest index) through
every leaf shape, the fp32 proof's near ties and underflow, and the refusals; it is compiled here
(a build failure is a failure, not a skip: "auto" takes this path on every CPU)."""
import pytest
import torch

from lcgen.tokenizer.quantizers import search, simd_kdtree
from lcgen.tokenizer.quantizers.search import nearest_code, resolve_method

LEAF = 128  # codes a leaf in csrc/simd_kdtree.cpp: sizes around it exercise the padded last leaf


def fp64_argmin(x, codes):
    return torch.cdist(x.double(), codes.double()).argmin(1)


def test_the_extension_builds_here():
    assert simd_kdtree.available()


@pytest.mark.parametrize("k", [1, 2, LEAF - 1, LEAF, LEAF + 1, 3 * LEAF + 5, 16 * LEAF + 1, 32 * LEAF + 1, 20000])  # D <= 8: no tree up to 32 leaves
@pytest.mark.parametrize("d", [1, 3, 8, 12, 16, 32])  # the tree runs at D <= 12 only
def test_matches_fp64_argmin(k, d):
    g = torch.Generator().manual_seed(k * 31 + d)
    codes, x = torch.randn(k, d, generator=g), torch.randn(700, d, generator=g)
    assert torch.equal(nearest_code(x, codes, method="kdtree-simd"), fp64_argmin(x, codes))


def test_clustered_and_offset_codes():
    # clusters (where the tree prunes most) and the large-offset, small-spread case that cancels
    # catastrophically in ||e||^2 - 2 x.e: here differences are taken first, so it does not
    g = torch.Generator().manual_seed(5)
    centres = 4 * torch.randn(50, 8, generator=g)
    codes = centres.repeat_interleave(400, 0) + 0.05 * torch.randn(20000, 8, generator=g)
    x = centres.repeat(40, 1) + 0.1 * torch.randn(2000, 8, generator=g)
    assert torch.equal(nearest_code(x, codes, method="kdtree-simd"), fp64_argmin(x, codes))
    codes, x = 20 + 0.01 * torch.randn(20000, 8, generator=g), 20 + 0.01 * torch.randn(3000, 8, generator=g)
    assert torch.equal(nearest_code(x, codes, method="kdtree-simd"), fp64_argmin(x, codes))


@pytest.mark.parametrize("k, hit_proven", [(2000, True), (20000, False)])  # the flat scan, and the tree
def test_ties_go_to_the_lowest_index_and_exact_hits_are_rechecked(k, hit_proven):
    g = torch.Generator().manual_seed(3)
    codes = torch.randn(k, 8, generator=g)
    codes[k - 500] = codes[3]
    codes[17] = codes[k - 1]
    x = torch.stack([codes[3], codes[k - 1], codes[3] + 1e-3, codes[42]])
    _, unproven = simd_kdtree.simd_kdtree_nearest(x, codes)
    # exact ties (rows 0-2) are re-checked; so is distance 0 (row 3) in the tree, whose relative
    # bound cannot prove it (it could be an underflow), while the flat scan's absolute bound can
    assert unproven.tolist() == [True, True, True, not hit_proven]
    assert nearest_code(x, codes, method="kdtree-simd").tolist() == [3, 17, 3, 42]
    assert nearest_code(x, codes, method="kdtree-simd", exact=False)[2].item() in (3, k - 500)


def test_the_flat_scans_expanded_form_proves_only_what_its_bound_covers():
    # Small codebooks are scored as ||c||^2 - 2 q.c, whose rounding error is absolute (~1e-7 of
    # ||c||^2 + 2 ||q|| ||c||). Codes of norm ~100 put the error near 2e-2; each query sits between
    # two codes with an exact gap from 1e-4 to 1 (in squared distance), across that bound. A row
    # the expanded form proves must be the fp64 argmin; rows it cannot prove go to the difference
    # form (relative bound) and, where that cannot either, to the fp64 re-check.
    g = torch.Generator().manual_seed(21)
    codes = torch.randn(1000, 8, generator=g)
    codes = 100 * codes / codes.norm(dim=1, keepdim=True)
    a, b = torch.randint(0, 1000, (2, 4000), generator=g)
    keep = a != b
    a, b = a[keep], b[keep]
    mid = (codes[a] + codes[b]) / 2
    direction = (codes[b] - codes[a]) / (codes[b] - codes[a]).norm(dim=1, keepdim=True)
    gap = 10 ** (-4 + 4 * torch.rand(len(a), 1, generator=g))  # squared-distance gap ~ 2 |c_b - c_a| shift
    x = mid + direction * gap / (2 * (codes[b] - codes[a]).norm(dim=1, keepdim=True))
    index, unproven = simd_kdtree.simd_kdtree_nearest(x, codes)
    truth = fp64_argmin(x, codes)
    assert torch.equal(index[~unproven], truth[~unproven])
    assert torch.equal(nearest_code(x, codes, method="kdtree-simd"), truth)
    # a large offset defeats the expanded form entirely: every row falls back to the difference
    # form, which still proves nearly all of them
    codes, x = 20 + 0.01 * torch.randn(1000, 8, generator=g), 20 + 0.01 * torch.randn(3000, 8, generator=g)
    index, unproven = simd_kdtree.simd_kdtree_nearest(x, codes)
    truth = fp64_argmin(x, codes)
    assert torch.equal(index[~unproven], truth[~unproven]) and unproven.float().mean() < 0.01
    assert torch.equal(nearest_code(x, codes, method="kdtree-simd"), truth)


def test_a_gap_below_fp32_resolution_is_flagged_and_settled_in_fp64():
    # code 0 is at squared distance 1 + 2^-26 from the query, code 1 at exactly 1: fp32 rounds both
    # to 1.0 (a tie the scan would give to whichever it meets first); fp64 orders them
    codes = torch.zeros(600, 8)
    codes[0, 0], codes[0, 1] = 1.0, 2.0**-13
    codes[1, 0] = -1.0
    codes[2:] = torch.randn(598, 8, generator=torch.Generator().manual_seed(4)) + 6
    q = torch.zeros(1, 8)
    assert (q - codes[0]).square().sum() == (q - codes[1]).square().sum()  # equal in fp32
    _, unproven = simd_kdtree.simd_kdtree_nearest(q, codes)
    assert unproven.item()
    assert nearest_code(q, codes, method="kdtree-simd").item() == 1 == fp64_argmin(q, codes).item()


def test_underflowing_distances_are_rechecked():
    g = torch.Generator().manual_seed(9)
    codes = 1e-21 * torch.randn(1000, 8, generator=g)  # squares of 1e-21 are below fp32's normal range
    x = 1e-21 * torch.randn(200, 8, generator=g)
    _, unproven = simd_kdtree.simd_kdtree_nearest(x, codes)
    assert unproven.all()
    assert torch.equal(nearest_code(x, codes, method="kdtree-simd"), fp64_argmin(x, codes))


def test_one_or_two_threads_and_half_precision_inputs_agree():
    g = torch.Generator().manual_seed(11)
    codes, x = torch.randn(5000, 8, generator=g), torch.randn(3000, 8, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = nearest_code(x, codes, method="kdtree-simd")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, nearest_code(x, codes, method="kdtree-simd"))
    for dtype in (torch.float16, torch.bfloat16):  # exactly representable in fp32
        xh, ch = x.to(dtype), codes.to(dtype)
        assert torch.equal(nearest_code(xh, ch, method="kdtree-simd"), fp64_argmin(xh, ch))
    assert nearest_code(x[:0], codes, method="kdtree-simd").shape == (0,)


def test_auto_takes_it_on_cpu_and_falls_back():
    x, codes = torch.randn(4, 8), torch.randn(100000, 8)
    assert resolve_method("auto", x, codes, "l2") == "kdtree-simd"
    assert resolve_method("auto", x, torch.randn(64, 8), "l2") == "kdtree-simd"
    assert resolve_method("auto", x.double(), codes, "l2") == "kdtree"  # fp64 inputs: searched in fp64
    assert resolve_method("auto", torch.randn(4, 16), torch.randn(100000, 16), "l2") == "kdtree-simd"
    assert resolve_method("auto", torch.randn(4, 32), torch.randn(100000, 32), "l2") == "kdtree-simd"
    assert resolve_method("auto", torch.randn(4, 33), torch.randn(1000, 33), "l2") == "brute"  # past the kernel
    assert resolve_method("auto", torch.randn(4, 64), torch.randn(1000, 64), "l2") == "brute"
    assert resolve_method("auto", x, codes, "cos") == "brute"
    bad = torch.randn(300, 8)
    bad[7, 2] = float("nan")  # a diverged codebook: auto ranks it by brute force rather than refuse
    assert nearest_code(x, bad).shape == (4,)


def test_without_a_compiler_auto_keeps_scipys_tree(monkeypatch):
    monkeypatch.setattr(search.simd_kdtree, "available", lambda: False)
    assert resolve_method("auto", torch.randn(4, 8), torch.randn(100000, 8), "l2") == "kdtree"
    assert resolve_method("auto", torch.randn(4, 8), torch.randn(1024, 8), "l2") == "brute"
    with pytest.raises(ValueError, match="could not be built"):
        nearest_code(torch.randn(4, 8), torch.randn(10, 8), method="kdtree-simd")


def test_a_tree_is_reused_only_for_bitwise_equal_codes():
    g = torch.Generator().manual_seed(12)
    codes, x = torch.randn(3000, 8, generator=g), torch.randn(500, 8, generator=g)
    simd_kdtree.clear_tree_cache()
    first = simd_kdtree.tree_for(codes)
    assert simd_kdtree.tree_for(codes.clone()) is first  # equal bits, another tensor: reused
    moved = codes.clone()
    moved[1234, 5] = torch.nextafter(moved[1234, 5], torch.tensor(10.0))  # one ulp
    assert simd_kdtree.tree_for(moved) is not first
    codes.data[7] = x[0]  # an in-place change that bumps no version counter is still seen
    assert nearest_code(x[:1], codes, method="kdtree-simd").item() == 7
    assert torch.equal(nearest_code(x, codes, method="kdtree-simd"), fp64_argmin(x, codes))
    for k in range(simd_kdtree.CACHED_TREES + 1):  # a bounded number of trees is kept
        simd_kdtree.tree_for(torch.randn(100 + k, 8))
    assert len(simd_kdtree._trees) == simd_kdtree.CACHED_TREES


def test_the_finiteness_and_bit_checks_against_torch():
    ext = simd_kdtree._extension()
    edge = torch.tensor([0.0, -0.0, 1e-45, -3.4028235e38, 3.4028235e38, 1.0])  # subnormal, +-max: finite
    assert ext.all_finite(edge) and bool(torch.isfinite(edge).all())
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = edge.clone()
        t[3] = bad
        assert not ext.all_finite(t)
    a = torch.randn(50, 8)
    assert ext.same_bits(a, a.clone()) and not ext.same_bits(a, a.reshape(100, 4).contiguous())
    b = a.clone()
    a[0, 0], b[0, 0] = 0.0, -0.0  # equal numbers, other bits: a rebuild, never a wrong reuse
    assert torch.equal(a, b) and not ext.same_bits(a, b)


@pytest.mark.parametrize("call,match", [
    (lambda: nearest_code(torch.randn(4, 8), torch.randn(10, 8), "cos", method="kdtree-simd"), "l2"),
    (lambda: nearest_code(torch.randn(4, 8).double(), torch.randn(10, 8), method="kdtree-simd"), "fp64"),
    (lambda: nearest_code(torch.randn(4, 40), torch.randn(10, 40), method="kdtree-simd"), "D <= 32"),
    (lambda: nearest_code(torch.randn(4, 8), torch.full((10, 8), float("inf")), method="kdtree-simd"), "finite"),
])
def test_refusals(call, match):
    with pytest.raises(ValueError, match=match):
        call()
