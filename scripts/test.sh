#!/usr/bin/env bash
# Install everything (scripts/setup_env.sh) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${NNUNET_EXT_VENV:-.venv}"
export nnUNet_extTrainer="$("$VENV/bin/nnunet-ext" trainers-path)"
exec "$VENV/bin/python" -m pytest -q -ra tests "$@"
