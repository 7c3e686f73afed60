#!/bin/bash
# moet tokenize: the CLI prints HF's ids (reference sets: Mistral, Qwen3, gpt-oss), honours
# --no-bos, decodes with --decode, runs many texts with --jsonl, and fails with one line
# and the right exit code.
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
# Byte-level tokenizers (Qwen3, gpt-oss): all 601 reference texts of each through --jsonl in
# one process (as JSON strings and as {"text": ...} objects) give HF's ids; --decode --jsonl
# gives HF's decoded text; a sample through the plain CLI and --decode too.
for name in qwen3 gptoss; do
    BT=$SHARED/data/$name-tokenizer/tokenizer.json
    "$PY" - "$SHARED/data/$name-tokenizer/reference_ids.json" "$tmp/$name" <<'PYEOF'
import json, sys
ref, out = json.load(open(sys.argv[1])), sys.argv[2]
with open(out + ".texts", "w") as f: f.write("".join(json.dumps(r["text"]) + "\n" for r in ref))
with open(out + ".objs", "w") as f: f.write("".join(json.dumps({"id": i, "text": r["text"]}) + "\n" for i, r in enumerate(ref)))
with open(out + ".want", "w") as f: f.write("".join(" ".join(map(str, r["ids"])) + "\n" for r in ref))
with open(out + ".idsj", "w") as f: f.write("".join(json.dumps(r["ids"]) + "\n" for r in ref))
json.dump([r["decoded"] for r in ref], open(out + ".dec", "w"))
for k in range(0, len(ref), 120):
    open(f"{out}.s{k}.txt", "wb").write(ref[k]["text"].encode())
    open(f"{out}.s{k}.ids", "w").write(" ".join(map(str, ref[k]["ids"])) + "\n")
    open(f"{out}.s{k}.dec", "wb").write(ref[k]["decoded"].encode())
PYEOF
    "$MOET" tokenize "$BT" --jsonl < "$tmp/$name.texts" > "$tmp/$name.got" || fail "$name --jsonl exit $?"
    cmp -s "$tmp/$name.got" "$tmp/$name.want" || fail "$name: --jsonl ids differ from HF's"
    "$MOET" tokenize "$BT" --jsonl --no-bos < "$tmp/$name.objs" > "$tmp/$name.got2" || fail "$name --jsonl objects exit $?"
    cmp -s "$tmp/$name.got2" "$tmp/$name.want" || fail "$name: --jsonl {\"text\"} ids differ from HF's"
    "$MOET" tokenize "$BT" --decode --jsonl < "$tmp/$name.idsj" > "$tmp/$name.back" || fail "$name --decode --jsonl exit $?"
    "$PY" -c "import json,sys; a=[json.loads(l) for l in open(sys.argv[1])]; b=json.load(open(sys.argv[2])); sys.exit(a != b)" \
        "$tmp/$name.back" "$tmp/$name.dec" || fail "$name: --decode --jsonl differs from HF's decode"
    for f in "$tmp/$name".s*.txt; do
        b=${f%.txt}
        "$MOET" tokenize "$BT" < "$f" > "$b.out" || fail "$name exit $? on $(basename "$f")"
        cmp -s "$b.out" "$b.ids" || fail "$name ids differ for $(head -c 80 "$f")"
        "$MOET" tokenize "$BT" --decode < "$b.out" > "$b.back" || fail "$name --decode exit $?"
        cmp -s "$b.back" "$b.dec" || fail "$name: --decode differs from HF's decoded text for $(basename "$f")"
    done
    n=$((n + 601))
done

# --jsonl: an empty text gives an empty line; lines come out in order, each as the plain
# CLI gives it; a bad line stops with its number (what came before is out); errors quote
# input bytes instead of echoing them.
Q=$SHARED/data/qwen3-tokenizer/tokenizer.json
printf '"a"\n""\n{"text": "b", "meta": [1, {"x": null}]}\n"<|im_start|>\\u0000"\n' > "$tmp/j1"
"$MOET" tokenize "$Q" --jsonl < "$tmp/j1" > "$tmp/j1.out" || fail "--jsonl exit $?"
for t in a "" b; do printf '%s' "$t" | "$MOET" tokenize "$Q"; done > "$tmp/j1.want"
printf '<|im_start|>\0' | "$MOET" tokenize "$Q" >> "$tmp/j1.want"
cmp -s "$tmp/j1.out" "$tmp/j1.want" || fail "--jsonl gave $(cat "$tmp/j1.out"), the CLI $(cat "$tmp/j1.want")"
"$PY" -c "import json,sys; print('\n'.join(json.dumps([int(x) for x in l.split()]) for l in open(sys.argv[1]).read().split('\n')[:4]))" \
    "$tmp/j1.want" > "$tmp/j2.in"
"$MOET" tokenize "$Q" --decode --jsonl < "$tmp/j2.in" > "$tmp/j2.out" || fail "--decode --jsonl exit $?"
[ "$(cat "$tmp/j2.out")" = "$(printf '"a"\n""\n"b"\n"<|im_start|>\\u0000"')" ] || fail "--decode --jsonl gave $(cat "$tmp/j2.out")"
printf '"ok"\n{"txt": "x"}\n"never"\n' > "$tmp/j3"
"$MOET" tokenize "$Q" --jsonl < "$tmp/j3" > "$tmp/j3.out" 2> "$tmp/j3.err"
rc=$?
[ $rc = 1 ] && [ "$(wc -l < "$tmp/j3.err")" = 1 ] && grep -q "stdin line 2: " "$tmp/j3.err" ||
    fail "--jsonl on a line without text: exit $rc, $(cat "$tmp/j3.err")"
[ "$(cat "$tmp/j3.out")" = "$(printf ok | "$MOET" tokenize "$Q")" ] || fail "--jsonl did not print the lines before the bad one"
for bad in '' '[1, "x"]' '"a" "b"' '"unterminated' '{"text": 5}'; do
    printf '%s\n' "$bad" > "$tmp/j4"
    "$MOET" tokenize "$Q" --jsonl < "$tmp/j4" > /dev/null 2> "$tmp/j4.err" && fail "--jsonl took '$bad'"
    grep -q "stdin line 1: " "$tmp/j4.err" || fail "--jsonl on '$bad': $(cat "$tmp/j4.err")"
done
printf '[1, 999999999]\n' > "$tmp/j5"
"$MOET" tokenize "$Q" --decode --jsonl < "$tmp/j5" > /dev/null 2> "$tmp/j5.err" && fail "--decode --jsonl took an id past the vocab"
grep -q "999999999" "$tmp/j5.err" || fail "--decode --jsonl: $(cat "$tmp/j5.err")"
printf '1 WZ\x13;\x1b[31m 2' > "$tmp/ctl"
expect 1 "$tmp/ctl" "$Q" --decode
grep -q 'WZ\\x13;\\x1B\[31m' "$tmp/e" || fail "the bad id is not quoted: $(cat -v "$tmp/e")"
! grep -q "$(printf '\x13')" "$tmp/e" || fail "a raw control byte in the error line"
echo '{"model": {"type": null, "vocab": {"a": 0}}}' > "$tmp/null.json"
expect 1 "$tmp/hw.txt" "$tmp/null.json"
grep -q "model.type must be a string" "$tmp/e" || fail "model.type null: $(cat "$tmp/e")"
echo '{"model": {"type": 5, "vocab": {"a": 0}}}' > "$tmp/five.json"
expect 1 "$tmp/hw.txt" "$tmp/five.json"
grep -q "model.type must be a string" "$tmp/e" || fail "model.type 5: $(cat "$tmp/e")"

echo "ok: $n reference texts (Mistral sample; every Qwen3 and gpt-oss one), --jsonl, flags and errors"
