#!/bin/bash
# asan: yes
# Every shipped config in configs/ is valid (keys, types, ranges) and round-trips through
# --print-config; the tiny demo config's model is the size its comment says.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
for f in configs/*.yaml; do
    "$MOET" train "$f" --print-config > "$work/resolved.yaml"
    "$MOET" train "$work/resolved.yaml" --print-config > "$work/again.yaml"
    cmp "$work/resolved.yaml" "$work/again.yaml"
    echo "ok $f"
done
"$MOET" info configs/tiny.yaml | grep -E "^parameters +15476992 "
