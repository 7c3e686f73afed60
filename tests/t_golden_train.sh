#!/bin/bash
# Golden trajectory: 5 AdamW steps of `moet train` match HF/torch (step_stats, after_steps).
set -euo pipefail
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$PY" "$(dirname "$0")/golden_train.py" "$MOET" "$SHARED/golden/tiny-mixtral" "$work"
