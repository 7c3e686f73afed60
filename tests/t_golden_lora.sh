#!/bin/bash
# asan: yes
# Golden LoRA vs PEFT: gradients, 5 training steps, trained adapter, merged and PEFT exports.
set -euo pipefail
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/keep"
"$PY" "$(dirname "$0")/golden_lora.py" "$MOET" "$SHARED/golden/tiny-mixtral" "$work"
# and on the fallback kernels (OPENBLAS_CORETYPE as configured, see common/blas.h)
echo "== MOET_BLAS=keep"
MOET_BLAS=keep "$PY" "$(dirname "$0")/golden_lora.py" "$MOET" "$SHARED/golden/tiny-mixtral" "$work/keep"
