#!/bin/bash
# moet forward --grads equals the PyTorch reference on shapes the golden files do not cover
# (head_dim != hidden/heads, MQA, top-3 of 5 experts, sliding window, masked labels).
set -euo pipefail
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$PY" "$(dirname "$0")/torch_vs_moet.py" "$MOET" "$work"
