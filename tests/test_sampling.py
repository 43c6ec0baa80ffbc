"""Sampling at scale: a two-process run writes exactly the requested, distinct images; they equal a
one-process run's (per-image generators); an interrupted run redoes only the missing images; images
drawn with other weights or settings are refused (or redrawn on request); the ADM .npz holds uint8
NHWC pixels by the named rule."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_pipeline

from lcgen.eval.sampling import class_for, generate, to_uint8

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe") / "sit"
    tiny_pipeline("sit").save_pretrained(path)
    return str(path)


def pngs(folder):
    return {n: np.asarray(Image.open(os.path.join(folder, n))) for n in sorted(os.listdir(folder)) if n.endswith(".png")}


@pytest.mark.slow
def test_two_processes_make_exactly_the_requested_distinct_images(pipe_dir, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29535",
           "-m", "lcgen.eval.sampling", "--pipeline", pipe_dir, "--output", str(tmp_path / "two"), "--num-samples", "11",
           "--batch-size", "4", "--num-inference-steps", "2", "--npz", "--class-balanced"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = [json.loads(line)["made"] for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(made) == [5, 6]  # ranks 0 and 1 split 11 images without overlap
    two = pngs(tmp_path / "two")
    assert list(two) == [f"{i:06d}.png" for i in range(11)]
    flat = [a.tobytes() for a in two.values()]
    assert len(set(flat)) == 11  # distinct
    generate(pipe_dir, str(tmp_path / "one"), 11, batch_size=3, class_balanced=True, num_inference_steps=2)
    one = pngs(tmp_path / "one")
    for name in two:  # per-image generators: the same images whatever the ranks and batches
        assert np.abs(one[name].astype(int) - two[name].astype(int)).max() <= 1
    npz = np.load(tmp_path / "two" / "samples.npz")
    assert npz["arr_0"].shape == (11, 28, 28, 3) and npz["arr_0"].dtype == np.uint8
    assert npz["arr_1"].tolist() == [i % 10 for i in range(11)]
    assert np.array_equal(npz["arr_0"][3], two["000003.png"])


def test_interrupted_run_redoes_only_missing_images(pipe_dir, tmp_path):
    first = generate(pipe_dir, str(tmp_path), 6, batch_size=4, num_inference_steps=2)
    before = pngs(tmp_path)
    for name in ("000001.png", "000004.png"):
        os.remove(tmp_path / name)
    again = generate(pipe_dir, str(tmp_path), 6, batch_size=4, num_inference_steps=2)
    assert first["made"] == 6 and again["made"] == 2
    after = pngs(tmp_path)
    assert all(np.abs(after[n].astype(int) - before[n].astype(int)).max() <= 1 for n in before)


@pytest.mark.slow
def test_a_run_resumes_compiled_with_the_same_images(pipe_dir, tmp_path):
    """compile is speed only: not a recorded setting (an eager folder resumes compiled) and the
    compiled images are the eager ones (within one uint8 level, as above)."""
    generate(pipe_dir, str(tmp_path / "eager"), 5, batch_size=3, num_inference_steps=2)
    generate(pipe_dir, str(tmp_path / "mixed"), 2, batch_size=3, num_inference_steps=2)
    resumed = generate(pipe_dir, str(tmp_path / "mixed"), 5, batch_size=3, num_inference_steps=2, compile=True)
    eager, mixed = pngs(tmp_path / "eager"), pngs(tmp_path / "mixed")
    assert resumed["made"] == 3 and sorted(mixed) == sorted(eager)
    assert all(np.abs(mixed[n].astype(int) - eager[n].astype(int)).max() <= 1 for n in eager)
    with pytest.raises(TypeError, match="compile"):
        generate(pipe_dir, str(tmp_path / "bad"), 1, compile="yes")
    assert not (tmp_path / "bad").exists()


def test_pixel_rules_and_classes():
    y = torch.tensor([0.0, 0.2, 0.5, 1.0, 1.2]).view(1, 1, 1, 5)
    u8 = to_uint8(y)
    assert u8.shape == (1, 1, 5, 3)
    assert u8[0, 0, :, 0].tolist() == [0, 51, 128, 255, 255]  # floor(127.5 (2y - 1) + 128): DiT, LlamaGen
    y = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.2]).view(1, 1, 1, 5)  # exact in binary: no rounding of 2y - 1
    assert to_uint8(y)[0, 0, :, 0].tolist() == [0, 64, 128, 255, 255]
    assert to_uint8(y, "truncate")[0, 0, :, 0].tolist() == [0, 63, 127, 255, 255]  # floor(127.5 (x + 1)): ADM
    with pytest.raises(ValueError, match="uint8 rule"):
        to_uint8(y, "nearest")
    drawn = [class_for(i, 10, 0, False) for i in range(200)]
    assert set(drawn) == set(range(10)) and drawn == [class_for(i, 10, 0, False) for i in range(200)]
    assert class_for(3, 0, 0, True) is None


def test_new_weights_or_settings_in_the_same_folder_are_not_reused(tmp_path):
    pipe_dir = str(tmp_path / "pipe")
    pipe = tiny_pipeline("sit")
    pipe.save_pretrained(pipe_dir)
    out = str(tmp_path / "samples")
    assert generate(pipe_dir, out, 3, batch_size=3)["made"] == 3
    assert generate(pipe_dir, out, 3, batch_size=3)["made"] == 0  # same weights and settings: reused
    with torch.no_grad():  # "more training": new weights saved over the old folder
        next(pipe.transformer.parameters()).add_(0.1)
    pipe.save_pretrained(pipe_dir)
    with pytest.raises(ValueError, match="weights changed.*--overwrite-samples"):
        generate(pipe_dir, out, 3, batch_size=3)
    assert generate(pipe_dir, out, 3, batch_size=3, overwrite_samples=True)["made"] == 3
    pipe.register_to_config(num_inference_steps=2)  # a new saved default, no override passed
    pipe.save_pretrained(pipe_dir)
    with pytest.raises(ValueError, match=r"sampling.num_inference_steps: 3 -> 2"):
        generate(pipe_dir, out, 3, batch_size=3)
    with pytest.raises(ValueError, match="uint8_rule: 'round' -> 'truncate'"):
        generate(pipe_dir, out, 3, batch_size=3, num_inference_steps=3, uint8_rule="truncate")
    assert sorted(os.listdir(out)) == ["000000.png", "000001.png", "000002.png", "samples.json"]


def test_bad_arguments(pipe_dir, tmp_path):
    with pytest.raises(ValueError, match="num_samples"):
        generate(pipe_dir, str(tmp_path / "x"), 0)
    assert not (tmp_path / "x").exists()
