#!/bin/bash
# The second walkthrough (`make demo-lora`): LoRA fine-tuning of the demo model for chat.
#   1. the demo model: make demo's runs/tiny (tools/demo.sh runs first when it is missing)
#   2. a chat set from the King James Bible (Debian's bible-kjv, public domain): for verses of
#      Genesis, Psalms, Proverbs and John, "What does Genesis 1:1 say?" (and two other
#      phrasings, half with a system message) -> the verse; prepped with the tokenizer's
#      own chat template (mistral for the demo tokenizer), 5% held out
#   3. the expected time, measured (tools/demo_time.sh), then LoRA training of
#      configs/tiny-lora.yaml with a baseline eval at step 0 (train.eval_at_start)
#   4. exports: PEFT adapter, merged model, GGUF; `sha256sum -c SHA256SUMS` in each
#   5. `moet generate --chat` on the LoRA checkpoint and on the merged export (greedy: the same
#      answer), and llama.cpp (node-llama-cpp's libllama, tools/llama_setup.sh) on the GGUF
# DEMO_LORA_QUICK=1 (CI: tests/t_demo_lora.sh) does it all small and self-contained in
# DEMO_LORA_DIR: a base trained 20 steps on Genesis, 8 LoRA steps (evals of 2 batches) on Genesis' chat set.
# Answers land in DIR/answers/ (text and ids) for the test to compare.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
quick=${DEMO_LORA_QUICK:-0}
dir=${DEMO_LORA_DIR:-demo}
if [ "$quick" != 1 ]; then
    tools/deps.sh
    make -s -j2 moet
fi
mkdir -p "$dir/answers"
base=
if [ "$quick" = 1 ]; then
    echo "== quick: a base model trained 20 steps on Genesis ($dir)"
    bible -f gen1:1-gen50:26 | awk '{ split($1, a, ":"); if (a[1] != prev && NR > 1) print ""; prev = a[1];
                                      sub(/^[^ ]+ /, ""); print }' > "$dir/corpus.txt"   # a chapter a paragraph
    ./moet tokenizer train --vocab-size 1024 --out "$dir/tokenizer.json" "$dir/corpus.txt" > /dev/null 2>&1
    rm -rf "$dir/data"
    ./moet prep --tokenizer "$dir/tokenizer.json" --out "$dir/data" --seq-len 256 --val-fraction 0.1 \
        --split-paragraphs "$dir/corpus.txt" > /dev/null
    ./moet train configs/tiny.yaml run.dir="$dir/runs/base" tokenizer="$dir/tokenizer.json" \
        "data.train=[$dir/data/train-*.h5]" "data.val=[$dir/data/val-*.h5]" train.max_steps=20 \
        train.eval_every=0 train.save_every=0 train.log_every=10 optim.warmup_steps=5 --quiet
    base=$dir/runs/base/checkpoints/step_00000020
    tokenizer=$dir/tokenizer.json
    books="gen:Genesis:1:1-gen50:26"
else
    if ! ls -d runs/tiny/checkpoints/step_00000600 > /dev/null 2>&1; then
        echo "== no demo model yet (runs/tiny/checkpoints/step_00000600): running make demo first"
        tools/demo.sh
    fi
    base=runs/tiny/checkpoints/step_00000600
    tokenizer=demo/tokenizer.json
    books="gen:Genesis:1:1-gen50:26 ps:Psalms:1:1-ps150:6 pr:Proverbs:1:1-pr31:31 joh:John:1:1-joh21:25"
fi

echo "== chat set: questions about King James verses (public domain text, Debian bible-kjv)"
: > "$dir/chat.jsonl.tmp"
for b in $books; do
    IFS=: read -r abbr name range <<< "$b"
    bible -f "$abbr$range" | "$PY" -c '
import json, sys
name = sys.argv[1]
asks = ["What does {} say?", "Quote {}.", "Recite {} from the King James Bible."]
for i, line in enumerate(sys.stdin):
    ref, _, verse = line.rstrip("\n").partition(" ")
    if not verse:
        continue
    where = name + " " + ref.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    msgs = [{"role": "user", "content": asks[i % 3].format(where)}, {"role": "assistant", "content": verse}]
    if i % 2:
        msgs.insert(0, {"role": "system", "content": "You quote the King James Bible, word for word."})
    print(json.dumps({"messages": msgs}))
' "$name" >> "$dir/chat.jsonl.tmp"
done
mv "$dir/chat.jsonl.tmp" "$dir/chat.jsonl"
rm -rf "$dir/chat"
./moet prep --tokenizer "$tokenizer" --out "$dir/chat" --seq-len 256 --val-fraction 0.05 --seed 0 "$dir/chat.jsonl"

over=(model.init_from="$base" tokenizer="$tokenizer" "data.train=[$dir/chat/train-*.h5]"
      "data.val=[$dir/chat/val-*.h5]" run.dir="$dir/runs/tiny-lora")
if [ "$quick" = 1 ]; then
    over+=(train.max_steps=8 train.eval_every=4 train.eval_batches=2 train.save_every=0 train.log_every=2
           optim.warmup_steps=2)
fi
echo "== LoRA training of configs/tiny-lora.yaml on $base"
tools/demo_time.sh configs/tiny-lora.yaml "${over[@]}"
./moet train configs/tiny-lora.yaml "${over[@]}" "$@"
last=$(ls -d "$dir"/runs/tiny-lora/checkpoints/step_* | tail -1)
"$PY" tools/report.py "$dir/runs/tiny-lora" | tail -4

echo "== exports of $last: PEFT adapter, merged model, GGUF (each checked with sha256sum -c)"
for f in peft merged gguf; do
    ./moet export "$last" "$dir/lora-$f" --format $f --force
    (cd "$dir/lora-$f" && sha256sum --quiet -c SHA256SUMS)   # a mismatch stops the demo (set -e)
    echo "   $dir/lora-$f: sha256sum -c SHA256SUMS: OK"
done

q="What does Genesis 1:1 say?"
echo "== moet generate --chat \"$q\" (greedy), on the LoRA checkpoint and on the merged export"
for src in checkpoint merged; do
    m=$last; [ $src = merged ] && m=$dir/lora-merged
    ./moet generate "$m" --chat "$q" --max-new-tokens 40 --temperature 0 --ids > "$dir/answers/$src.ids" 2>/dev/null
    ./moet generate "$m" --chat "$q" --max-new-tokens 40 --temperature 0 2>/dev/null | tee "$dir/answers/$src.txt"
done
echo "== llama.cpp on $dir/lora-gguf/model-f32.gguf (node-llama-cpp's libllama), greedy, from moet's prompt ids"
check=$(tools/llama_setup.sh build/llama | tail -1)
./moet generate "$dir/lora-merged" --chat "$q" --prompt-ids 2>/dev/null |
    "$check" "$dir/lora-gguf/model-f32.gguf" generate 40 | tail -1 > "$dir/answers/llama.ids"
./moet tokenize "$tokenizer" --decode --skip-special < "$dir/answers/llama.ids" | tee "$dir/answers/llama.txt"; echo
echo "== llama.cpp formatting the question with the GGUF's own chat template"
printf 'user %d\n%s' "$(printf %s "$q" | wc -c)" "$q" | "$check" "$dir/lora-gguf/model-f32.gguf" chat-generate 40 |
    tail -1 | ./moet tokenize "$tokenizer" --decode --skip-special; echo
echo "demo-lora done: run dir $dir/runs/tiny-lora (metrics.jsonl, report.svg), exports $dir/lora-{peft,merged,gguf}"
echo "(a 15 M model trained from scratch on one book is not a chat model: for real use, start from an open MoE, configs/)"
