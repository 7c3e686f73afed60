#!/bin/bash
# t_chat: chat templates end to end.
#  1. moet's rendering (data/chat.c) and the Jinja chat_template it exports agree exactly: every
#     conversation of tests/chat/conversations.json (system, multi-turn, empty contents, quotes,
#     new lines, unicode, marker text in a content), add_generation_prompt false and true, both
#     templates, three tokenizers (tiny SentencePiece, Mistral's 32000, Qwen3's byte-level),
#     rendered by Hugging Face's own Jinja (npm @huggingface/jinja, installed into
#     build/chatjinja on first run) with the tokenizer's bos/eos tokens; with Qwen's tokenizer the
#     Jinja text, tokenized whole, gives moet's piece-by-piece ids.
#  2. prep and generate use the same code: the ids of `generate --chat-file` (--prompt-ids) are
#     token for token the start of the document prep made of the same conversation with its reply.
#  3. the template travels: prep records it in the shards, train in trainer_state.json, export
#     writes it into tokenizer_config.json (hf, peft, merged) and GGUF (tokenizer.chat_template);
#     --chat-template overrides; llama.cpp (node-llama-cpp's libllama, tools/llama_setup.sh)
#     reads the GGUF's template back byte for byte and formats a conversation as moet does.
#  4. bad input: one line, non-zero exit.
# No network for npm is a FAILURE of this test, not a skip.
# asan: yes
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export CHAT_JINJA_DIR=$root/build/chatjinja
if [ ! -e "$CHAT_JINJA_DIR/node_modules/@huggingface/jinja/package.json" ]; then
    mkdir -p "$CHAT_JINJA_DIR"
    (cd "$CHAT_JINJA_DIR" && npm install --no-audit --no-fund --silent @huggingface/jinja@0.5.11 > npm.log 2>&1) ||
        { echo "t_chat: cannot install npm @huggingface/jinja@0.5.11 (see $CHAT_JINJA_DIR/npm.log)"; exit 1; }
fi
if ! check=$("$root/tools/llama_setup.sh" "$root/build/llama"); then
    echo "t_chat: FAILED to set up llama.cpp (tools/llama_setup.sh above)" >&2
    exit 1
fi
export LLAMA_CHECK=$(echo "$check" | tail -1)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
export TINY=$SHARED/golden/tiny-mixtral/model MISTRAL=$SHARED/data/mistral-tokenizer/tokenizer.json
export QWEN=$SHARED/data/qwen3-tokenizer/tokenizer.json
"$PY" "$root/tests/llama/make_model.py" "$work/qwen-model" "$QWEN" hidden_size=16 intermediate_size=16 \
    num_hidden_layers=1 num_attention_heads=2 num_key_value_heads=1 num_local_experts=2 num_experts_per_tok=1 \
    vocab_size=151936 seed=3 > /dev/null
cd "$work"
"$PY" "$root/tests/chat/check.py" "$root"
