#!/usr/bin/env bash
# Install everything (scripts/setup_env.sh) and run the demo. Extra arguments go to `nnunet-ext demo`
# (e.g. --long, --workdir DIR, --trainers nnUNetTrainer,nnUNetTrainerFD,nnUNetTrainerFD_lambda0p01).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${nnUNet_ext_venv:-${NNUNET_EXT_VENV:-.venv}}"  # as setup_env.sh (which warns about the old name)
exec "$VENV/bin/nnunet-ext" demo "$@"
