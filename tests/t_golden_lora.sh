#!/bin/bash
# asan: yes
# Golden LoRA vs PEFT on every case with a LoRA sub-case: gradients, training steps, trained
# adapter, merged and PEFT exports.
set -euo pipefail
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
n=0
for case in "$SHARED"/golden/*/; do
    [ -e "$case/lora_init" ] || continue
    name=$(basename "$case"); n=$((n + 1))
    mkdir -p "$work/$name/keep"
    echo "== $name"
    "$PY" "$(dirname "$0")/golden_lora.py" "$MOET" "$case" "$work/$name"
    # and on the fallback kernels (OPENBLAS_CORETYPE as configured, see common/blas.h)
    echo "== $name, MOET_BLAS=keep"
    MOET_BLAS=keep "$PY" "$(dirname "$0")/golden_lora.py" "$MOET" "$case" "$work/$name/keep"
done
[ "$n" -ge 1 ] || { echo "no golden cases under $SHARED/golden"; exit 1; }
echo "$n cases"
