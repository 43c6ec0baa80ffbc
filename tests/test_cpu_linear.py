"""lcgen.cpu_linear: the oneDNN fp32 linear equals the exact product within Higham's bound, its
gradients are the analytic ones, the packed weight follows the weight, and the choice of GEMM is
what the policy says (each path forced, whatever CPU runs the test)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lcgen import cpu_linear
from lcgen.cpu_linear import Linear, cpu_gemm, linear, set_cpu_gemm, takes_onednn

needs_onednn = pytest.mark.skipif(not cpu_linear._onednn_available(), reason="torch built without oneDNN")
U = 2.0**-24


@pytest.fixture
def gemm():
    """Force choices within one test, then go back to the one before it."""
    with cpu_linear.using_cpu_gemm(cpu_gemm()):
        yield set_cpu_gemm


def gamma(n):
    return n * U / (1 - n * U)


def assert_within_bound(y, x, w, b):
    """|fl(x W^T + b) - exact| <= gamma_(K+1) (|x| |W|^T + |b|), elementwise (Higham, any summation order)."""
    x64, w64 = x.double(), w.double()
    exact = F.linear(x64, w64, None if b is None else b.double())
    mag = F.linear(x64.abs(), w64.abs(), None if b is None else b.double().abs())
    err = (y.double() - exact).abs()
    assert bool((err <= gamma(x.shape[-1] + 1) * mag).all()), float((err / mag.clamp_min(1e-300)).max())


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 33), (3, 5, 64), (16, 768)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_forward_within_the_rounding_bound(gemm, shape, with_bias):
    gemm("onednn")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g) * 3
    w = torch.randn(40, shape[-1], generator=g)
    b = torch.randn(40, generator=g) * 10 if with_bias else None
    assert takes_onednn(x, w)
    y = linear(x, w, b)
    assert y.shape == (*shape[:-1], 40) and y.dtype == torch.float32
    assert_within_bound(y, x, w, b)
    assert_within_bound(linear(x, w.t().contiguous().t(), b), x, w, b)  # a strided weight view


@needs_onednn
@pytest.mark.parametrize("which", [(True, True, True), (True, False, False), (False, True, True), (False, False, True)])
def test_onednn_gradients_are_the_analytic_ones(gemm, which):
    """Loss sum(y * G): dx = G W, dW = G^T x, db = sum of G over rows, against fp64."""
    gemm("onednn")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 24, generator=g).requires_grad_(which[0])
    w = torch.randn(10, 24, generator=g).requires_grad_(which[1])
    b = torch.randn(10, generator=g).requires_grad_(which[2])
    upstream = torch.randn(2, 6, 10, generator=g)
    (linear(x, w, b) * upstream).sum().backward()
    G, x64, w64 = upstream.double().reshape(-1, 10), x.detach().double().reshape(-1, 24), w.detach().double()
    expected = {"x": (G @ w64).reshape(2, 6, 24), "w": G.t() @ x64, "b": G.sum(0)}
    for name, t, want in (("x", x, which[0]), ("w", w, which[1]), ("b", b, which[2])):
        if not want:
            assert t.grad is None
            continue
        assert torch.allclose(t.grad.double(), expected[name], rtol=1e-5, atol=1e-5), name


@needs_onednn
def test_linear_module_packed_weight_follows_the_weight(gemm):
    gemm("onednn")
    torch.manual_seed(2)
    layer, plain = Linear(32, 48), nn.Linear(32, 48)
    plain.load_state_dict(layer.state_dict())
    assert list(layer.state_dict()) == ["weight", "bias"]
    x = torch.randn(5, 32)
    with torch.no_grad():
        assert_within_bound(layer(x), x, layer.weight, layer.bias)
        assert layer._packed is not None
        layer.weight.mul_(-3.0)  # in place: the version counter moves, the packed copy is remade
        assert_within_bound(layer(x), x, layer.weight, layer.bias)
        layer.load_state_dict(plain.state_dict())
        assert_within_bound(layer(x), x, plain.weight, plain.bias)
        layer.weight = nn.Parameter(torch.randn(48, 32))  # a new Parameter object (as a Hub loader sets)
        assert_within_bound(layer(x), x, layer.weight, layer.bias)
    assert "_packed" not in layer.__getstate__()  # what pickle and deepcopy take
    assert copy.deepcopy(layer)._packed is None
    double = layer.double()  # not fp32 any more: F.linear, the packed copy dropped
    assert double._packed is None and not takes_onednn(x.double(), double.weight)
    assert torch.equal(double(x.double()), F.linear(x.double(), double.weight, double.bias))


@needs_onednn
def test_compiled_linear_matches_eager_forward_and_backward(gemm):
    gemm("onednn")
    torch.manual_seed(3)
    layer = Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True)
    y_eager = layer(x)
    y_eager.sum().backward()
    grads = x.grad.clone(), layer.weight.grad.clone()
    x.grad, layer.weight.grad = None, None
    y_compiled = compiled(x)
    y_compiled.sum().backward()
    assert torch.allclose(y_compiled, y_eager, rtol=1e-6, atol=1e-6)
    assert torch.allclose(x.grad, grads[0], rtol=1e-6, atol=1e-6)
    assert torch.allclose(layer.weight.grad, grads[1], rtol=1e-6, atol=1e-6)


@needs_onednn
def test_compiled_inference_uses_the_packed_copy_and_follows_the_weight(gemm):
    import gc

    gemm("onednn")
    torch.manual_seed(5)
    layer, x = Linear(24, 40), torch.randn(6, 24)
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        assert_within_bound(compiled(x), x, layer.weight, layer.bias)
        assert layer._packed is not None  # made by the op, outside the graph
        layer.weight.add_(1.0)
        assert_within_bound(compiled(x), x, layer.weight, layer.bias)
    key = id(layer)
    assert cpu_linear._PACKING_MODULES[key]() is layer
    del layer, compiled
    gc.collect()
    assert key not in cpu_linear._PACKING_MODULES
    # an id that names no live module: the op multiplies by the weight it is given
    w = torch.randn(5, 24)
    assert_within_bound(cpu_linear.onednn_linear_packed(x, w, None, key), x, w, None)


def test_torch_choice_is_f_linear_exactly(gemm):
    gemm("torch")
    torch.manual_seed(4)
    layer, x = Linear(12, 7), torch.randn(3, 12)
    assert not takes_onednn(x, layer.weight)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


@needs_onednn
def test_reduced_precision_autocast_and_other_dtypes_keep_f_linear(gemm):
    gemm("onednn")
    x, w = torch.randn(3, 8), torch.randn(4, 8)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # oneDNN would compute this in bf16
        assert not takes_onednn(x, w)
    finally:
        torch.set_float32_matmul_precision(before)
    assert takes_onednn(x, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own cast of F.linear stays in charge
        assert not takes_onednn(x, w)
        assert Linear(8, 4)(x).dtype == torch.bfloat16
    for dtype in (torch.float64, torch.bfloat16):
        assert not takes_onednn(x.to(dtype), w.to(dtype))


def test_policy(gemm, monkeypatch):
    gemm("torch")
    other = "onednn" if cpu_linear._onednn_available() else "torch"
    with cpu_linear.using_cpu_gemm(other) as inside:
        assert inside == other == cpu_gemm()
    assert cpu_gemm() == "torch"  # the choice before the block, not the environment's
    with pytest.raises(ValueError, match="LCGEN_CPU_GEMM"):
        gemm("fast")
    monkeypatch.setenv("LCGEN_CPU_GEMM", "nonsense")
    with pytest.raises(ValueError, match="LCGEN_CPU_GEMM"):
        gemm(None)
    monkeypatch.setenv("LCGEN_CPU_GEMM", "torch")
    assert gemm(None) == "torch" == cpu_gemm()
    if cpu_linear._onednn_available():
        assert gemm("onednn") == "onednn"
        monkeypatch.setattr(cpu_linear, "cpu_vendor", lambda: "GenuineIntel")
        assert gemm("auto") == "torch"  # MKL runs its AVX-512 kernels there
        monkeypatch.setattr(cpu_linear, "cpu_vendor", lambda: "AuthenticAMD")
        assert gemm("auto") == ("onednn" if torch.backends.mkl.is_available() else "torch")
    monkeypatch.setattr(cpu_linear, "_onednn_available", lambda: False)
    assert gemm("onednn") == "torch"  # asked for, but this torch has none
