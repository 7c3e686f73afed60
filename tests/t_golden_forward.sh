#!/bin/bash
# asan: yes
# Golden: `moet forward --grads` on batch 0 of every case in ../shared/golden (Mixtral, Qwen3-MoE,
# Qwen2-MoE, OLMoE, and any added later) matches its reference (logits, losses, router logits,
# every gradient) to 1e-4 relative.
set -euo pipefail
. "$(dirname "$0")/golden_paths.sh"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
n=0
for case in "$SHARED"/golden/*/; do
    [ -e "$case/meta.json" ] || continue
    name=$(basename "$case"); n=$((n + 1))
    golden_run golden_forward.py "$case" "$work/$name"
done
[ "$n" -ge 1 ] || { echo "no golden cases under $SHARED/golden"; exit 1; }
echo "$n cases"
