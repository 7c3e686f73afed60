#!/bin/bash
# GGUF export checked in a real llama.cpp: tools/llama_setup.sh installs node-llama-cpp's
# prebuilt libllama (cached in build/llama) and builds tests/llama/llama_check against it;
# tests/llama/compare.py exports Mixtral models and Qwen3-MoE, Qwen2-MoE and OLMoE ones (with
# llama.cpp's qwen3moe / qwen2moe / olmoe architectures) with `moet export --format gguf` (F32,
# F16, BF16) and compares llama.cpp's logits at every position with `moet forward` (and the
# golden ones), and its tokenization with `moet tokenize` and Hugging Face's reference ids.
# No network for npm is a FAILURE of this test, not a skip.
# asan: yes
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
if ! check=$("$root/tools/llama_setup.sh" "$root/build/llama"); then
    echo "t_gguf_llama: FAILED to set up llama.cpp (tools/llama_setup.sh above); this test needs the npm registry once" >&2
    exit 1
fi
check=$(echo "$check" | tail -1)
"$PY" "$root/tests/llama/compare.py" "$MOET" "$check" "$SHARED" "$work"
