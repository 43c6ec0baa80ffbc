"""The VQGAN-LC reproduction benchmark: finished runs are only reused under the budget they ran with."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import reproduce_vqgan_lc  # noqa: E402


def test_refuses_results_of_another_budget_before_any_work(tmp_path, capsys):
    row = {"budget": "quick", "steps": 60, "options": [], "kind": "lc"}
    (tmp_path / "results.json").write_text(json.dumps({"lc-100000": row}))
    with pytest.raises(SystemExit):
        reproduce_vqgan_lc.main(["--output", str(tmp_path)])  # the full budget
    assert "pass another --output" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["results.json"]  # no judge, no codebook started


def test_every_run_names_a_shipped_preset_and_budgets_fit_the_token_counts():
    from lcgen.tokenizer.train import parse_config

    presets = {preset for *_, preset in reproduce_vqgan_lc.RUNS}
    assert presets == {reproduce_vqgan_lc.PRESET, reproduce_vqgan_lc.ALIGNED, reproduce_vqgan_lc.PULLED}
    for preset in presets:  # resolves by name, as the benchmark passes it
        assert parse_config(["--config", preset])["model"]["quantizer_kind"] == "lc"
    # the full budget counts usage over the whole training split: >= 25 tokens per code at K = 100,000
    assert reproduce_vqgan_lc.BUDGETS["full"]["usage_images"] is None and 60_000 * 49 / 100_000 >= 25
