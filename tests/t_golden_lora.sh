#!/bin/bash
# Golden LoRA vs PEFT: gradients, 5 training steps, trained adapter, merged and PEFT exports.
set -euo pipefail
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$PY" "$(dirname "$0")/golden_lora.py" "$MOET" "$SHARED/golden/tiny-mixtral" "$work"
