#!/usr/bin/env bash
# The installed package on its own: build lcgen's wheel, install it (with the pinned torch pair) into
# a fresh virtual environment, check that only `lcgen` landed at the top of site-packages, and run
# `lcgen demo --quick` from a directory outside the checkout. Run by .ci/run after the test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${LCGEN_VENV:-$root/.venv}/bin/python"
work="$(mktemp -d "${TMPDIR:-/tmp}/lcgen-wheel.XXXXXX")"
# build from a copy of what a source distribution holds: nothing is written into the checkout
mkdir "$work/src"
cp "$root/pyproject.toml" "$root/README.md" "$work/src/"
for d in lcgen configs tokenizer priors pipelines eval; do cp -r "$root/$d" "$work/src/$d"; done
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"$py" -m pip wheel "$work/src" --no-deps -q -w "$work/dist"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q -c "$root/constraints.txt" "$work"/dist/lcgen-*.whl
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$work/venv/bin/python" - "$work/dist" "$site" <<'PY'
import os, sys, zipfile
(wheel,) = [os.path.join(sys.argv[1], f) for f in os.listdir(sys.argv[1]) if f.endswith(".whl")]
tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
assert tops == {"lcgen", "lcgen-0.1.0.dist-info"}, f"the wheel's top level is {sorted(tops)}"
for name in ("tokenizer", "priors", "pipelines", "eval"):
    assert not os.path.exists(os.path.join(sys.argv[2], name)), f"{name}/ landed in site-packages"
print(f"wheel ok: {os.path.basename(wheel)} holds only {sorted(tops)}")
PY
cd "$work"
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "$work/venv/bin/lcgen" demo --quick --output "$work/demo"
test -f "$work/demo/report.json"
echo "installed wheel ran lcgen demo --quick outside the checkout: $work/demo/report.json"
