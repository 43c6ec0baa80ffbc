"""fp32 linear layers on the CPU through oneDNN where torch's own GEMM takes a slow path.

torch runs an fp32 `F.linear` / `torch.mm` on the CPU through MKL's sgemm. MKL picks its kernels by
CPU vendor: on AMD CPUs it runs its AVX2 code, about half the AVX-512 throughput those CPUs have.
Measured on a 2-core AMD EPYC (Zen 5, AVX-512), best of 15: oneDNN's matmul (the
`mkldnn._linear_pointwise` op torch ships for inductor's CPU fusions) was 2.1-2.6x faster than
`F.linear` at every shape of GPT-B, DiT-B/2 and the 768-d code search (e.g. 1,024 x 768 -> 2,304:
17.6 against 8.3 ms), and 3.3-4.2x at decode shapes on a weight packed once (16 x 768 -> 16,384:
6.0 against 1.45 ms). Both are strict fp32 with an fp32 accumulator in some order, so Higham's
gamma_n error bounds (the exact code search's) hold for either.

The choice, `cpu_gemm()`: "onednn" or "torch", from `LCGEN_CPU_GEMM` (auto | onednn | torch) or
`set_cpu_gemm`. "auto" takes oneDNN on an AMD x86-64 CPU with torch built with MKL and oneDNN (where
the gap above was measured) and torch's default everywhere else: on Intel CPUs MKL runs its AVX-512
kernels and nothing here was measured faster. Any tensor that is not fp32 on the CPU, and any run
that allowed reduced-precision fp32 matmuls (`torch.set_float32_matmul_precision("high")`, under
which oneDNN would compute in bf16), and anything under CPU autocast (which casts `F.linear`'s inputs)
keeps `F.linear`.
"""
from __future__ import annotations

import contextlib
import os
import platform
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

CPU_GEMM_ENV = "LCGEN_CPU_GEMM"
CPU_GEMM_CHOICES = ("auto", "onednn", "torch")


def cpu_vendor() -> str:
    """The x86 vendor string ("AuthenticAMD", "GenuineIntel"), or "" where there is none to read."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _resolve(setting: str) -> str:
    if setting not in CPU_GEMM_CHOICES:
        raise ValueError(f"{CPU_GEMM_ENV} must be one of {CPU_GEMM_CHOICES}, got {setting!r}")
    if setting == "torch" or not _onednn_available():
        return "torch"
    if setting == "onednn":
        return "onednn"
    return "onednn" if torch.backends.mkl.is_available() and cpu_vendor() == "AuthenticAMD" else "torch"


def _from_environment() -> str:
    return _resolve(os.environ.get(CPU_GEMM_ENV, "auto").strip().lower() or "auto")


# "onednn" or "torch", resolved at import (a bad LCGEN_CPU_GEMM fails there, before any work); a
# plain global, so that torch.compile guards on it and retraces when `set_cpu_gemm` changes it
_choice: str = _from_environment()


def cpu_gemm() -> str:
    """"onednn" or "torch": which GEMM `linear` takes for fp32 on the CPU in this process."""
    return _choice


def set_cpu_gemm(setting: str | None) -> str:
    """Override the choice ("auto", "onednn" or "torch"); None goes back to `LCGEN_CPU_GEMM`.
    Returns the resolved choice."""
    global _choice
    _choice = _from_environment() if setting is None else _resolve(setting)
    return _choice


@contextlib.contextmanager
def using_cpu_gemm(setting: str):
    """`set_cpu_gemm(setting)` for a block, the choice before it restored after."""
    global _choice
    before = _choice
    set_cpu_gemm(setting)
    try:
        yield _choice
    finally:
        _choice = before


@torch.compiler.assume_constant_result  # torch.compile reads the setting once, when it traces
def _exact_fp32_allowed() -> bool:
    """False where the user allowed reduced-precision fp32 matmuls, which oneDNN would honour."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    return getattr(matmul, "fp32_precision", "none") in ("none", "ieee")


def takes_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear(x, weight)` goes through oneDNN."""
    return (x.device.type == "cpu" and weight.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and not x.is_mkldnn and cpu_gemm() == "onednn"
            and not torch.is_autocast_enabled("cpu") and _exact_fp32_allowed())


def _onednn(x, weight, bias):
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@torch.library.custom_op("lcgen::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y = x W^T + b in oneDNN, as an op of its own: autograd and `torch.compile` see one opaque
    kernel (inductor's own lowering of the oneDNN op wants the weight frozen into the graph)."""
    return _onednn(x, weight, bias)


@onednn_linear.register_fake
def _(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    """dx = dy W and dW = dy^T x, both in oneDNN (strided views go in as they are)."""
    x, weight = ctx.saved_tensors
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = onednn_linear(grad, weight.t(), None)
    rows = grad.reshape(-1, grad.shape[-1])
    if ctx.needs_input_grad[1]:
        grad_w = onednn_linear(rows.t(), x.reshape(-1, x.shape[-1]).t(), None)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = rows.sum(0)
    return grad_x, grad_w, grad_b


onednn_linear.register_autograd(_backward, setup_context=_setup_context)


# id(module) -> weakref to it, for `onednn_linear_packed`: a compiled graph names its Linear by id
_PACKING_MODULES: dict[int, weakref.ref] = {}


@torch.library.custom_op("lcgen::onednn_linear_packed", mutates_args=())
def onednn_linear_packed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         module_id: int) -> torch.Tensor:
    """`onednn_linear` on the packed copy of `weight` kept by the `Linear` registered as `module_id`,
    where that module is alive and `weight` is its weight's storage; else on `weight` as it is. This
    is how a compiled inference step gets the packed weight: the copy lives outside the graph."""
    ref = _PACKING_MODULES.get(module_id)
    module = ref() if ref is not None else None
    if module is not None and module.weight.data_ptr() == weight.data_ptr() and module.weight.shape == weight.shape:
        return _onednn(x, module._packed_weight(), bias)
    return _onednn(x, weight, bias)


@onednn_linear_packed.register_fake
def _(x, weight, bias, module_id):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _wants_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through oneDNN where `takes_onednn` says so."""
    if not takes_onednn(x, weight):
        return F.linear(x, weight, bias)
    if _wants_grad(x, weight, bias) or torch.compiler.is_compiling():  # autograd or dynamo sees the op
        return onednn_linear(x, weight, bias)
    return _onednn(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, state-dict keys and initialisation) whose fp32 CPU forward takes
    `linear`. Without autograd it runs on a copy of the weight packed in oneDNN's blocked layout, made
    on first use and again whenever the weight changes (its storage or version counter): at decode
    shapes 1.5-2x faster than the plain weight, for one more copy of the weight in memory. Compiled,
    it reaches that copy through `onednn_linear_packed` (GPT-B's compiled decoding: as fast as eager,
    against 1.5x slower on the plain weight)."""

    _packed: tuple | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._register()

    def _register(self):
        key = id(self)
        _PACKING_MODULES[key] = weakref.ref(self, lambda _: _PACKING_MODULES.pop(key, None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not takes_onednn(x, self.weight):
            return F.linear(x, self.weight, self.bias)
        if _wants_grad(x, self.weight, self.bias):
            return onednn_linear(x, self.weight, self.bias)
        if torch.compiler.is_compiling():
            return onednn_linear_packed(x, self.weight, self.bias, id(self))
        return _onednn(x, self._packed_weight(), self.bias)

    def _packed_weight(self) -> torch.Tensor:
        w = self.weight
        if not isinstance(w, nn.Parameter):  # computed every call (a parametrisation): nothing to keep
            return w
        # the same Parameter object (a new one may reuse the old one's address), storage and version
        key = (w.data_ptr(), w._version, tuple(w.shape))
        if self._packed is None or self._packed[0]() is not w or self._packed[1] != key:
            self._packed = (weakref.ref(w), key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), None))
        return self._packed[2]

    def _apply(self, fn, recurse=True):  # .to() / .cpu() / .float(): drop the packed copy with the old weight
        self._packed = None
        return super()._apply(fn, recurse)

    def __getstate__(self):  # never deep-copied or pickled along with the module
        state = super().__getstate__()
        state.pop("_packed", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._register()
