#!/bin/bash
# t_prep: `moet prep` end to end -- shard layout read back with h5py, documents equal
# to `moet tokenize` of their text, chat loss masks, the val split, determinism, and
# the error paths (bad jsonl lines, --on-error fatal, empty input, missing file).
# asan: yes
set -euo pipefail
cd "$(dirname "$0")/.."
D=tests/data
TINY=$SHARED/golden/tiny-mixtral/model/tokenizer.json
MISTRAL=$SHARED/data/mistral-tokenizer/tokenizer.json
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
check() { "$PY" tests/prep_check.py "$@"; }
fail() { echo "t_prep: FAIL: $*"; exit 1; }

INPUTS="$D/prep_doc.txt $D/prep_text.jsonl $D/prep_chat.jsonl"

echo "== text + jsonl + chat, tiny tokenizer, rows of 64, 4 rows per shard"
$MOET prep --tokenizer "$TINY" --out "$W/all" --seq-len 64 --rows-per-shard 4 $INPUTS >"$W/all.out"
cat "$W/all.out"
grep -q '^prep: 8 documents (8 train, 0 val)' "$W/all.out" || fail "summary: 8 documents expected"
grep -q '1 empty documents, 1 conversations without an assistant turn skipped; chat template mistral;' "$W/all.out" ||
    fail "summary: the empty text line and the conversation without a reply must be counted"
[ -e "$W/all/train-00001.h5" ] || fail "expected more than one train shard"
[ -z "$(ls -A "$W/all" | grep -v '^train-')" ] || fail "stray files in OUT: $(ls -A "$W/all")"
check layout "$W/all" "$TINY" 64 4
check docs "$W/all" "$TINY" mistral $INPUTS

echo "== chatml template"
$MOET prep --tokenizer "$TINY" --out "$W/chatml" --seq-len 32 --chat-template chatml $D/prep_chat.jsonl >/dev/null
check docs "$W/chatml" "$TINY" chatml $D/prep_chat.jsonl

echo "== empty contents in every role (system, user, assistant), both templates"
for tpl in mistral chatml; do
    $MOET prep --tokenizer "$TINY" --out "$W/empty-$tpl" --seq-len 32 --chat-template $tpl \
        --on-error fatal $D/prep_chat_empty.jsonl >"$W/empty.out"
    grep -q '^prep: 3 documents' "$W/empty.out" || fail "$tpl: 3 conversations with empty turns expected"
    check docs "$W/empty-$tpl" "$TINY" $tpl $D/prep_chat_empty.jsonl
done

echo "== 32000-token Mistral tokenizer, paragraphs"
$MOET prep --tokenizer "$MISTRAL" --out "$W/mistral" --seq-len 48 --split-paragraphs \
    $D/prep_paras.txt $D/prep_text.jsonl $D/prep_chat.jsonl >"$W/mistral.out"
grep -q '^prep: 10 documents' "$W/mistral.out" || fail "3 paragraphs + 5 texts + 2 chats expected"
check layout "$W/mistral" "$MISTRAL" 48 2048
check docs "$W/mistral" "$MISTRAL" mistral --split-paragraphs $D/prep_paras.txt $D/prep_text.jsonl $D/prep_chat.jsonl

echo "== byte-level Qwen3 tokenizer (no BOS; EOS <|endoftext|>), text and chatml with its own <|im_start|>/<|im_end|>"
QWEN=$SHARED/data/qwen3-tokenizer/tokenizer.json
$MOET prep --tokenizer "$QWEN" --out "$W/qwen" --seq-len 48 --chat-template chatml $INPUTS >"$W/qwen.out"
grep -q '^prep: 8 documents' "$W/qwen.out" || fail "qwen: 8 documents expected: $(cat "$W/qwen.out")"
check layout "$W/qwen" "$QWEN" 48 2048 -1 151643
check docs "$W/qwen" "$QWEN" chatml $INPUTS
"$PY" - "$W/qwen" <<'PY' || fail "qwen: chatml documents must use the special <|im_start|> / <|im_end|> ids"
import glob, sys
import h5py, numpy as np
t = np.concatenate([h5py.File(p, "r")["tokens"][()].ravel() for p in sorted(glob.glob(sys.argv[1] + "/train-*.h5"))])
sys.exit(0 if (t == 151644).sum() >= 3 and (t == 151645).sum() == (t == 151644).sum() else 1)
PY

echo "== the tokenizer's own template by default (Qwen: chatml), recorded in every shard as chat_template"
$MOET prep --tokenizer "$QWEN" --out "$W/qwen-default" --seq-len 48 $INPUTS >"$W/qwen-default.out"
grep -q 'chat template chatml;' "$W/qwen-default.out" || fail "qwen: default template: $(cat "$W/qwen-default.out")"
for f in "$W"/qwen/train-*.h5; do
    cmp -s "$f" "$W/qwen-default/$(basename "$f")" || fail "qwen: default template gives other shards than chatml"
done
"$PY" - "$W" <<'PY' || fail "chat_template attribute"
import glob, sys
import h5py
for d, want in (("qwen", b"chatml"), ("all", b"mistral"), ("chatml", b"chatml")):
    for p in glob.glob(f"{sys.argv[1]}/{d}/*.h5"):
        got = h5py.File(p, "r").attrs["chat_template"]
        assert got == want, (p, got, want)
PY

echo "== --val-fraction holds out whole documents"
$MOET prep --tokenizer "$TINY" --out "$W/split" --seq-len 64 --rows-per-shard 4 --val-fraction 0.4 --seed 3 \
    $INPUTS >"$W/split.out"
[ -e "$W/split/val-00000.h5" ] || fail "no val-00000.h5"
check layout "$W/split" "$TINY" 64 4
check split "$W/all" "$W/split"

echo "== determinism: same inputs and seed, any thread count -> identical shards"
$MOET prep --tokenizer "$TINY" --out "$W/again" --seq-len 64 --rows-per-shard 4 --val-fraction 0.4 --seed 3 \
    --threads 1 $INPUTS >/dev/null
check same "$W/split" "$W/again"
for f in "$W"/split/*.h5; do cmp "$f" "$W/again/$(basename "$f")" || fail "$(basename "$f") not byte-identical"; done
$MOET prep --tokenizer "$TINY" --out "$W/seed4" --seq-len 64 --rows-per-shard 4 --val-fraction 0.4 --seed 4 \
    $INPUTS >/dev/null
if check same "$W/split" "$W/seed4" >/dev/null; then fail "--seed 4 gave the same split as --seed 3"; fi

echo "== rerun into the same OUT with fewer rows removes the stale shards"
$MOET prep --tokenizer "$TINY" --out "$W/all" --seq-len 64 --rows-per-shard 100 $INPUTS >/dev/null
[ "$(ls "$W/all")" = "train-00000.h5" ] || fail "stale shards left: $(ls "$W/all")"

echo "== prep output trains: moet train reads the shards, checks the tokenizer, takes 3 steps"
cat > "$W/cfg.yaml" <<YAML
run: {name: p, dir: $W/run}
model:
  arch: {vocab_size: 512, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 1,
         num_attention_heads: 2, num_key_value_heads: 1, num_local_experts: 2, num_experts_per_tok: 1}
tokenizer: $TINY
data: {train: ["$W/split/train-*.h5"], val: ["$W/split/val-*.h5"], seq_len: 64}
train: {batch_size: 2, max_steps: 3, eval_every: 3, eval_batches: 1}
optim: {lr: 1e-3}
YAML
$MOET train "$W/cfg.yaml" >"$W/train.log" 2>&1 || { cat "$W/train.log"; fail "moet train on prep output"; }
[ "$(grep -c '"loss"' "$W/run/metrics.jsonl")" = 3 ] || fail "expected 3 logged steps"
grep -q '"val_loss"' "$W/run/metrics.jsonl" || fail "no eval on the val shards"
echo "== val shards of another tokenizer are refused like train shards"
"$PY" - "$W/othertok.h5" "$(dirname "$0")" <<'PY'
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from make_shard import write_shard
write_shard(sys.argv[1], np.ones((4, 64), np.int64), 512, tokenizer_sha256="ab" * 32)
PY
set +e
$MOET train "$W/cfg.yaml" run.dir="$W/run2" "data.val=[$W/othertok.h5]" >/dev/null 2>"$W/err"
rc=$?
set -e
cat "$W/err"
[ $rc = 1 ] && [ "$(wc -l < "$W/err")" = 1 ] || fail "val shard of another tokenizer: rc $rc"
grep -q "data.val: .*othertok.h5 was made with a different tokenizer" "$W/err" || fail "message"

echo "== bad jsonl lines: reported as file:line, skipped"
$MOET prep --tokenizer "$TINY" --out "$W/bad" --seq-len 16 $D/prep_bad.jsonl >"$W/bad.out" 2>"$W/bad.err"
cat "$W/bad.err"
for want in "prep_bad.jsonl:2: invalid JSON" "prep_bad.jsonl:3: no \"text\" or \"messages\" field" \
            "prep_bad.jsonl:4: \"text\" is not a string" "prep_bad.jsonl:5: messages\[0\]: role 'assistant'" \
            "prep_bad.jsonl:6: not a JSON object" "prep_bad.jsonl:7: messages\[0\] has no string \"content\""; do
    grep -q "$want" "$W/bad.err" || fail "missing warning: $want"
done
grep -q '^prep: 2 documents' "$W/bad.out" || fail "the 2 good lines must be kept"
grep -q '6 bad lines skipped' "$W/bad.out" || fail "summary must count 6 bad lines"
check docs "$W/bad" "$TINY" mistral $D/prep_bad.jsonl

echo "== --on-error fatal: exit 1 at the first bad line, OUT untouched"
mkdir "$W/fatal"
set +e
$MOET prep --tokenizer "$TINY" --out "$W/fatal" --seq-len 16 --on-error fatal $D/prep_bad.jsonl >/dev/null 2>"$W/fatal.err"
rc=$?
set -e
cat "$W/fatal.err"
[ $rc = 1 ] || fail "--on-error fatal exited $rc, expected 1"
grep -q "^moet prep: .*prep_bad.jsonl:2: invalid JSON" "$W/fatal.err" || fail "fatal error must name file:line"
[ -z "$(ls -A "$W/fatal")" ] || fail "a failed run left files: $(ls -A "$W/fatal")"

echo "== what a line says is quoted in its warning (ESC, invalid UTF-8: never raw)"
printf '{"messages": [{"role": "as\\u001b[31msistant\xff", "content": "x"}]}\n{"text": "ok"}\n' > "$W/esc.jsonl"
$MOET prep --tokenizer "$TINY" --out "$W/esc" --seq-len 16 "$W/esc.jsonl" >/dev/null 2>"$W/esc.err"
cat "$W/esc.err"
grep -qF "messages[0]: unknown role 'as\x1B[31msistant\xFF' for the mistral template" "$W/esc.err" ||
    fail "role not quoted: $(cat -v "$W/esc.err")"
! grep -q $'\x1b' "$W/esc.err" || fail "raw ESC in a warning"

echo "== 1-row shards are small and quick (chunks no bigger than a shard; one syncfs, not 2 fsyncs each)"
$MOET prep --tokenizer "$TINY" --out "$W/rows1" --seq-len 32 --rows-per-shard 1 $D/prep_text.jsonl $D/prep_chat.jsonl >/dev/null
n=$(ls "$W/rows1" | wc -l)
big=$(find "$W/rows1" -name '*.h5' -size +32k | wc -l)
[ "$n" -ge 2 ] && [ "$big" = 0 ] || fail "$n 1-row shards, $big over 32 KB: $(ls -l "$W/rows1" | head -3)"
check layout "$W/rows1" "$TINY" 32 1

echo "== a failed run into a new OUT leaves no directory behind"
set +e
$MOET prep --tokenizer "$TINY" --out "$W/new/a/b" --seq-len 16 --on-error fatal $D/prep_bad.jsonl >/dev/null 2>&1
rc=$?
set -e
[ $rc = 1 ] || fail "--on-error fatal into a new OUT exited $rc"
[ ! -e "$W/new" ] || fail "a failed run left $(find "$W/new")"

echo "== stages of killed runs (.prep-PID of a dead PID) are removed, a live one's stays"
sh -c 'exit 0' & dead=$!; wait $dead
mkdir -p "$W/stale/.prep-$dead" "$W/stale/.prep-$$"
echo junk > "$W/stale/.prep-$dead/train-00000.h5"
$MOET prep --tokenizer "$TINY" --out "$W/stale" --seq-len 16 $D/prep_doc.txt >/dev/null
[ ! -e "$W/stale/.prep-$dead" ] || fail "the stage of dead pid $dead was left"
[ -d "$W/stale/.prep-$$" ] || fail "the stage of a live pid was removed"
[ -e "$W/stale/train-00000.h5" ] || fail "no shard written"

expect_fail() {  # expect_fail CODE PATTERN ARGS...: exit CODE, one stderr line matching PATTERN
    local code=$1 pat=$2; shift 2
    set +e
    $MOET prep "$@" >/dev/null 2>"$W/err"
    local rc=$?
    set -e
    [ $rc = "$code" ] || fail "moet prep $*: exit $rc, expected $code ($(cat "$W/err"))"
    [ "$(grep -c . "$W/err")" = 1 ] || fail "moet prep $*: expected one error line, got: $(cat "$W/err")"
    grep -q -e "$pat" "$W/err" || fail "moet prep $*: '$(cat "$W/err")' lacks '$pat'"
}
echo "== empty input, missing file, usage"
expect_fail 1 "no documents in the input" --tokenizer "$TINY" --out "$W/e" $D/prep_empty.txt
[ ! -e "$W/e" ] || fail "a failed run left an empty OUT"
expect_fail 1 "nope.txt: No such file or directory" --tokenizer "$TINY" --out "$W/e" $D/prep_doc.txt "$W/nope.txt"
expect_fail 1 "unsupported input" --tokenizer "$TINY" --out "$W/e" tests/prep_check.py
expect_fail 1 "nope.json" --tokenizer "$W/nope.json" --out "$W/e" $D/prep_doc.txt
expect_fail 2 "unknown option --frobnicate" --tokenizer "$TINY" --out "$W/e" --frobnicate 1 $D/prep_doc.txt
expect_fail 2 "--out is required" --tokenizer "$TINY" $D/prep_doc.txt
expect_fail 2 "unknown chat template 'alpaca'" --tokenizer "$TINY" --out "$W/e" --chat-template alpaca $D/prep_doc.txt
expect_fail 2 "--val-fraction wants a number" --tokenizer "$TINY" --out "$W/e" --val-fraction 1.5 $D/prep_doc.txt
$MOET prep --help | grep -q '^usage: moet prep' || fail "--help"
echo "t_prep: all checks passed"
