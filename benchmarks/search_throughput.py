"""Nearest-code search: lcgen's exact search (the method it picks for the shape, and its chunked
brute force) vs faiss IndexFlatL2 (exact) vs the naive full-matrix argmin of VQGAN/taming, all in
one run on the same inputs.

faiss runs twice: as it comes ("faiss") and with its BLAS path forced ("faiss-blas"). faiss-cpu
1.15 takes BLAS only above `distance_compute_blas_threshold` (128,000 in 1.15.1, compared with
queries x D here), so at 8,192 queries of D = 8 it scans without BLAS, about 20x slower per query
than its own BLAS path; the ratios are against the faster of the two, faiss at its best.

Throughput (tokens/s) is the median of alternating rounds in this process; peak extra memory is
the growth of peak RSS during one call in a fresh process. Every method's answer is checked
against an fp64 brute force on a sample of tokens. Ratios are against faiss (and the naive path).

    python benchmarks/search_throughput.py                 # K in {1024, 16384, 100000}, D in {8, 768}
    python benchmarks/search_throughput.py --size smallest # K = 1024 only, quick
    python benchmarks/search_throughput.py --size lc       # D = 8 at K in {16384, 100000} (VQGAN-LC's D')
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

SIZES = {
    "smallest": dict(codebooks=[1024], dims=[8, 768], tokens=4096),
    "full": dict(codebooks=[1024, 16384, 100000], dims=[8, 768], tokens=8192),
    "lc": dict(codebooks=[16384, 100000], dims=[8], tokens=8192),  # VQGAN-LC's D' = 8
}
# "lcgen": method="auto" (the SIMD k-d tree at D = 8, reusing its tree for the unchanged codebook, as
# at evaluation); "lcgen-rebuild": the same with the tree rebuilt every call (a codebook that changes
# every training step); "lcgen-brute": the blocked brute force.
METHODS = ("lcgen", "lcgen-rebuild", "lcgen-brute", "faiss", "faiss-blas", "naive")
# "lcgen-torch-gemm": "lcgen" with its score GEMM on torch's own (LCGEN_CPU_GEMM=torch), timed at large D
# where lcgen.cpu_linear picked oneDNN for this CPU: what that choice gives
TORCH_GEMM = "lcgen-torch-gemm"
NAIVE_MAX_BYTES = 4 * 2**30  # the naive path's N x K fp32 matrix (and its temporaries, ~2.5x) beyond this is skipped
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_inputs(k: int, d: int, n: int, seed: int = 0):
    """Queries ~ N(0,1); codebook: Gaussian for D=768, and for D=8 a 768-d Gaussian codebook
    projected by a random 768x8 matrix (a stand-in for VQGAN-LC's projected frozen codebook)."""
    g = torch.Generator().manual_seed(seed)
    if d == 8:
        codes = torch.randn(k, 768, generator=g) @ (torch.randn(768, 8, generator=g) / 768 ** 0.5)
    else:
        codes = torch.randn(k, d, generator=g)
    return torch.randn(n, d, generator=g), codes.contiguous()


def run_method(method: str, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    if method == TORCH_GEMM:
        from lcgen.cpu_linear import using_cpu_gemm
        with using_cpu_gemm("torch"):
            return run_method("lcgen", x, codes)
    if method in ("lcgen", "lcgen-rebuild", "lcgen-brute"):
        from lcgen.tokenizer.quantizers import simd_kdtree
        from lcgen.tokenizer.quantizers.search import nearest_code
        if method == "lcgen-rebuild":
            simd_kdtree.clear_tree_cache()
        return nearest_code(x, codes, method="brute" if method == "lcgen-brute" else "auto")
    if method in ("faiss", "faiss-blas"):
        import faiss
        index = faiss.IndexFlatL2(codes.shape[1])
        index.add(codes.numpy())
        threshold = faiss.cvar.distance_compute_blas_threshold
        if method == "faiss-blas":
            faiss.cvar.distance_compute_blas_threshold = 1  # BLAS for any query batch
        try:
            return torch.from_numpy(index.search(x.numpy(), 1)[1][:, 0]).long()
        finally:
            faiss.cvar.distance_compute_blas_threshold = threshold
    if method == "naive":  # taming VectorQuantizer2 / VQGAN-LC: full N x K matrix
        d = x.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * x @ codes.t()
        return d.argmin(1)
    raise ValueError(method)


def peak_extra_memory(method: str, k: int, d: int, n: int) -> int:
    """Bytes of peak RSS growth of one call, measured in a fresh process."""
    code = (
        "import sys, torch\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key): return int(line.split()[1]) * 1024\n"
        f"sys.path.insert(0, {REPO_ROOT!r})\n"
        "from benchmarks.search_throughput import make_inputs, run_method\n"
        f"torch.set_num_threads({torch.get_num_threads()})\n"
        f"x, codes = make_inputs({k}, {d}, {n})\n"
        f"run_method({method!r}, x[:8], codes)\n"  # load libraries, warm up
        "open('/proc/self/clear_refs', 'w').write('5')\n"  # reset the peak (VmHWM) to the current RSS
        "before = status('VmRSS:')\n"
        f"run_method({method!r}, x, codes)\n"
        "print(status('VmHWM:') - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"memory measurement of {method} (K={k}, D={d}) failed:\n{out.stderr[-2000:]}")
    return int(out.stdout.strip().splitlines()[-1])


def bench(k: int, d: int, n: int, rounds: int, methods=METHODS):
    x, codes = make_inputs(k, d, n)
    sample = torch.randperm(n)[:256]
    ref = torch.cdist(x[sample].double(), codes.double()).argmin(1)
    times = {m: [] for m in methods}
    correct = {}
    for m in methods:  # warm-up: library loading and first-call allocation are not throughput
        run_method(m, x[:64], codes)
    for r in range(rounds):
        for m in methods if r % 2 == 0 else reversed(methods):
            t = time.perf_counter()
            idx = run_method(m, x, codes)
            times[m].append(time.perf_counter() - t)
            correct[m] = bool(torch.equal(idx[sample], ref))
    rows = []
    for m in methods:
        rows.append(dict(method=m, K=k, D=d, tokens=n, tokens_per_s=n / statistics.median(times[m]),
                         peak_extra_mib=peak_extra_memory(m, k, d, n) / 2**20, exact_on_sample=correct[m]))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--tokens", type=int, default=None, help="queries per call (default: by size)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    cfg = SIZES[args.size]
    n = args.tokens or cfg["tokens"]
    if n <= 0 or args.rounds <= 0:
        p.error("--tokens and --rounds must be positive")
    from lcgen.cpu_linear import cpu_gemm
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {n} tokens per call, median of {args.rounds} "
          f"rounds, CPU GEMM: {cpu_gemm()}")
    print("| K | D | method | tokens/s | vs best faiss | vs naive | peak extra MiB | exact |")
    print("|---|---|---|---|---|---|---|---|")
    all_rows = []
    for k in cfg["codebooks"]:
        for d in cfg["dims"]:
            # at 65,536 queries x 100,000 codes the naive matrix alone is 26 GB: more than this machine has
            naive = n * k * 4 <= NAIVE_MAX_BYTES
            methods = METHODS if naive else METHODS[:-1]
            if d > 32 and cpu_gemm() == "onednn":
                methods = (*methods, TORCH_GEMM)
            rows = bench(k, d, n, args.rounds, methods)
            speed = {r["method"]: r["tokens_per_s"] for r in rows}
            best_faiss = max(speed["faiss"], speed["faiss-blas"])
            for r in rows:
                vs_naive = f"{r['tokens_per_s'] / speed['naive']:.2f}x" if naive else "skipped (N x K too large)"
                print(f"| {k:,} | {d} | {r['method']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / best_faiss:.2f}x"
                      f" | {vs_naive} | {r['peak_extra_mib']:,.0f} | {r['exact_on_sample']} |", flush=True)
            all_rows += rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_rows, f, indent=1)
    return all_rows


if __name__ == "__main__":
    main()
