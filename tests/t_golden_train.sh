#!/bin/bash
# asan: yes
# Golden trajectory: 5 AdamW steps of `moet train` match HF/torch (step_stats, after_steps).
set -euo pipefail
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/keep"
"$PY" "$(dirname "$0")/golden_train.py" "$MOET" "$SHARED/golden/tiny-mixtral" "$work"
# and on the fallback kernels (OPENBLAS_CORETYPE as configured, see common/blas.h)
echo "== MOET_BLAS=keep"
MOET_BLAS=keep "$PY" "$(dirname "$0")/golden_train.py" "$MOET" "$SHARED/golden/tiny-mixtral" "$work/keep"
