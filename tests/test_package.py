"""The installable package: the wheel holds only `lcgen/` (and its dist-info) at the top, every source
module of the repository's folders under its `lcgen.*` name, and every preset; presets resolve by
name from any working directory."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from lcgen.configs import PRESETS_DIR, preset_names, resolve_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {"lcgen": "lcgen", "configs": "lcgen/configs", "tokenizer": "lcgen/tokenizer", "priors": "lcgen/priors",
           "pipelines": "lcgen/pipelines", "eval": "lcgen/eval"}


def package_sources(dest):
    """What a source distribution holds (pyproject.toml, README.md, the package folders), copied so that
    building writes nothing into the checkout."""
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, f), dest)
    for folder in FOLDERS:
        shutil.copytree(os.path.join(ROOT, folder), os.path.join(dest, folder),
                        ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src, out = package_sources(tmp_path_factory.mktemp("src")), tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, capture_output=True, timeout=300)
    (path,) = [os.path.join(out, f) for f in os.listdir(out) if f.endswith(".whl")]
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) if name.endswith("entry_points.txt") else None for name in z.namelist()}


@pytest.mark.slow
def test_the_wheel_holds_only_lcgen_at_the_top(wheel):
    tops = {name.split("/")[0] for name in wheel}
    assert tops == {"lcgen", "lcgen-0.1.0.dist-info"}, tops
    (entry,) = [v for n, v in wheel.items() if n.endswith("entry_points.txt")]
    assert "lcgen = lcgen.cli:main" in entry.decode()


@pytest.mark.slow
def test_the_wheel_holds_every_source_module_and_preset(wheel):
    expected = set()
    for folder, target in FOLDERS.items():
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, os.path.join(ROOT, folder))
            for f in files:
                if f.endswith(".py") or (folder == "configs" and f.endswith((".yaml", ".md"))):
                    expected.add("/".join(p for p in (target, "" if rel == "." else rel.replace(os.sep, "/"), f) if p))
    missing = expected - set(wheel)
    assert not missing, sorted(missing)
    assert {f"lcgen/configs/{n}.yaml" for n in preset_names()} <= set(wheel) and len(preset_names()) >= 20


def test_presets_resolve_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config("vqgan-lc-f16-100k") == os.path.join(PRESETS_DIR, "vqgan-lc-f16-100k.yaml")
    assert resolve_config("vqgan-lc-f16-100k.yaml") == os.path.join(PRESETS_DIR, "vqgan-lc-f16-100k.yaml")
    own = tmp_path / "mine.yaml"
    own.write_text("training: {}\n")
    assert resolve_config("mine.yaml") == "mine.yaml"  # a file wins over a preset name
    with pytest.raises(ValueError, match="no preset name.*vqgan-lc-f16-100k"):
        resolve_config("vqgan-lc-f99")
    with pytest.raises(ValueError, match="config file not found"):
        resolve_config("configs/vqgan-lc-f16-100k.yaml")  # a relative path that is not here is not a preset
