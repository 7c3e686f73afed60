#!/bin/bash
# The PyTorch reference of `make bench` (tests/bench/torch_mixtral.py) matches the
# Hugging Face golden data: logits, losses, every gradient, 5 AdamW steps, LoRA.
# Prints per-tensor max diffs and OK / NOT OK; exits 1 on any mismatch.
set -eu
cd "$(dirname "$0")/.."
PY="${PY:-/usr/bin/python3}"
SHARED="${SHARED:-$(cd .. && pwd)/shared}"
exec "$PY" tests/bench/torch_ref_check.py "$SHARED/golden/tiny-mixtral"
