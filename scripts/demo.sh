#!/usr/bin/env bash
# The main job: set up .venv, then train on scikit-learn's bundled digits under label
# noise with CE and the robust losses, and print the accuracy table (quick variant).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh demo
# shellcheck disable=SC1091
. "${VENV:-.venv}/bin/activate"
fused-anl demo --quick "$@"
