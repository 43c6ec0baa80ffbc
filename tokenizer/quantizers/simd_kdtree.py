"""Exact nearest-code search at low D on the CPU by lcgen's own k-d tree (`csrc/simd_kdtree.cpp`).

scipy's tree (`kdtree_search`) scores one code at a time in fp64 and answers through Python
objects; this one stores 128 codes a leaf dimension-major, scores a leaf with one vectorised loop in
fp32, skips the leaves whose boxes lie beyond the best two (box distances slackened below every fp32
rounding), and marks the rows whose runner-up
is within the rounding margin of the winner, which `nearest_code` re-searches in fp64 (the same
contract as the other methods: the fp64 argmin, ties to the lowest index). Where the tree would
prune little (up to 32 leaves, K <= 4,096, at D <= 8; 128 leaves at D <= 12; any K from D = 13) it is
skipped: every code is scored as ||c||^2 - 2 q.c, two queries a pass, under an absolute rounding
bound, with the difference form for the rows that bound cannot prove.

The extension is compiled on first use for this machine's CPU (`torch.utils.cpp_extension`, g++ and
ninja; ~30 s on a 2-core CPU, then cached under TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions). Where it
cannot be built, `available()` is False, the reason is warned once, and "auto" keeps scipy's tree.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import warnings

import torch

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "simd_kdtree.cpp")
MAX_DIM = 32  # the kernel's fixed-size offset array
_FP32_UNIT_ROUNDOFF = 2.0**-24


def _cpu_tag() -> str:
    """A name for this CPU's instruction set: the build uses -march=native, so a cache shared by
    machines with different CPUs must not hand one machine's binary to another."""
    flags = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            flags += next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    with open(SOURCE, "rb") as f:
        source = f.read()
    return hashlib.sha256(flags.encode() + source + torch.__version__.encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def _extension():
    # importing cpp_extension logs a CUDA_HOME warning on CUDA builds of torch; this build is CPU-only
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load
    finally:
        quiet.setLevel(level)
    if shutil.which("ninja") is None:  # the pip `ninja` package's binary, when its venv is not on PATH
        import ninja
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return load(name=f"lcgen_simd_kdtree_{_cpu_tag()}", sources=[SOURCE],
                extra_cflags=["-O3", "-march=native", "-fno-math-errno", "-fopenmp"],
                extra_ldflags=["-fopenmp"], verbose=False)


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether the kernel is (or can be) compiled here; the first call may build it."""
    try:
        _extension()
        return True
    except Exception as err:  # no compiler, no ninja, a failed build: scipy's tree takes over
        warnings.warn(f"lcgen's SIMD k-d tree could not be built ({type(err).__name__}: {err}); "
                      "nearest_code falls back to scipy's k-d tree", RuntimeWarning, stacklevel=2)
        return False


class NonFiniteCodes(ValueError):
    """The codebook has NaN or inf entries, which the tree cannot order."""


# The trees of the last few codebooks searched, each with a copy of its codes: a codebook that is
# bitwise equal to one of them (a frozen codebook at evaluation or inference, recomputed by the same
# projector every batch) reuses its tree; any other change, however made, rebuilds it. Building is
# ~8 ms at K = 100,000 against ~14 ms for 8,192 queries (2-core CPU); the check is one memcmp.
CACHED_TREES = 2
_trees: list = []  # [(codes copy, tree)], most recent last


def clear_tree_cache() -> None:
    _trees.clear()


def tree_for(codes: torch.Tensor):
    """The tree over fp32 contiguous codes (K, D), reused when these codes were searched lately."""
    ext = _extension()
    for i, (copy, tree) in enumerate(_trees):
        if ext.same_bits(copy, codes):
            _trees.append(_trees.pop(i))
            return tree
    if not ext.all_finite(codes):  # the tree's ordering of the codes needs real numbers
        raise NonFiniteCodes("the SIMD k-d tree needs finite codes; the codebook has NaN or inf entries")
    tree = ext.build_tree(codes)
    _trees.append((codes.clone(), tree))
    del _trees[:-CACHED_TREES]
    return tree


def simd_kdtree_nearest(x: torch.Tensor, codes: torch.Tensor):
    """(index, unproven) for every row of x (N, D) against codes (K, D), on the CPU, D <= MAX_DIM.

    index: int64 (N,), the nearest code by fp32 distance; unproven: bool (N,), rows whose runner-up
    is within the fp32 rounding margin of the winner (or whose distances are too small for a
    relative bound), to be re-searched in fp64. Raises NonFiniteCodes for NaN or inf codes."""
    if codes.shape[1] > MAX_DIM:
        raise ValueError(f"the SIMD k-d tree takes D <= {MAX_DIM}, got D = {codes.shape[1]}")
    if codes.shape[0] == 0:
        raise ValueError("the SIMD k-d tree needs at least one code")
    tree = tree_for(codes.detach().float().contiguous())
    d = codes.shape[1]
    # each distance is a sum of D non-negative rounded squares of rounded differences
    gamma = (d + 3) * _FP32_UNIT_ROUNDOFF / (1 - (d + 3) * _FP32_UNIT_ROUNDOFF)
    return tuple(_extension().search_tree(x.detach().float().contiguous(), *tree, gamma))
