#!/bin/sh
# FLARE challenge entry point (the organisers run: sh predict.sh): segment every image in /workspace/inputs into
# /workspace/outputs with nnunet-ext predict-c2f (coarse model -> ROI -> fine model; no mirroring, fp16 on CUDA).
# POSIX sh on purpose: FLARE calls it with sh, which is dash on Debian/Ubuntu images.
#
# Settings (environment variables; the Dockerfile sets the model ones):
#   INPUT_DIR, OUTPUT_DIR      default /workspace/inputs, /workspace/outputs
#   nnUNet_results             folder with the trained models (nnU-Net layout), default /opt/nnunet_ext/results
#   C2F_DATASET                dataset id or name of the models (default 22)
#   C2F_TRAINER, C2F_PLANS     trainer and plans of both models (default nnUNetTrainer, nnUNetPlans)
#   C2F_FOLDS                  folds to use, space separated (default: every trained fold)
#   C2F_DEVICE                 cuda or cpu (default: cuda when available)
#   C2F_CSV                    per-case times and memory (default /tmp/predict_c2f_cases.csv, outside the outputs)
#   C2F_EXTRA                  more predict-c2f options, e.g. "-step_size 0.5 --tta"
INPUT_DIR="${INPUT_DIR:-/workspace/inputs}"
OUTPUT_DIR="${OUTPUT_DIR:-/workspace/outputs}"
export nnUNet_results="${nnUNet_results:-/opt/nnunet_ext/results}"
# nnU-Net warns when its other folders are unset; inference needs neither
export nnUNet_raw="${nnUNet_raw:-/tmp/nnUNet_raw}"
export nnUNet_preprocessed="${nnUNet_preprocessed:-/tmp/nnUNet_preprocessed}"
# nnU-Net finds the project's trainers (needed to rebuild their networks) through nnUNet_extTrainer
export nnUNet_extTrainer="${nnUNet_extTrainer:-$(nnunet-ext trainers-path)}"

set -- -i "$INPUT_DIR" -o "$OUTPUT_DIR" -d "${C2F_DATASET:-22}" -tr "${C2F_TRAINER:-nnUNetTrainer}" \
    -p "${C2F_PLANS:-nnUNetPlans}" --csv "${C2F_CSV:-/tmp/predict_c2f_cases.csv}"
if [ -n "${C2F_FOLDS:-}" ]; then
    # shellcheck disable=SC2086  # folds are words
    set -- "$@" -f ${C2F_FOLDS}
fi
if [ -n "${C2F_DEVICE:-}" ]; then
    set -- "$@" -device "$C2F_DEVICE"
fi

mkdir -p "$OUTPUT_DIR"
# a case that cannot be read is reported and skipped; the others are still written (exit status 1 then)
# shellcheck disable=SC2086  # C2F_EXTRA holds several options
nnunet-ext predict-c2f "$@" ${C2F_EXTRA:-}
status=$?
echo "predict.sh: $(ls "$OUTPUT_DIR" | wc -l) file(s) in $OUTPUT_DIR (predict-c2f exit status $status)"
exit $status
