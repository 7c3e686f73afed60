#!/bin/bash
# moet tokenizer train: a small vocab trained on text is a Mistral-shaped
# tokenizer.json (checked with python json), loads in moet, round-trips the
# training text, is deterministic, and is written atomically.
# asan: yes
set -u
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
MISTRAL=$SHARED/data/mistral-tokenizer/tokenizer.json

# Training text: license texts when the system has them, plus the reference texts
# without "▁" or special-token text (those do not round-trip by design).
"$PY" - "$SHARED/data/mistral-tokenizer/reference_ids.json" "$tmp/ref.txt" <<'PYEOF'
import json, sys
ref = json.load(open(sys.argv[1]))
keep = [r['text'] for r in ref if not any(s in r['text'] for s in ('\u2581', '<s>', '</s>', '<unk>'))]
open(sys.argv[2], 'w').write('\n'.join(keep) + '\n')
PYEOF
inputs=("$tmp/ref.txt")
for f in /usr/share/common-licenses/Apache-2.0 /usr/share/common-licenses/GPL-3; do
    [ -r "$f" ] && inputs+=("$f")
done

"$MOET" tokenizer train --vocab-size 600 --out "$tmp/tok.json" "${inputs[@]}" 2> "$tmp/progress" ||
    fail "train exit $?: $(cat "$tmp/progress")"
grep -q "^moet tokenizer: " "$tmp/progress" || fail "no progress on stderr"

# Structure, with python's json (HF tokenizers is not installed here).
"$PY" - "$tmp/tok.json" "$MISTRAL" <<'PYEOF' || fail "structure check"
import json, sys
t = json.load(open(sys.argv[1])); m = json.load(open(sys.argv[2]))
for k in ('version', 'truncation', 'padding', 'added_tokens', 'normalizer', 'pre_tokenizer',
          'post_processor', 'decoder', 'model'):
    assert k in t, k
for k in ('normalizer', 'pre_tokenizer', 'post_processor', 'decoder'):
    assert t[k] == m[k], (k, t[k], m[k])           # the Mistral structure, exactly
mo = t['model']
assert mo['type'] == 'BPE' and mo['byte_fallback'] is True and mo['unk_token'] == '<unk>', mo['type']
v = mo['vocab']
assert len(v) == 600 and sorted(v.values()) == list(range(600)), len(v)
inv = {i: s for s, i in v.items()}
assert [inv[0], inv[1], inv[2]] == ['<unk>', '<s>', '</s>']
assert all(inv[3 + b] == '<0x%02X>' % b for b in range(256))
assert [(a['id'], a['content'], a['special'], a['normalized']) for a in t['added_tokens']] == \
       [(0, '<unk>', True, False), (1, '<s>', True, False), (2, '</s>', True, False)]
for i in range(259, 600):
    assert '\u2581' not in inv[i][1:], inv[i]      # a word start only at the front
    assert '\n' not in inv[i] and '\t' not in inv[i], inv[i]
merged = set()
for mg in mo['merges']:
    a, b = mg.split(' ')
    assert a in v and b in v and a + b in v, mg
    assert v[a] >= 259 and v[b] >= 259, mg
    merged.add(a + b)
multi = [inv[i] for i in range(259, 600) if len(inv[i]) > 1]
assert merged == set(multi), 'every multi-char piece has a merge'
assert len(multi) > 150, len(multi)
# merges come grouped by the id of what they make (SentencePiece score order)
ids = [v[''.join(mg.split(' '))] for mg in mo['merges']]
assert ids == sorted(ids)
PYEOF

# Loads in moet; the training text round-trips and is compressed.
cat "${inputs[@]}" > "$tmp/all.txt"
"$MOET" tokenize "$tmp/tok.json" --no-bos < "$tmp/all.txt" > "$tmp/ids" || fail "tokenize exit $?"
"$MOET" tokenize "$tmp/tok.json" --decode < "$tmp/ids" > "$tmp/back" || fail "decode exit $?"
cmp -s "$tmp/back" "$tmp/all.txt" || fail "decode(encode(training text)) differs"
bytes=$(wc -c < "$tmp/all.txt"); toks=$(wc -w < "$tmp/ids")
[ $((toks * 2)) -lt "$bytes" ] || fail "$toks tokens for $bytes bytes: no compression"

# Deterministic.
"$MOET" tokenizer train --vocab-size 600 --out "$tmp/tok2.json" "${inputs[@]}" 2> /dev/null || fail "second train"
cmp -s "$tmp/tok.json" "$tmp/tok2.json" || fail "two runs differ"

# A failed run leaves the old file alone and no temp file behind.
echo old > "$tmp/keep.json"
"$MOET" tokenizer train --vocab-size 600 --out "$tmp/keep.json" "$tmp/nonexistent.txt" 2> "$tmp/e"
[ $? = 1 ] || fail "missing input: wrong exit"
[ "$(wc -l < "$tmp/e")" = 1 ] && grep -q nonexistent.txt "$tmp/e" || fail "missing input: $(cat "$tmp/e")"
[ "$(cat "$tmp/keep.json")" = old ] || fail "a failed run touched the output"
ls "$tmp" | grep -q '\.tmp\.' && fail "temp file left behind"
"$MOET" tokenizer train --vocab-size 100 --out "$tmp/x.json" "$tmp/ref.txt" 2> /dev/null
[ $? = 1 ] || fail "vocab 100 accepted"

# Usage.
"$MOET" tokenizer --help | grep -q "usage: moet tokenizer train" || fail "--help"
"$MOET" tokenizer train --vocab-size 600 "$tmp/ref.txt" 2> /dev/null; [ $? = 2 ] || fail "no --out: not exit 2"
"$MOET" tokenizer fit 2> /dev/null; [ $? = 2 ] || fail "unknown subcommand: not exit 2"
"$MOET" tokenizer train --vocab-size x --out "$tmp/y.json" "$tmp/ref.txt" 2> /dev/null; [ $? = 2 ] || fail "bad number"
# an --out that cannot be written is refused before any training (one line, no progress)
"$MOET" tokenizer train --vocab-size 600 --out "$tmp" "$tmp/ref.txt" 2> "$tmp/e"; [ $? = 1 ] || fail "--out DIR"
[ "$(wc -l < "$tmp/e")" = 1 ] && grep -q "is a directory" "$tmp/e" || fail "--out DIR message: $(cat "$tmp/e")"
"$MOET" tokenizer train --vocab-size 600 --out "$tmp/no/such/t.json" "$tmp/ref.txt" 2> "$tmp/e"; [ $? = 1 ] || fail "--out in a missing dir"
[ "$(wc -l < "$tmp/e")" = 1 ] && grep -q "does not exist or is not writable" "$tmp/e" || fail "missing dir message: $(cat "$tmp/e")"
echo "ok: trained $(wc -c < "$tmp/tok.json") bytes; $toks tokens for $bytes bytes"
