#!/bin/bash
# The PyTorch references match the golden data: tests/bench/torch_mixtral.py (the `make bench`
# opponent) against tiny-mixtral (Hugging Face's own numbers): logits, losses, every gradient,
# 5 AdamW steps, LoRA; tests/bench/torch_families.py (Qwen3-MoE, Qwen2-MoE, OLMoE, written from
# transformers' modeling code) against tiny-qwen3moe, tiny-qwen3moe_nonorm, tiny-olmoe and
# tiny-qwen2moe: logits, router logits, losses, every raw gradient, the AdamW trajectory in
# float64 and float32, and Qwen3-MoE's LoRA case (gradients, trajectory, merged weights).
# Prints per-tensor differences and OK / NOT OK; exits 1 on any mismatch.
set -eu
cd "$(dirname "$0")/.."
PY="${PY:-/usr/bin/python3}"
SHARED="${SHARED:-$(cd .. && pwd)/shared}"
"$PY" tests/bench/torch_ref_check.py "$SHARED/golden/tiny-mixtral"
g="$SHARED/golden"
"$PY" tests/bench/torch_families_check.py "$g/tiny-qwen3moe" "$g/tiny-qwen3moe_nonorm" "$g/tiny-olmoe" \
    "$g/tiny-qwen2moe"
