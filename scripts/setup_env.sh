#!/usr/bin/env bash
# Create ./.venv (if missing) and install nnunet_ext with everything it needs. Safe to re-run.
# Needs only Python >= 3.10. Set NNUNET_EXT_VENV to use another folder.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${NNUNET_EXT_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, pinned, so that nnunetv2's "torch" requirement does not pull another build
if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
"$VENV/bin/python" -m pip install -q -e ".[test]"
echo "nnunet_ext installed in $VENV ($("$VENV/bin/python" -c 'import nnunetv2, torch; print("nnunetv2", nnunetv2.__version__ if hasattr(nnunetv2, "__version__") else "", "torch", torch.__version__)'))"
