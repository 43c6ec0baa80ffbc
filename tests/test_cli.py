"""The lcgen command line: clear one-line errors for bad input, and the quick demo runs."""
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
def test_quick_demo_prints_the_benchmark_table(capsys):
    lcgen_cli.main(["demo", "--quick"])
    out = capsys.readouterr().out
    assert "| 1,024 | 8 | lcgen |" in out and "| 1,024 | 768 | faiss |" in out
    assert "False" not in out  # every method exact on the sample
