"""Timing shared by the speed benchmarks: contenders alternating within rounds, paired ratios, and
the printed (and optionally saved) JSON result."""
from __future__ import annotations

import json
import statistics
import time

import torch


def interleaved(fns: dict, rounds: int, device: str) -> dict:
    """Seconds per call of each contender, `rounds` times each, the contenders alternating within a
    round (the order rotating between rounds) so that a slow spell of a shared machine hits them all;
    one warm-up call each first (it also traces the compiled step)."""
    def once(fn):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for fn in fns.values():
        fn()
    names, times = list(fns), {name: [] for name in fns}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(once(fns[name]))
    return times


def on_torch_gemm(fn):
    """fn run with lcgen's fp32 CPU linears on torch's own GEMM: the same model as the "lcgen"
    contender, so the pair separates lcgen's GEMM choice (lcgen.cpu_linear) from the rest of it."""
    from lcgen.cpu_linear import using_cpu_gemm

    def run():
        with using_cpu_gemm("torch"):
            return fn()
    return run


def ratio(times: dict, slow: str, fast: str) -> float:
    """The median over rounds of slow / fast, each round's pair timed back to back."""
    return round(statistics.median(a / b for a, b in zip(times[slow], times[fast])), 2)


def report(result: dict, path: str | None) -> dict:
    """Print the result as JSON and, with a path, write it there too."""
    print(json.dumps(result, indent=2))
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    return result
