"""The speed benchmarks run end to end at smoke sizes (seconds): each prints its ratios against its
peers, and the search benchmark's every method equals the fp64 brute force on its sample."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import dit_speed, gpt_sampling, search_gpu, search_throughput  # noqa: E402
from lcgen.tokenizer.quantizers.triton_search import interpreting, triton_importable  # noqa: E402


def test_gpt_sampling_smoke():
    r = gpt_sampling.main(["--tokens", "16", "--width", "32", "--layers", "1", "--heads", "2", "--vocab", "64",
                           "--classes", "3", "--batch", "2", "--rounds", "1", "--no-compile"])
    assert {"lcgen_s", "transformers_llama_generate_s", "transformers_llama_same_loop_s"} <= set(r)
    assert r["speedup_vs_generate"] > 0 and r["speedup_vs_same_loop"] > 0 and "lcgen_compiled_s" not in r


def test_dit_speed_smoke():
    r = dit_speed.main(["--size", "T/2", "--latent", "8", "--channels", "4", "--classes", "5", "--batch", "1",
                        "--steps", "2", "--rounds", "1"])
    assert r["sampling_speedup_lcgen"] > 0 and r["train_speedup_lcgen"] > 0
    # diffusers gives every block its own timestep + label embedder; lcgen shares one (DiT's layout)
    width = 128
    per_block_embedder = (256 * width + width) + (width * width + width) + 6 * width  # t MLP + label rows
    assert r["parameters_diffusers"] - r["parameters_lcgen"] >= 3 * per_block_embedder


@pytest.mark.slow
def test_search_throughput_smoke():
    rows = search_throughput.main(["--size", "smallest", "--tokens", "256", "--rounds", "1"])
    assert {r["method"] for r in rows} == set(search_throughput.METHODS)
    assert all(r["exact_on_sample"] for r in rows)


@pytest.mark.skipif(not (triton_importable() and interpreting()), reason="needs triton and TRITON_INTERPRET=1")
def test_search_gpu_smoke_in_the_triton_interpreter():
    rows = search_gpu.main(["--device", "cpu", "--smoke"])
    assert {r["method"] for r in rows} == set(search_gpu.METHODS) and len(rows) == 2 * len(search_gpu.METHODS)
    assert all(r["exact_on_sample"] and r["tokens_per_s"] > 0 for r in rows)
