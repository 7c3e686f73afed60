#!/bin/bash
# moet generate: greedy on the golden model is the argmax continuation that repeated
# `moet forward` calls give; the streamed text is the decoded continuation, byte for byte;
# seeded sampling repeats; checkpoints find their tokenizer; a byte-level tokenizer (Qwen3)
# streams whole characters; bad input is one line, exit 1.
# asan: yes
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
G=$SHARED/golden/tiny-mixtral/model
PROMPT="The quick brown fox jumps over"
N=10

# --- greedy == argmax of moet forward's logits, one token at a time (stops at EOS like generate)
"$MOET" generate "$G" --prompt "$PROMPT" --max-new-tokens $N --temperature 0 --ids > ids1 2> stats1
"$MOET" generate "$G" --prompt "$PROMPT" --max-new-tokens $N --temperature 0 --ids > ids2 2> stats2
cmp ids1 ids2 || { echo "greedy generation is not deterministic"; exit 1; }
grep -E "^\[prompt [0-9]+ tokens, [0-9.]+ tok/s \| generated [0-9]+ tokens, [0-9.]+ tok/s \| stopped at .* \| greedy\]$" stats1
printf '%s' "$PROMPT" | "$MOET" tokenize "$G/tokenizer.json" > prompt_ids
"$PY" - "$MOET" "$G" "$here" $N <<'PY'
import subprocess, sys
import numpy as np
moet, model, here, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, here)
import sttools
ids = [int(x) for x in open("prompt_ids").read().split()]
assert ids[0] == 1, ids  # BOS
got = [int(x) for x in open("ids1").read().split()]
ref = []
for step in range(n):
    sttools.write("batch.safetensors", {"input_ids": np.array([ids + ref], dtype=np.int64)})
    subprocess.run([moet, "forward", model, "--batch", "batch.safetensors", "--out", "out.safetensors"],
                   check=True, stdout=subprocess.DEVNULL)
    nxt = int(np.argmax(sttools.read("out.safetensors")["logits"][0, -1]))
    if nxt == 2:  # EOS ends generation without being printed
        break
    ref.append(nxt)
print("prompt", ids, "\ngenerate", got, "\nforward argmax", ref)
assert got == ref, (got, ref)
assert len(ref) == n, "the reference hit EOS early: the test would check fewer tokens"
PY

# --- text: streamed == --no-stream == the decoded continuation (after the last prompt token).
# "Hello" continues with "▁me" (its space must survive); the third prompt ends in a byte token.
for P in "$PROMPT" "Hello" "Grüße aus 日本"; do
    "$MOET" generate "$G" --prompt "$P" --max-new-tokens 40 > text_stream 2>/dev/null
    "$MOET" generate "$G" --prompt "$P" --max-new-tokens 40 --no-stream > text_once 2>/dev/null
    "$MOET" generate "$G" --prompt "$P" --max-new-tokens 40 --ids > ids40 2>/dev/null
    cmp text_stream text_once
    last=$(printf '%s' "$P" | "$MOET" tokenize "$G/tokenizer.json" | awk '{print $NF}')
    echo "$last" | "$MOET" tokenize "$G/tokenizer.json" --decode --skip-special > head.txt
    echo "$last $(cat ids40)" | "$MOET" tokenize "$G/tokenizer.json" --decode --skip-special > full.txt
    "$PY" - "$P" <<'PY'
import sys
head, full, out = (open(f, "rb").read() for f in ("head.txt", "full.txt", "text_stream"))
assert full.startswith(head), (head, full)
assert out == full[len(head):] + b"\n", (out, full[len(head):])
print(f"{sys.argv[1]!r}: streamed text = decoded continuation ({len(out) - 1} bytes: {out[:12]!r}...)")
PY
done
"$MOET" generate "$G" --prompt Hello --max-new-tokens 3 > hello 2>/dev/null
grep -q "^ me" hello || { echo "the first token's space was lost: $(cat hello)"; exit 1; }

# --- a byte-level tokenizer (Qwen3's: no BOS, tokens that are parts of a UTF-8 character):
# a tiny random model of its vocab samples 40 tokens; the streamed text is again the decoded
# continuation, byte for byte, and generation stops at its <|endoftext|>.
"$PY" "$here/llama/make_model.py" qwen "$SHARED/data/qwen3-tokenizer/tokenizer.json" hidden_size=16 \
    intermediate_size=16 num_hidden_layers=1 num_attention_heads=2 num_key_value_heads=1 num_local_experts=2 \
    num_experts_per_tok=1 vocab_size=151669 seed=4
Q=qwen/tokenizer.json
for P in "Grüße aus 日本" "<|im_start|>user"; do
    S="--max-new-tokens 40 --temperature 1 --seed 9"
    "$MOET" generate qwen --prompt "$P" $S > text_stream 2>/dev/null
    "$MOET" generate qwen --prompt "$P" $S --ids > ids40 2>/dev/null
    last=$(printf '%s' "$P" | "$MOET" tokenize $Q | awk '{print $NF}')
    [ -n "$last" ] || { echo "the prompt gave no ids"; exit 1; }
    echo "$last" | "$MOET" tokenize $Q --decode --skip-special > head.txt
    echo "$last $(cat ids40)" | "$MOET" tokenize $Q --decode --skip-special > full.txt
    "$PY" - "$P" <<'PY'
import sys
head, full, out = (open(f, "rb").read() for f in ("head.txt", "full.txt", "text_stream"))
ids = open("ids40").read().split()
assert full.startswith(head), (head, full)
assert out == full[len(head):] + b"\n", (out, full[len(head):])
assert "151643" not in ids, "generation went on past <|endoftext|>"
print(f"qwen3 {sys.argv[1]!r}: {len(ids)} tokens, streamed text = decoded continuation ({len(out) - 1} bytes)")
PY
done

# --- sampling: a seed repeats its draws, another seed gives others; top-k 1 is greedy
S="--max-new-tokens 30 --temperature 1.0 --top-p 0.95 --ids"
"$MOET" generate "$G" --prompt "$PROMPT" $S --seed 7 > s7a 2>/dev/null
"$MOET" generate "$G" --prompt "$PROMPT" $S --seed 7 > s7b 2>/dev/null
"$MOET" generate "$G" --prompt "$PROMPT" $S --seed 8 > s8 2>/dev/null
cmp s7a s7b || { echo "same seed, different samples"; exit 1; }
if cmp -s s7a s8; then echo "seeds 7 and 8 drew the same 30 tokens"; exit 1; fi
"$MOET" generate "$G" --prompt "$PROMPT" --max-new-tokens $N --temperature 1.5 --top-k 1 --ids > k1 2>/dev/null
cmp k1 ids1 || { echo "top-k 1 is not greedy"; exit 1; }
"$MOET" generate "$G" --prompt "$PROMPT" $S --seed 7 2> stats_s > /dev/null
grep -q "temperature 1, top-k 0, top-p 0.95, seed 7" stats_s

# --- the context limit (max_position_embeddings 256) ends generation
"$MOET" generate "$G" --prompt "$PROMPT" --max-new-tokens 1000 --ids > long 2> stats_long
np=$(wc -w < prompt_ids); ng=$(wc -w < long)
grep -q "stopped at EOS" stats_long || [ $((np + ng)) = 256 ] || { echo "context: $np + $ng != 256"; exit 1; }

# --- a training checkpoint: its config's tokenizer, else model.init_from/tokenizer.json
"$PY" "$here/make_shard.py" train.h5 8 32 512 1
cp "$G/tokenizer.json" tok.json
cat > cfg.yaml <<YAML
run: {name: g, dir: $work/run}
model: {init_from: $G}
tokenizer: $work/tok.json
data: {train: [train.h5], seq_len: 32}
train: {batch_size: 2, max_steps: 1, save_every: 1}
optim: {lr: 1e-3}
YAML
"$MOET" train cfg.yaml --quiet > /dev/null
CK=run/checkpoints/step_00000001
"$MOET" generate $CK --prompt "$PROMPT" --max-new-tokens 5 --ids > ck1 2>/dev/null
echo '{}' > tok.json   # the config's tokenizer comes first: a broken one is an error
if "$MOET" generate $CK --prompt "$PROMPT" 2> err_tok > /dev/null; then echo "config tokenizer not used"; exit 1; fi
grep -q "tok.json" err_tok
rm tok.json           # gone: model.init_from/tokenizer.json
"$MOET" generate $CK --prompt "$PROMPT" --max-new-tokens 5 --ids > ck2 2>/dev/null
cmp ck1 ck2

# --- bad input: one line on stderr, exit 1 (usage errors exit 2, --help exits 0)
fail=0
expect() {
    local code=$1 what=$2 pat=$3; shift 3
    "$MOET" generate "$@" > out.log 2> err.log; local rc=$?
    local lines; lines=$(wc -l < err.log)
    if [ $rc = "$code" ] && { [ "$code" != 1 ] || [ "$lines" = 1 ]; } && grep -qE -- "$pat" err.log; then
        echo "ok   $what: $(head -1 err.log)"
    else
        echo "FAIL $what: rc=$rc lines=$lines: $(cat err.log)"; fail=1
    fi
}
mkdir notok && cp "$G/config.json" "$G/model.safetensors" notok/
mkdir -p lora && printf '{"step": 1, "kind": "lora", "files": {}, "config": {}}' > lora/trainer_state.json
set +e
expect 1 "missing model" "nope: no such file or directory" nope --prompt hi
expect 1 "missing tokenizer" "no tokenizer found .*--tokenizer" notok --prompt hi
expect 1 "--tokenizer that does not exist" "tokenizer nope.json .* does not exist" "$G" --prompt hi --tokenizer nope.json
expect 1 "tokenizer bigger than the model" "more than the model's vocab_size" "$G" --prompt hi \
    --tokenizer "$SHARED/data/mistral-tokenizer/tokenizer.json"
expect 1 "empty prompt" "prompt is empty" "$G" --prompt ""
expect 2 "negative temperature" "temperature must be >= 0" "$G" --prompt hi --temperature -1
expect 2 "top-p above 1" "top-p must be in" "$G" --prompt hi --top-p 1.5
expect 1 "LoRA checkpoint with a broken config" "config" lora --prompt hi
expect 2 "no prompt" "--prompt TEXT is required" "$G"
expect 2 "not a number" "--max-new-tokens needs a number" "$G" --prompt hi --max-new-tokens ten
expect 2 "unknown option" "unknown option" "$G" --prompt hi --bogus
"$MOET" generate --help | grep -q "usage: moet generate" || { echo "FAIL --help"; fail=1; }
"$MOET" generate "$G" --prompt hi --max-new-tokens 3 --temperature 0.7 --repetition-penalty 1.3 --seed 1 > /dev/null 2> rep.log
grep -q "repetition penalty 1.3\]" rep.log || { echo "FAIL the stats line names the penalty without its value: $(cat rep.log)"; fail=1; }
exit $fail
