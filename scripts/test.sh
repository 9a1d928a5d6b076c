#!/usr/bin/env bash
# Install everything (scripts/setup_env.sh) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${nnUNet_ext_venv:-${NNUNET_EXT_VENV:-.venv}}"  # as setup_env.sh (which warns about the old name)
export nnUNet_extTrainer="$("$VENV/bin/nnunet-ext" trainers-path)"
# OpenMP threads sleep while they wait: on 2 cores shared by a training and its data worker, spinning costs ~20%
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec "$VENV/bin/python" -m pytest -q -ra tests "$@"
