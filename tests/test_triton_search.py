"""The fused Triton nearest-code kernel, run by Triton's interpreter on CPU (TRITON_INTERPRET=1, set
by conftest before triton is imported): the same answer as an fp64 argmin and the same scores as the
blocked brute force."""
import types

import pytest
import torch

from lcgen.tokenizer.quantizers import search
from lcgen.tokenizer.quantizers.blocked_search import prepare_queries, running_best
from lcgen.tokenizer.quantizers.search import nearest_code, resolve_method
from lcgen.tokenizer.quantizers.triton_search import fused_running_best, interpreting, triton_importable

pytestmark = pytest.mark.skipif(not triton_importable(), reason="triton is not installed")


@pytest.fixture
def interpreter():
    if not interpreting():
        pytest.skip("TRITON_INTERPRET was not set before triton was imported")


def fp64_argmin(x, codes, distance):
    x, codes = x.double(), codes.double()
    if distance == "cos":
        return (torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(codes, dim=1).t()).argmax(1)
    return torch.cdist(x, codes).argmin(1)


@pytest.mark.parametrize("distance", ["l2", "cos"])
@pytest.mark.parametrize("n,k,d", [(130, 300, 8), (64, 129, 20), (50, 257, 100), (3, 1, 5)])
def test_fused_kernel_matches_fp64_argmin_and_the_brute_force_scores(interpreter, distance, n, k, d):
    # shapes off the tile sizes: rows past 64, codes past 128, D not a power of two, D over one 64-wide tile
    torch.manual_seed(n + k + d)
    x, codes = torch.randn(n, d), torch.randn(k, d)
    assert torch.equal(nearest_code(x, codes, distance, method="triton"), fp64_argmin(x, codes, distance))
    q = prepare_queries(x, distance)
    best, idx, second = fused_running_best(q, codes, distance)
    ref_best, ref_idx, ref_second = running_best(q, codes, distance, 1 << 20)
    assert torch.allclose(best, ref_best, rtol=1e-5, atol=1e-4)
    if k > 1:  # the runner-up, which the exactness check relies on
        assert torch.allclose(second, ref_second, rtol=1e-5, atol=1e-4)
        assert (second >= best).all()


def test_fused_kernel_is_exact_where_fp32_cancellation_misorders(interpreter):
    torch.manual_seed(1)
    codes = 20 + 0.01 * torch.randn(1024, 8)
    x = 20 + 0.01 * torch.randn(500, 8)
    ref = fp64_argmin(x, codes, "l2")
    _, fp32_only, _ = fused_running_best(x, codes, "l2")
    assert (fp32_only != ref).any()  # the kernel's fp32 scores alone get some wrong ...
    assert torch.equal(nearest_code(x, codes, method="triton"), ref)  # ... the fp64 re-check fixes them


def test_fused_kernel_ties_pick_the_lowest_index_across_tiles(interpreter):
    codes = torch.randn(600, 4)
    codes[450] = codes[3]  # the same code in another 128-code tile
    x = torch.cat([codes[3:4], codes[450:451] + 0.0])
    assert nearest_code(x, codes, method="triton").tolist() == [3, 3]
    assert fused_running_best(x, codes, "l2", track_second=False)[1].tolist() == [3, 3]


def test_triton_method_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        nearest_code(torch.randn(4, 8), torch.randn(10, 8), method="triton")
    # "auto" never picks it for CPU tensors; on CUDA it does up to TRITON_MAX_DIM
    assert resolve_method("auto", torch.randn(4, 8), torch.randn(100000, 8), "l2") == "kdtree-simd"
    monkeypatch.setattr(search, "triton_usable", lambda device: device.type == "cuda")
    on_cuda = types.SimpleNamespace(device=torch.device("cuda"))
    assert resolve_method("auto", on_cuda, torch.randn(10, 8), "l2") == "triton"
    assert resolve_method("auto", on_cuda, torch.randn(10, search.TRITON_MAX_DIM + 1), "cos") == "brute"
