#!/bin/bash
# asan: yes
# Golden trajectory: the AdamW steps of `moet train` match every case in ../shared/golden (step
# stats, after_steps).
set -euo pipefail
. "$(dirname "$0")/golden_paths.sh"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
n=0
for case in "$SHARED"/golden/*/; do
    [ -e "$case/after_steps" ] || continue
    name=$(basename "$case"); n=$((n + 1))
    golden_run golden_train.py "$case" "$work/$name"
done
[ "$n" -ge 1 ] || { echo "no golden cases under $SHARED/golden"; exit 1; }
echo "$n cases"
