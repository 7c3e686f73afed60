#!/bin/bash
# Golden: `moet forward --grads` on tiny-mixtral batch 0 matches HF (logits, losses,
# router logits, every gradient) to 1e-4 relative.
set -euo pipefail
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$PY" "$(dirname "$0")/golden_forward.py" "$MOET" "$SHARED/golden/tiny-mixtral" "$work"
