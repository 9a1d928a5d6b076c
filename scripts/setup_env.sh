#!/usr/bin/env bash
# Create ./.venv (if missing) and install nnunet_ext with everything it needs. Safe to re-run.
# Needs only Python >= 3.10. Set nnUNet_ext_venv to use another folder (old name: NNUNET_EXT_VENV, deprecated).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${nnUNet_ext_venv:-${NNUNET_EXT_VENV:-.venv}}"
if [ -z "${nnUNet_ext_venv:-}" ] && [ -n "${NNUNET_EXT_VENV:-}" ]; then
  echo "nnunet_ext: environment variable NNUNET_EXT_VENV is deprecated, use nnUNet_ext_venv" \
       "(the old name still works)" >&2
fi
PY="${PYTHON:-python3}"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
quiet() {  # run a command, show its output only if it fails
  if ! "$@" >"$LOG" 2>&1; then cat "$LOG"; echo "failed: $*" >&2; exit 1; fi
}
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV"
  quiet "$PY" -m venv "$VENV"
fi
# torch first, pinned, so that nnunetv2's "torch" requirement does not pull another build
if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "installing torch 2.14.1 + torchvision 0.29.1 (several GB, a few minutes)"
  quiet "$VENV/bin/python" -m pip install "torch==2.14.1" "torchvision==0.29.1"
fi
echo "installing nnunet_ext and its requirements (nnunetv2 >= 2.8.1)"
quiet "$VENV/bin/python" -m pip install -e ".[test]"
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
print(f"ready: nnunet_ext {version('nnunet_ext')}, nnunetv2 {version('nnunetv2')}, torch {version('torch')}")
PY
