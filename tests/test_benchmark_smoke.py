"""The benchmarks run end to end at smoke sizes (seconds): each speed benchmark prints its ratios
against its peers, the search benchmark's every method equals the fp64 brute force on its sample,
and the usage-against-tokens count agrees with a count of the distinct codes."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import dit_speed, gpt_sampling, search_gpu, search_throughput, usage_vs_tokens  # noqa: E402
from lcgen.cpu_linear import cpu_gemm  # noqa: E402
from lcgen.tokenizer.quantizers.triton_search import interpreting, triton_importable  # noqa: E402

# where lcgen.cpu_linear takes oneDNN, each speed benchmark also times lcgen on torch's own GEMM
TORCH_GEMM_TOO = cpu_gemm() == "onednn"


def test_gpt_sampling_smoke():
    r = gpt_sampling.main(["--tokens", "16", "--width", "32", "--layers", "1", "--heads", "2", "--vocab", "64",
                           "--classes", "3", "--batch", "2", "--rounds", "1", "--no-compile"])
    assert {"lcgen_s", "transformers_llama_generate_s", "transformers_llama_same_loop_s"} <= set(r)
    assert r["speedup_vs_generate"] > 0 and r["speedup_vs_same_loop"] > 0 and "lcgen_compiled_s" not in r
    assert r["cpu_gemm"] == cpu_gemm() and ("speedup_torch_gemm_vs_same_loop" in r) == TORCH_GEMM_TOO


def test_dit_speed_smoke():
    r = dit_speed.main(["--size", "T/2", "--latent", "8", "--channels", "4", "--classes", "5", "--batch", "1",
                        "--steps", "2", "--rounds", "1"])
    assert r["sampling_speedup_lcgen"] > 0 and r["train_speedup_lcgen"] > 0
    assert r["cpu_gemm"] == cpu_gemm() and ("train_speedup_lcgen_torch_gemm" in r) == TORCH_GEMM_TOO
    # diffusers gives every block its own timestep + label embedder; lcgen shares one (DiT's layout)
    width = 128
    per_block_embedder = (256 * width + width) + (width * width + width) + 6 * width  # t MLP + label rows
    assert r["parameters_diffusers"] - r["parameters_lcgen"] >= 3 * per_block_embedder


@pytest.mark.slow
def test_search_throughput_smoke():
    rows = search_throughput.main(["--size", "smallest", "--tokens", "256", "--rounds", "1"])
    methods = {(r["method"], r["D"]) for r in rows}
    assert {m for m, _ in methods} == set(search_throughput.METHODS) | ({search_throughput.TORCH_GEMM} if TORCH_GEMM_TOO
                                                                         else set())
    assert all(d == 768 for m, d in methods if m == search_throughput.TORCH_GEMM)
    assert all(r["exact_on_sample"] for r in rows)


@pytest.mark.skipif(not (triton_importable() and interpreting()), reason="needs triton and TRITON_INTERPRET=1")
def test_search_gpu_smoke_in_the_triton_interpreter():
    rows = search_gpu.main(["--device", "cpu", "--smoke"])
    assert {r["method"] for r in rows} == set(search_gpu.METHODS) and len(rows) == 2 * len(search_gpu.METHODS)
    assert all(r["exact_on_sample"] and r["tokens_per_s"] > 0 for r in rows)


def test_shifted_images_move_by_one_pixel_over_the_background():
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    down = usage_vs_tokens.shifted(x, 1, 0)
    assert down[0, 0].tolist() == [[-1, -1, -1], [1, 2, 3], [4, 5, 6]]
    left = usage_vs_tokens.shifted(x, 0, -1)
    assert left[0, 0].tolist() == [[2, 3, -1], [5, 6, -1], [8, 9, -1]]


def test_usage_vs_tokens_counts_the_distinct_codes_and_tokens(tmp_path):
    from tiny import tiny_tokenizer

    from lcgen.data import build_dataset

    tok = tiny_tokenizer().eval()
    tok.save_pretrained(tmp_path)
    rows = usage_vs_tokens.main([str(tmp_path), "--max-images", "48", "--variants", "3"])
    assert [r["variants"] for r in rows] == [1] * 6 + [2, 3]
    k, m = tok.config.codebook_size, tok.quantizer.num_chunks
    full = rows[5]
    assert full["images"] == 48 and full["tokens_per_code"] == round(48 * 49 * m / k, 2)
    assert rows[-1]["tokens_per_code"] == round(3 * 48 * 49 * m / k, 2)
    images = torch.stack([build_dataset("fashion-mnist", "train", channels=1, max_samples=48)[i]["pixel_values"]
                          for i in range(48)])
    with torch.no_grad():
        used = torch.unique(tok.encode(images).indices).numel()  # distinct codes of the shared codebook
    assert full["utilisation"] == pytest.approx(used / k)
    util = [r["utilisation"] for r in rows]
    assert util[:6] == sorted(util[:6]) and util[5:] == sorted(util[5:])  # counts only grow
