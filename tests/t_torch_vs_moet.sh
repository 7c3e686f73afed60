#!/bin/bash
# moet forward --grads equals the PyTorch references on shapes the golden files do not cover:
# Mixtral (head_dim != hidden/heads, MQA, top-3 of 5 experts, sliding window) and Qwen3-MoE,
# Qwen2-MoE, OLMoE (dense layers at other positions, shared expert sizes, biases on and off,
# a clip_qkv that clips, top-1 to top-4 raw or renormalised, tied embeddings); masked labels.
set -euo pipefail
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$PY" "$(dirname "$0")/torch_vs_moet.py" "$MOET" "$work"
