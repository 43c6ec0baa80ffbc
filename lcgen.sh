#!/usr/bin/env bash
# The two README commands. Each first makes sure the machine is set up (scripts/bootstrap.sh:
# virtual environment, pinned packages, Debian Fashion-MNIST), then runs:
#   ./lcgen.sh demo [--quick]   the main job
#   ./lcgen.sh test [pytest args]   the test suite (offline)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/bootstrap.sh"
py="${LCGEN_VENV:-$root/.venv}/bin/python"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
cmd="${1:-demo}"; shift || true
cd "$root"
case "$cmd" in
  demo) exec "$py" -m lcgen.cli demo "$@" ;;
  test) exec "$py" -m pytest -q "$@" ;;
  *) echo "usage: ./lcgen.sh demo [--quick] | ./lcgen.sh test [pytest args]" >&2; exit 2 ;;
esac
