#!/bin/bash
# asan: yes
# Golden: `moet forward --grads` on batch 0 of every case in ../shared/golden (Mixtral, Qwen3-MoE,
# Qwen2-MoE, OLMoE, and any added later) matches its reference (logits, losses, router logits,
# every gradient) to 1e-4 relative.
set -euo pipefail
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
n=0
for case in "$SHARED"/golden/*/; do
    [ -e "$case/meta.json" ] || continue
    name=$(basename "$case"); n=$((n + 1))
    mkdir -p "$work/$name/keep"
    echo "== $name"
    "$PY" "$(dirname "$0")/golden_forward.py" "$MOET" "$case" "$work/$name"
    # and on the fallback kernels (OPENBLAS_CORETYPE as configured, see common/blas.h)
    echo "== $name, MOET_BLAS=keep"
    MOET_BLAS=keep "$PY" "$(dirname "$0")/golden_forward.py" "$MOET" "$case" "$work/$name/keep"
done
[ "$n" -ge 1 ] || { echo "no golden cases under $SHARED/golden"; exit 1; }
echo "$n cases"
