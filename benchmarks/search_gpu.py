"""Nearest-code search on a GPU: lcgen's fused Triton kernel vs its blocked cuBLAS brute force vs the
naive full-matrix argmin of VQGAN/taming, in one process on the same inputs (those of
`search_throughput.py`), every answer checked against an fp64 argmin on a sample of tokens.

    python benchmarks/search_gpu.py                      # CUDA: K in {1024, 16384, 100000}, D in {8, 768}
    python benchmarks/search_gpu.py --tokens 65536
    TRITON_INTERPRET=1 python benchmarks/search_gpu.py --device cpu --smoke   # the interpreter, seconds

Throughput is tokens/s from the median of alternating rounds (`timing.interleaved`, synchronised);
peak memory is `torch.cuda.max_memory_allocated` above the inputs during one call (CUDA only).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks.search_throughput import make_inputs  # noqa: E402
from benchmarks.timing import interleaved, report  # noqa: E402
from lcgen.tokenizer.quantizers.search import nearest_code  # noqa: E402

METHODS = ("lcgen-triton", "lcgen-brute", "naive")
NAIVE_MAX_BYTES = 8 * 2**30


def run_method(method: str, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    if method == "naive":
        return (x.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * x @ codes.t()).argmin(1)
    return nearest_code(x, codes, method=method.removeprefix("lcgen-"))


def peak_bytes(method: str, x: torch.Tensor, codes: torch.Tensor) -> int | None:
    if x.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run_method(method, x, codes)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def bench(k: int, d: int, n: int, rounds: int, device: str) -> list[dict]:
    x, codes = (t.to(device) for t in make_inputs(k, d, n))
    sample = torch.randperm(n)[:256]
    ref = torch.cdist(x[sample].double().cpu(), codes.double().cpu()).argmin(1)
    methods = [m for m in METHODS if m != "naive" or n * k * 4 <= NAIVE_MAX_BYTES]
    times = interleaved({m: (lambda m=m: run_method(m, x, codes)) for m in methods}, rounds, device)
    rows = []
    for m in methods:
        exact = bool(torch.equal(run_method(m, x, codes)[sample].cpu(), ref))
        rows.append(dict(method=m, K=k, D=d, tokens=n, tokens_per_s=n / statistics.median(times[m]),
                         peak_extra_bytes=peak_bytes(m, x, codes), exact_on_sample=exact))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="K = 300, D in {8, 20}, 130 tokens, 1 round")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device here; pass --device cpu with TRITON_INTERPRET=1 for the interpreter smoke run")
    if args.tokens <= 0 or args.rounds <= 0:
        p.error("--tokens and --rounds must be positive")
    shapes = [(300, 8), (300, 20)] if args.smoke else [(k, d) for k in (1024, 16384, 100000) for d in (8, 768)]
    n, rounds = (130, 1) if args.smoke else (args.tokens, args.rounds)
    rows = []
    print("| K | D | method | tokens/s | vs brute | peak extra MiB | exact |\n|---|---|---|---|---|---|---|")
    for k, d in shapes:
        group = bench(k, d, n, rounds, args.device)
        brute = next(r["tokens_per_s"] for r in group if r["method"] == "lcgen-brute")
        for r in group:
            mib = "-" if r["peak_extra_bytes"] is None else f"{r['peak_extra_bytes'] / 2**20:,.0f}"
            print(f"| {k:,} | {d} | {r['method']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / brute:.2f}x | "
                  f"{mib} | {r['exact_on_sample']} |", flush=True)
        rows += group
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu (Triton interpreter)"
    return report({"device": device_name, "torch": torch.__version__, "rows": rows}, args.json)["rows"]


if __name__ == "__main__":
    main()
