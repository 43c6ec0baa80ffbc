"""lcgen.priors.train: every family trains a few steps from token shards and samples through its saved
pipeline; resume is exact; two CPU processes (gloo) run the same loop; bad configs fail before writing."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_tokenizer

from lcgen.pipelines import load_pipeline
from lcgen.priors.extract import extract
from lcgen.priors.train import parse_config, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_OPTIONS = {
    "gpt": ["--size", "GPT-T", "--options", "{hidden_size: 32, num_heads: 2, num_layers: 2, ffn_multiple_of: 16}"],
    "ldm": ["--size", "LDM-T", "--options", "{block_out_channels: [32], norm_num_groups: 8, attention_head_dim: 8}"],
    "dit": ["--size", "DiT-T/1", "--options", "{hidden_size: 32, num_heads: 2, num_layers: 2}"],
    "sit": ["--size", "SiT-T/1", "--options", "{hidden_size: 32, num_heads: 2, num_layers: 2}", "--path_type", "gvp"],
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior")
    tiny_tokenizer().save_pretrained(root / "tok")
    extract(str(root / "tok"), "fashion-mnist", str(root / "shards"), max_samples=96, shard_size=64, flip_view=True)
    return str(root / "shards")


def args(family, shards, out, *extra):
    return ["--family", family, *TINY_OPTIONS[family], "--shards", shards, "--output_dir", str(out),
            "--batch_size", "16", "--num_inference_steps", "3", "--report_to", "none", "--log_every", "1", *extra]


@pytest.mark.parametrize("family", ["gpt", "ldm", "dit", "sit"])
def test_each_family_trains_and_samples(family, shards, tmp_path):
    out = train(parse_config(args(family, shards, tmp_path, "--max_train_steps", "3", "--checkpointing_steps", "2",
                                  "--sample_every", "3", "--lr", "1e-3")))
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["train_steps"] == 3 and summary["last_loss"] > 0
    assert (tmp_path / "samples" / "step-3.png").is_file()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["checkpoint-2", "checkpoint-3"]
    pipe = load_pipeline(out)
    assert pipe.family == family and pipe.id2label[0] == "T-shirt/top" and pipe.num_classes == 10
    images = pipe(class_id=["Trouser", 7], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all()
    if family != "gpt":
        meta = json.load(open(os.path.join(shards, "extraction.json")))
        assert pipe.config.latent_scale == pytest.approx(1 / meta["latent_std"])


def weights(run):
    return load_file(os.path.join(run, "pipeline", next(d for d in ("transformer", "unet") if
                                                       os.path.isdir(os.path.join(run, "pipeline", d))),
                                  "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("family", ["gpt", "sit"])
def test_resume_is_exact(family, shards, tmp_path):
    """Stopped at step 3 (mid-epoch: 96 items / 16 = 6 steps per epoch), resumed, crosses into the
    next epoch: the same final (EMA) weights as an uninterrupted run."""
    base = args(family, shards, tmp_path / "a", "--max_train_steps", "8", "--checkpointing_steps", "3",
                "--deterministic", "--lr", "1e-3")
    train(parse_config(base))
    part = args(family, shards, tmp_path / "b", "--max_train_steps", "8", "--checkpointing_steps", "3",
                "--deterministic", "--lr", "1e-3")
    assert train(parse_config(part + ["--stop_at_step", "3"])) == ""
    train(parse_config(part + ["--resume_from_checkpoint", "latest"]))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_process_accelerate_run_on_cpu(shards, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29534",
           "-m", "lcgen.priors.train", *args("dit", shards, tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "2")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["train_steps"] == 4 and summary["global_batch"] == 32
    assert summary["epochs"] == pytest.approx(4 / 3, abs=0.01)  # 96 items / (2 x 16) = 3 steps per epoch
    ckpt = tmp_path / "checkpoints" / "checkpoint-4"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    assert load_pipeline(str(tmp_path / "pipeline")).family == "dit"


def test_bf16_and_push_to_hub_call(shards, tmp_path, monkeypatch):
    from lcgen.pipelines import VQDiTPipeline

    pushed = []
    monkeypatch.setattr(VQDiTPipeline, "push_to_hub", lambda self, repo_id, **kw: pushed.append(repo_id))
    train(parse_config(args("dit", shards, tmp_path, "--max_train_steps", "2", "--mixed_precision", "bf16",
                            "--push_to_hub", "--hub_model_id", "me/dit")))
    assert pushed == ["me/dit"]


@pytest.mark.parametrize("extra,match", [
    (["--family", "vae"], "prior.family"),
    (["--size", "DiT-XL/2"], "does not name a gpt size"),
    (["--size", "GPT-Z"], "unknown GPT size"),
    (["--class_dropout_prob", "1.0"], "class_dropout_prob"),
    (["--num_classes", "3"], "cannot hold the 10 classes"),
    (["--scheduler", "euler-a"], "sampling.scheduler"),
    (["--num_inference_steps", "0"], "num_inference_steps"),
    (["--eta", "nan"], "sampling.eta"),
    (["--eta", "1.0", "--scheduler", "dpmsolver"], "0 unless sampling.scheduler is ddim"),
    (["--resume_from_checkpoint", "latest"], "no checkpoint"),
    (["--batch_size", "1000"], "no full batch"),
    (["--mixed_precision", "fp8"], "mixed_precision"),
    (["--optionz", "{}"], "unknown config key"),
])
def test_bad_configs_fail_before_writing(shards, tmp_path, extra, match):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        train(parse_config(args("gpt", shards, out) + extra))
    assert not out.exists() or not os.listdir(out)


def test_missing_or_wrong_shards(tmp_path, shards):
    with pytest.raises(ValueError, match="run `lcgen extract` first"):
        train(parse_config(args("dit", str(tmp_path / "none"), tmp_path / "run")))
    extract(json.load(open(os.path.join(shards, "extraction.json")))["tokenizer"], "fashion-mnist",
            str(tmp_path / "idx"), max_samples=20, store=["indices"])
    with pytest.raises(ValueError, match="reads latents"):
        train(parse_config(args("dit", str(tmp_path / "idx"), tmp_path / "run")))
