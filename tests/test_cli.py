"""The lcgen command line: clear one-line errors for bad input, the benchmark, and the quick demo."""
import json
import subprocess
import sys

import pytest

import lcgen_cli


def test_init_codebook_bad_input_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit) as exc:
        lcgen_cli.main(["init-codebook", "--encoder", str(tmp_path), "--image-folder", str(tmp_path / "none"),
                        "--codebook-size", "8", "--output", str(tmp_path / "c.pth")])
    assert "error: output must end in .safetensors" in str(exc.value)
    assert not list(tmp_path.iterdir())


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "lcgen_cli", "--help"], capture_output=True, text=True, check=True)
    assert "init-codebook" in out.stdout and "demo" in out.stdout


@pytest.mark.slow
def test_benchmark_search_prints_the_table(capsys):
    lcgen_cli.main(["benchmark-search", "--size", "smallest", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "| 1,024 | 8 | lcgen |" in out and "| 1,024 | 768 | faiss |" in out
    assert "False" not in out  # every method exact on the sample


@pytest.mark.slow
def test_quick_demo_trains_evaluates_and_reports(tmp_path, capsys):
    lcgen_cli.main(["demo", "--quick", "--output", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    m = report["test_metrics"]
    assert report["train_steps"] == 150 and m["images"] == 2000 and m["quantizer"] == "looc"
    # LooC keeps its small shared codebook in use, and 150 steps already beat a flat image (~9 dB)
    assert m["utilisation"] > 0.9 and m["psnr"] > 12
    for f in ("eval/metrics.json", "eval/reconstructions.png", "eval/code_usage.png", "tokenizer/model/config.json"):
        assert (tmp_path / f).is_file(), f
    assert "PSNR" in capsys.readouterr().out
