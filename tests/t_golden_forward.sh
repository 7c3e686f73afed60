#!/bin/bash
# asan: yes
# Golden: `moet forward --grads` on tiny-mixtral batch 0 matches HF (logits, losses,
# router logits, every gradient) to 1e-4 relative.
set -euo pipefail
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/keep"
"$PY" "$(dirname "$0")/golden_forward.py" "$MOET" "$SHARED/golden/tiny-mixtral" "$work"
# and on the fallback kernels (OPENBLAS_CORETYPE as configured, see common/blas.h)
echo "== MOET_BLAS=keep"
MOET_BLAS=keep "$PY" "$(dirname "$0")/golden_forward.py" "$MOET" "$SHARED/golden/tiny-mixtral" "$work/keep"
