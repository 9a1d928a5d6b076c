# Source this file after `bash scripts/demo.sh` or `bash scripts/test.sh` (they create ./.venv):
#   source scripts/env.sh
# It activates ./.venv (or $nnUNet_ext_venv) and lets nnU-Net find nnunet_ext's trainers.
_nnunet_ext_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
_nnunet_ext_venv="${nnUNet_ext_venv:-${NNUNET_EXT_VENV:-$_nnunet_ext_root/.venv}}"
if [ -z "${nnUNet_ext_venv:-}" ] && [ -n "${NNUNET_EXT_VENV:-}" ]; then
  echo "nnunet_ext: environment variable NNUNET_EXT_VENV is deprecated, use nnUNet_ext_venv" \
       "(the old name still works)" >&2
fi
if [ ! -x "$_nnunet_ext_venv/bin/python" ]; then
  echo "no virtual environment at $_nnunet_ext_venv: run 'bash scripts/setup_env.sh' first" >&2
else
  . "$_nnunet_ext_venv/bin/activate"
  export nnUNet_extTrainer="$(nnunet-ext trainers-path)${nnUNet_extTrainer:+:$nnUNet_extTrainer}"
  echo "nnunet_ext ready: $(command -v nnUNetv2_train); nnUNet_extTrainer=$nnUNet_extTrainer"
  for _v in nnUNet_raw nnUNet_preprocessed nnUNet_results; do
    [ -n "${!_v:-}" ] || echo "  note: $_v is not set (nnU-Net needs it: export $_v=/path/to/folder)"
  done
fi
unset _nnunet_ext_root _nnunet_ext_venv _v
