"""`lcgen evaluate` and `accelerate launch -m lcgen.eval.evaluate` with two gloo processes: the ranks split the
sampling and the feature shards, and the report equals a one-process evaluation of the same images."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny import tiny_pipeline

from lcgen.eval.classifier import ImageClassifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tiny_pipeline("sit").save_pretrained(root / "pipe")
    torch.manual_seed(0)
    ImageClassifier().eval().save_pretrained(root / "clf")
    np.savez(root / "ref.npz", arr_0=np.random.default_rng(0).integers(0, 256, (20, 28, 28, 3), dtype=np.uint8))
    return root


def common(models, tmp_path):
    return ["--reference", str(models / "ref.npz"), "--feature-extractor", "lcgen-fashion-mnist",
            "--feature-extractor-weights", str(models / "clf"), "--cache-dir", str(tmp_path / "cache"),
            "--shard-size", "3", "--batch-size", "4"]


@pytest.mark.slow
def test_two_processes_split_sampling_and_features(models, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29537",
           "-m", "lcgen.eval.evaluate", "fid", "--pipeline", str(models / "pipe"), "--num-samples", "11",
           "--num-inference-steps", "2", "--output", str(tmp_path / "two"), "--metrics", "fid,kid",
           *common(models, tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = sorted(f for f in os.listdir(tmp_path / "two" / "samples") if f.endswith(".png"))
    assert pngs == [f"{i:06d}.png" for i in range(11)]
    shards = sorted(f for f in os.listdir(tmp_path / "two" / "features") if f.startswith("shard"))
    assert len(shards) == 4  # 11 images in shards of 3, made by both ranks
    with open(tmp_path / "two" / "report.json") as f:
        report = json.load(f)
    assert report["protocol"]["num_processes"] == 2 and report["protocol"]["num_images"] == 11
    from lcgen.cli import main

    main(["evaluate", "fid", "--samples", str(tmp_path / "two" / "samples"), "--output", str(tmp_path / "one"),
          "--metrics", "fid,kid", *common(models, tmp_path)])
    with open(tmp_path / "one" / "report.json") as f:
        one = json.load(f)
    assert one["metrics"]["fid"] == pytest.approx(report["metrics"]["fid"], rel=1e-9)
    assert one["metrics"]["kernel_inception_distance_mean"] == pytest.approx(
        report["metrics"]["kernel_inception_distance_mean"], rel=1e-9)


def test_cli_reports_bad_input_in_one_line(models, tmp_path, capsys):
    from lcgen.cli import main

    with pytest.raises(SystemExit, match="lcgen evaluate: error: samples do not exist"):
        main(["evaluate", "fid", "--samples", str(tmp_path / "nothing"), "--output", str(tmp_path / "e"),
              *common(models, tmp_path)])
    with pytest.raises(SystemExit, match="metrics must be"):
        main(["evaluate", "fid", "--samples", str(models / "ref.npz"), "--output", str(tmp_path / "e"),
              "--metrics", "fid,fvd", *common(models, tmp_path)])
    with pytest.raises(SystemExit, match="dinov2-vit-l-14 needs --feature-extractor-weights"):
        main(["evaluate", "fid", "--samples", str(models / "ref.npz"), "--output", str(tmp_path / "e"),
              "--reference", str(models / "ref.npz"), "--feature-extractor", "dinov2-vit-l-14",
              "--cache-dir", str(tmp_path / "cache")])
    assert not (tmp_path / "e").exists()
