#!/bin/bash
# asan: yes
# Golden LoRA vs PEFT on every case with a LoRA sub-case: gradients, training steps, trained
# adapter, merged and PEFT exports.
set -euo pipefail
. "$(dirname "$0")/golden_paths.sh"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
n=0
for case in "$SHARED"/golden/*/; do
    [ -e "$case/lora_init" ] || continue
    name=$(basename "$case"); n=$((n + 1))
    golden_run golden_lora.py "$case" "$work/$name"
done
[ "$n" -ge 1 ] || { echo "no golden cases under $SHARED/golden"; exit 1; }
echo "$n cases"
