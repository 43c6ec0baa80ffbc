"""Tokenizer training: exact resume (CPU, deterministic), atomic checkpoints, a two-process
accelerate run with gloo, and bad configs rejected before anything is written."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lcgen.tokenizer.train import SCHEMAS, parse_config, train
from lcgen.training.checkpointing import list_checkpoints, resolve_checkpoint
from lcgen.training.config import resolved_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(ROOT, "configs", "fashion-mnist-looc-cpu.yaml")
TINY = ["--config", PRESET, "--max_samples", "192", "--batch_size", "32", "--hidden_channels", "16",
        "--residual_channels", "4", "--embed_dim", "16", "--report_to", "none", "--deterministic"]


def weights(run_dir):
    return load_file(os.path.join(run_dir, "model", "diffusion_pytorch_model.safetensors"))


@pytest.mark.slow
def test_resume_mid_epoch_ends_with_identical_weights(tmp_path):
    # 6 batches per epoch, 10 steps: the interruption at step 4 is mid-epoch and the resumed run
    # crosses an epoch boundary; EMA and the CVQ statistics must come back too
    common = TINY + ["--max_train_steps", "10", "--checkpointing_steps", "2", "--use_ema"]
    train(parse_config(common + ["--output_dir", str(tmp_path / "a")]))
    assert train(parse_config(common + ["--output_dir", str(tmp_path / "b"), "--stop_at_step", "4"])) == ""
    assert not (tmp_path / "b" / "model").exists()
    assert [s for s, _ in list_checkpoints(str(tmp_path / "b"))] == [2, 4]
    train(parse_config(common + ["--output_dir", str(tmp_path / "b"), "--resume_from_checkpoint", "latest"]))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    summary = json.loads((tmp_path / "b" / "train_summary.json").read_text())
    assert summary["steps"] == 10


def test_run_writes_its_resolved_config_and_takes_accelerates_precision(tmp_path, monkeypatch):
    """training.mixed_precision unset -> what `accelerate launch --mixed_precision` set (its env variable);
    config.yaml records every key, the precision in effect included, and reruns the same run."""
    import yaml

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    out = tmp_path / "run"
    train(parse_config(TINY + ["--output_dir", str(out), "--max_train_steps", "1", "--checkpointing_steps", "1"]))
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["training"]["mixed_precision"] == "bf16" and resolved["training"]["max_train_steps"] == 1
    assert resolved["model"]["codebook_size"] == 256 and "quantizer_options" in resolved["model"]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    again = parse_config(["--config", str(out / "config.yaml"), "--output_dir", str(tmp_path / "again")])
    assert again["training"].mixed_precision == "bf16"
    assert resolved_config(again, SCHEMAS)["model"] == resolved["model"]


def test_interrupted_save_is_not_a_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "checkpoint-2").mkdir(parents=True)
    (root / "checkpoint-4.tmp").mkdir()  # a save that never finished
    assert resolve_checkpoint(str(tmp_path), "latest") == (2, str(root / "checkpoint-2"))
    with pytest.raises(ValueError, match="no checkpoint"):
        resolve_checkpoint(str(tmp_path / "empty"), "latest")


@pytest.mark.parametrize("argv,match", [
    (["--mixed_precision", "fp64"], "mixed_precision must be one of"),
    (["--batch_size", "0"], "batch_size must be > 0"),
    (["--data.channels", "3"], "does not match model.in_channels"),
    (["--codebook_size", "0"], "codebook_size must be > 0"),
    (["--quantizer_options", "{chunk_dim: 5}"], "chunk_dim=5 must divide"),
    (["--push_to_hub"], "hub_model_id"),
    (["--resume_from_checkpoint", "latest"], "no checkpoint"),
    (["--data.name", "imagefolder", "--data.data_dir", "/nonexistent"], "existing folder"),
    (["--max_samples", "10"], "10 images make no full batch of 32"),
])
def test_bad_config_fails_before_any_write(tmp_path, argv, match):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        train(parse_config(TINY + ["--output_dir", str(out), "--max_train_steps", "1"] + argv))
    assert not out.exists()


def test_cli_error_is_one_line(tmp_path):
    from lcgen import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["train-tokenizer", "--config", PRESET, "--lr", "fast", "--output_dir", str(tmp_path / "x")])
    assert str(exc.value) == "lcgen train-tokenizer: error: training.lr must be float, got 'fast'"


@pytest.mark.slow
def test_two_process_accelerate_run_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           "-m", "lcgen.tokenizer.train", *TINY[:-1], "--max_train_steps", "4", "--checkpointing_steps", "2",
           "--output_dir", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 4
    # 192 images / (2 processes x 32) = 3 steps per epoch
    assert summary["epochs"] == pytest.approx(4 / 3)
    ckpt = out / "checkpoints" / "checkpoint-4"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    assert (out / "model" / "diffusion_pytorch_model.safetensors").is_file()


def test_bf16_mixed_precision_run_and_push_to_hub_call(tmp_path, monkeypatch):
    from lcgen.tokenizer import VQTokenizer

    pushed = []
    monkeypatch.setattr(VQTokenizer, "push_to_hub", lambda self, repo_id, **kw: pushed.append(repo_id))
    out = tmp_path / "bf16"
    train(parse_config(TINY[:-1] + ["--max_train_steps", "2", "--mixed_precision", "bf16", "--output_dir", str(out),
                                    "--push_to_hub", "--hub_model_id", "me/looc-test"]))
    assert pushed == ["me/looc-test"]
    loaded = VQTokenizer.from_pretrained(out / "model")
    assert loaded.quantizer.codebook.embed.dtype == torch.float32  # weights stay fp32 under autocast


def test_tensorboard_logs_losses_usage_and_reconstruction_grid(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    train(parse_config(TINY[:-1] + ["--max_train_steps", "3", "--log_every", "1", "--report_to", "tensorboard",
                                    "--output_dir", str(out)]))
    files = list((out / "logs").rglob("events.out.tfevents.*"))
    assert files
    acc = EventAccumulator(str(files[0].parent), size_guidance={"images": 4}).Reload()
    tags = acc.Tags()
    for tag in ("loss/total", "loss/reconstruction", "loss/quantizer", "lr", "codebook/utilisation",
                "codebook/perplexity"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in acc.Scalars("loss/total")] == [1, 2, 3]
    assert "reconstructions" in tags["images"]


def test_streaming_image_folder_run_counts_the_corrupt_file(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "imgs" / "only"
    folder.mkdir(parents=True)
    for i in range(9):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (30, 30), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "z-broken.png").write_bytes(b"broken")
    out = tmp_path / "stream"
    train(parse_config(TINY[:-1] + ["--data.name", "imagefolder", "--data.data_dir", str(tmp_path / "imgs"),
                                    "--data.streaming", "--data.resolution", "28", "--data.max_samples", "none",
                                    "--batch_size", "5", "--max_train_steps", "2", "--output_dir", str(out)]))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_images"] == 1


def test_vqgan_lc_run_with_lpips_and_gan_after_disc_start(tmp_path):
    """The VQGAN recipe end to end on tiny sizes: LC codebook from a file, LPIPS, GAN from step 1."""
    from safetensors.torch import save_file

    codebook = tmp_path / "codebook.safetensors"
    save_file({"codebook": torch.randn(64, 12)}, str(codebook))
    out = tmp_path / "vqgan"
    preset = os.path.join(ROOT, "configs", "vqgan-lc-f16-100k.yaml")
    train(parse_config([
        "--config", preset, "--data.name", "fashion-mnist", "--data.resolution", "32", "--data.crop", "center",
        "--data.num_workers", "0", "--max_samples", "16", "--model.resolution", "32", "--ch", "32",
        "--ch_mult", "[1, 2]", "--attn_resolutions", "[16]", "--z_channels", "16", "--codebook_size", "64",
        "--init_codebook", str(codebook), "--lpips_random_trunk", "--disc_start", "1", "--disc_ndf", "8",
        "--batch_size", "4", "--max_train_steps", "3", "--lr_warmup_steps", "1", "--log_every", "1",
        "--report_to", "none", "--output_dir", str(out)]))
    summary = json.loads((out / "train_summary.json").read_text())
    losses = summary["last_losses"]
    assert {"loss/perceptual", "loss/generator_adv", "loss/discriminator", "loss/adaptive_weight"} <= set(losses)
    from lcgen.tokenizer import VQTokenizer

    loaded = VQTokenizer.from_pretrained(out / "model")
    assert loaded.config.frozen_codebook_source == str(codebook)
    from safetensors.torch import load_file

    assert torch.equal(loaded.quantizer.codebook.frozen, load_file(str(codebook))["codebook"])


def test_discriminator_fakes_come_from_the_updated_generator_without_a_second_codebook_update():
    """VQGAN-LC recomputes the reconstructions for the discriminator step (`model(x, step=1)` after the
    generator's update); that pass must not move an EMA codebook a second time."""
    from lcgen.tokenizer import VQTokenizer
    from lcgen.tokenizer.train import updated_reconstructions

    torch.manual_seed(0)
    m = VQTokenizer(backbone="vqvae", in_channels=1, hidden_channels=16, residual_channels=4, embed_dim=4,
                    quantizer_kind="ema", codebook_size=8).train()
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    before = {k: v.clone() for k, v in m.quantizer.state_dict().items()}
    fakes = updated_reconstructions(m, x)
    assert m.training and not fakes.requires_grad
    assert all(torch.equal(before[k], v) for k, v in m.quantizer.state_dict().items())
    with torch.no_grad():
        m.decoder.conv_out.bias.add_(0.5)  # a generator update: the next fakes must show it
    assert torch.allclose(updated_reconstructions(m, x), fakes + 0.5, atol=1e-6)
