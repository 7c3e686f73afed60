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
# model.arch takes Mixtral config.json keys only: a typo is an error with a suggestion,
# not a silently kept default
if "$MOET" train configs/tiny.yaml model.arch.num_local_expert=16 --print-config >/dev/null 2>"$work/err"; then
    echo "FAIL: a misspelt model.arch key was accepted"; exit 1
fi
grep -q "unknown key 'model.arch.num_local_expert' (did you mean 'num_local_experts'?)" "$work/err"
echo "ok model.arch typo: $(cat "$work/err")"
