"""Typed configs: presets load, overrides apply with types, unknown keys and wrong types name themselves."""
import glob
import os

import pytest

from lcgen.tokenizer.train import parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(ROOT, "configs", "fashion-mnist-looc-cpu.yaml")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_every_preset_parses(path):
    import yaml

    if "prior" in yaml.safe_load(open(path)):  # a stage-two preset
        from lcgen.priors.families import check_family
        from lcgen.priors.train import parse_config as parse_prior_config

        cfg = parse_prior_config(["--config", path])
        check_family(cfg["prior"].family, cfg["prior"].size)
        assert cfg["training"].lr > 0 and cfg["sampling"].guidance_scale >= 1
        return
    cfg = parse_config(["--config", path])
    assert cfg["training"].lr > 0 and cfg["model"]["quantizer_kind"]


def test_overrides_with_and_without_section_are_typed():
    cfg = parse_config(["--config", PRESET, "--lr", "1e-3", "--training.batch_size=7", "--model.codebook_size", "64",
                        "--use_ema", "--data.max_samples", "none", "--quantizer_options", "{chunk_dim: 8}"])
    t = cfg["training"]
    assert t.lr == 1e-3 and isinstance(t.lr, float) and t.batch_size == 7 and t.use_ema is True
    assert cfg["data"].max_samples is None
    assert cfg["model"]["codebook_size"] == 64 and cfg["model"]["quantizer_options"] == {"chunk_dim": 8}


@pytest.mark.parametrize("argv,match", [
    (["--learning_rate", "1"], "unknown config key"),
    (["--training.lr", "fast"], "training.lr must be float"),
    (["--batch_size", "1.5"], "training.batch_size must be int"),
    (["--model.codebook_size", "many"], "model.codebook_size must be int"),
    (["--optim.lr", "1"], "unknown config section"),
    (["--model.quantizer", "lc"], "unknown config key model.quantizer"),
])
def test_bad_overrides_name_the_key(argv, match):
    with pytest.raises(ValueError, match=match):
        parse_config(["--config", PRESET, *argv])


def test_unknown_key_in_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  lr: 1.0e-4\n  epochs: 3\n")
    with pytest.raises(ValueError, match="unknown config key training.epochs"):
        parse_config(["--config", str(p)])
    with pytest.raises(ValueError, match="config file not found"):
        parse_config(["--config", str(tmp_path / "missing.yaml")])


def test_help_lists_every_key_with_type_and_default():
    """`lcgen train-tokenizer -h` / `train-prior -h`: every key of every section, typed, with its default."""
    import subprocess
    import sys

    from lcgen.priors.train import SCHEMAS as PRIOR_SCHEMAS
    from lcgen.tokenizer.train import SCHEMAS
    from lcgen.training.config import _schema_fields

    for command, schemas in (("train-tokenizer", SCHEMAS), ("train-prior", PRIOR_SCHEMAS)):
        out = subprocess.run([sys.executable, "-m", "lcgen.cli", command, "--help"], capture_output=True, text=True,
                             check=True, timeout=120).stdout
        for section, schema in schemas.items():
            assert f"\n{section}:\n" in out
            for key in _schema_fields(schema):
                assert f"--{section}.{key} " in out, (command, section, key)
    assert "--training.lr float  (default: 0.0001)" in out  # the prior's LlamaGen/DiT default
    assert "--training.max_train_steps int | None  (default: None)" in out
    assert "--prior.options dict  (default: {})" in out


def test_resolved_config_holds_every_key_and_loads_back(tmp_path):
    from lcgen.tokenizer.train import SCHEMAS
    from lcgen.training.config import _schema_fields, resolved_config, tracker_hparams, write_config

    cfg = parse_config(["--config", PRESET, "--lr", "1e-3"])
    resolved = resolved_config(cfg, SCHEMAS)
    for section, schema in SCHEMAS.items():
        assert set(resolved[section]) == set(_schema_fields(schema)), section  # defaults included
    assert resolved["model"]["codebook_size"] == cfg["model"]["codebook_size"] and resolved["training"]["lr"] == 1e-3
    write_config(resolved, str(tmp_path / "config.yaml"))
    again = parse_config(["--config", str(tmp_path / "config.yaml")])
    assert resolved_config(again, SCHEMAS) == resolved
    hparams = tracker_hparams(resolved)
    assert hparams["training.lr"] == 1e-3 and hparams["training.batch_size"] == cfg["training"].batch_size
    assert hparams["training.use_ema"] is False and hparams["training.max_train_steps"] is None
    assert isinstance(hparams["model.quantizer_options"], str)  # a dict, which trackers cannot hold, as YAML


@pytest.mark.parametrize("preset,attention_levels", [("vqgan-lc-f16-100k", [False, False, False, False, True]),
                                                     ("vqgan-lc-f8-100k", [False, False, False, False])])
def test_vqgan_lc_presets_place_attention_as_the_official_configs(preset, attention_levels):
    """vq-f16.yaml and vq-f8.yaml both say attn_resolutions [16]: the f16 model's last level (16 px at 256)
    has attention, the f8 model (levels 256, 128, 64, 32 px) has it in the mid blocks only."""
    from lcgen.tokenizer import VQTokenizer

    model = dict(parse_config(["--config", os.path.join(ROOT, "configs", f"{preset}.yaml")])["model"])
    assert list(model["attn_resolutions"]) == [16] and model["resolution"] == 256
    model.update(ch=32, z_channels=8, codebook_size=16, quantizer_kind="vq")  # small; attention placement unchanged
    m = VQTokenizer(**model)
    assert ["Attn" in type(b).__name__ for b in m.encoder.down_blocks] == attention_levels
    assert ["Attn" in type(b).__name__ for b in m.decoder.up_blocks] == attention_levels[::-1]


PULL_OPTIONS = {"projector_init": "latent-stats", "revival": "latent-pull", "pull_weight": 10000.0, "decay": 0.9}


@pytest.mark.parametrize("preset, options", [
    ("fashion-mnist-vqgan-lc-aligned-cpu", {"projector_init": "latent-stats"}),
    ("fashion-mnist-vqgan-lc-pull-cpu", PULL_OPTIONS)])
def test_lcgen_lc_presets_are_the_paper_recipe_plus_their_options(preset, options):
    """The Fashion-MNIST VQGAN-LC recipes differ from the paper's only in their quantizer options (and
    the run folder)."""
    paper, aligned = (parse_config(["--config", os.path.join(ROOT, "configs", f"{name}.yaml")])
                      for name in ("fashion-mnist-vqgan-lc-cpu", preset))
    model = dict(aligned["model"])
    assert model.pop("quantizer_options") == options
    assert model == dict(paper["model"]) and "quantizer_options" not in paper["model"]
    for section in ("loss", "data"):
        assert vars(aligned[section]) == vars(paper[section])
    t_paper, t_aligned = vars(paper["training"]).copy(), vars(aligned["training"]).copy()
    assert t_paper.pop("output_dir") != t_aligned.pop("output_dir")
    assert t_paper == t_aligned
