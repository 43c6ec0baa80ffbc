#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: virtual environment, packages (pinned torch/torchvision
# pair from constraints.txt), and the Debian Fashion-MNIST files where apt is available.
# Sourced by ./lcgen.sh; safe to run again (each step is skipped once done).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LCGEN_VENV:-$root/.venv}"
stamp="$venv/.lcgen-installed"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Re-install when pyproject.toml or constraints.txt changed since the last install.
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -c "$root/constraints.txt" -e "$root[test,bench]"
  echo "$want" > "$stamp"
fi

# Real offline data for the demo and tests: Debian's dataset-fashion-mnist (30 MB).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  sudo_cmd=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo_cmd="sudo"; fi
  # --reinstall: the package can be registered as installed with its files gone
  ( $sudo_cmd apt-get install -y -q --reinstall dataset-fashion-mnist >/dev/null 2>&1 \
    || { $sudo_cmd apt-get update -q >/dev/null 2>&1 && $sudo_cmd apt-get install -y -q --reinstall dataset-fashion-mnist >/dev/null 2>&1; } ) \
    || echo "note: could not install dataset-fashion-mnist with apt; Fashion-MNIST tests will be skipped" >&2
fi
