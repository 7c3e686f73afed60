#!/bin/bash
# asan: yes
# Golden trajectory: the AdamW steps of `moet train` match every case in ../shared/golden (step
# stats, after_steps).
set -euo pipefail
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
n=0
for case in "$SHARED"/golden/*/; do
    [ -e "$case/after_steps" ] || continue
    name=$(basename "$case"); n=$((n + 1))
    mkdir -p "$work/$name/keep"
    echo "== $name"
    "$PY" "$(dirname "$0")/golden_train.py" "$MOET" "$case" "$work/$name"
    # and on the fallback kernels (OPENBLAS_CORETYPE as configured, see common/blas.h)
    echo "== $name, MOET_BLAS=keep"
    MOET_BLAS=keep "$PY" "$(dirname "$0")/golden_train.py" "$MOET" "$case" "$work/$name/keep"
done
[ "$n" -ge 1 ] || { echo "no golden cases under $SHARED/golden"; exit 1; }
echo "$n cases"
