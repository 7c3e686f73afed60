#!/bin/bash
# moet tokenize: the CLI prints HF's ids (reference set), honours --no-bos,
# decodes with --decode, and fails with one line and the right exit code.
# asan: yes
set -u
T=$SHARED/data/mistral-tokenizer/tokenizer.json
REF=$SHARED/data/mistral-tokenizer/reference_ids.json
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# A sample of the reference texts (the first 20 and every 15th) with their ids.
"$PY" - "$REF" "$tmp" <<'PYEOF'
import json, sys
ref = json.load(open(sys.argv[1]))
pick = sorted(set(range(20)) | set(range(0, len(ref), 15)))
for k, i in enumerate(pick):
    open(f'{sys.argv[2]}/t{k}.txt', 'wb').write(ref[i]['text'].encode())
    open(f'{sys.argv[2]}/t{k}.ids', 'w').write(' '.join(map(str, ref[i]['ids'])) + '\n')
    special = any(s in ref[i]['text'] for s in ('\u2581', '<s>', '</s>', '<unk>'))
    open(f'{sys.argv[2]}/t{k}.plain', 'w').write('0' if special else '1')
PYEOF
n=0
for f in "$tmp"/t*.txt; do
    b=${f%.txt}
    "$MOET" tokenize "$T" < "$f" > "$b.out" || fail "exit $? on $(basename "$f")"
    cmp -s "$b.out" "$b.ids" || fail "ids differ for $(head -c 80 "$f"): got $(head -c 200 "$b.out") want $(head -c 200 "$b.ids")"
    # --no-bos drops exactly the leading BOS.
    "$MOET" tokenize "$T" --no-bos < "$f" > "$b.nobos" || fail "--no-bos exit $?"
    [ "1 $(cat "$b.nobos")" = "$(cat "$b.out")" ] || [ "$(cat "$b.out")" = "1" -a -z "$(tr -d '\n' < "$b.nobos")" ] ||
        fail "--no-bos is not the ids without BOS for $(basename "$f")"
    # --decode --skip-special gives the text back (when it has no special text).
    if [ "$(cat "$b.plain")" = 1 ]; then
        "$MOET" tokenize "$T" --decode --skip-special < "$b.out" > "$b.back" || fail "--decode exit $?"
        cmp -s "$b.back" "$f" || fail "decode(encode(x)) != x for $(basename "$f")"
    fi
    n=$((n + 1))
done
[ $n -gt 40 ] || fail "only $n reference texts checked"

# --decode keeps special tokens' text, as HF decode(skip_special_tokens=False).
printf 'Hello world' > "$tmp/hw.txt"
"$MOET" tokenize "$T" < "$tmp/hw.txt" | "$MOET" tokenize "$T" --decode > "$tmp/hw.back" || fail "decode exit"
[ "$(cat "$tmp/hw.back")" = "<s> Hello world" ] || fail "decode gave '$(cat "$tmp/hw.back")'"

# --help: usage on stdout, exit 0.
"$MOET" tokenize --help > "$tmp/help" || fail "--help exit $?"
grep -q "usage: moet tokenize" "$tmp/help" || fail "--help prints no usage"

# Errors: one line on stderr, exit 1 for bad input, 2 for bad usage; nothing on stdout.
expect() {   # expect CODE STDIN-FILE ARGS...
    local code=$1 in=$2; shift 2
    "$MOET" tokenize "$@" < "$in" > "$tmp/o" 2> "$tmp/e"
    local rc=$?
    [ $rc = "$code" ] || fail "tokenize $*: exit $rc, wanted $code ($(cat "$tmp/e"))"
    [ "$(wc -l < "$tmp/e")" = 1 ] || [ "$code" = 2 -a -s "$tmp/e" ] || fail "tokenize $*: stderr is not one line: $(cat "$tmp/e")"
    [ ! -s "$tmp/o" ] || fail "tokenize $*: wrote to stdout on error"
}
expect 1 "$tmp/hw.txt" "$tmp/missing.json"
grep -q "missing.json" "$tmp/e" || fail "the error does not name the missing file"
head -c 3000 "$T" > "$tmp/cut.json"
expect 1 "$tmp/hw.txt" "$tmp/cut.json"
echo '{"model": {"type": "WordPiece", "vocab": {"a": 0}}}' > "$tmp/wp.json"
expect 1 "$tmp/hw.txt" "$tmp/wp.json"
grep -q WordPiece "$tmp/e" || fail "the error does not name the model type"
echo '1 abc 2' > "$tmp/badids"
expect 1 "$tmp/badids" "$T" --decode
echo '1 32000' > "$tmp/bigid"
expect 1 "$tmp/bigid" "$T" --decode
expect 2 "$tmp/hw.txt"
expect 2 "$tmp/hw.txt" "$T" --bogus
expect 2 "$tmp/hw.txt" "$T" "$T"
echo "ok: $n reference texts, flags and errors"
