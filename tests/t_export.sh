#!/bin/bash
# asan: yes
# moet export: HF dirs with the golden model's exact tensor names, shapes and config keys,
# identical logits after re-import, bf16/sharded variants, checksums, model card, license,
# and refusal to overwrite.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
G="$SHARED/golden/tiny-mixtral"
cd "$work"
"$PY" -c "
import sys; sys.path.insert(0, '$here'); import sttools
g = sttools.read('$G/golden.safetensors')
sttools.write('b.safetensors', {'input_ids': g['input_ids'][1], 'labels': g['labels'][1]})"
"$MOET" export "$G/model" hf --format hf
"$MOET" export "$G/model" bf16 --format hf --dtype bf16 --max-shard-size 200KB
"$MOET" forward "$G/model" --batch b.safetensors --out out_ref.safetensors > /dev/null
"$MOET" forward hf --batch b.safetensors --out out_hf.safetensors > /dev/null
"$MOET" forward bf16 --batch b.safetensors --out out_bf16.safetensors > /dev/null
"$PY" - "$G" <<PY
import json, sys, os
sys.path.insert(0, "$here")
import numpy as np, sttools
G = sys.argv[1]
want, got = sttools.read_dir(G + "/model"), sttools.read_dir("hf")
assert {k: v.shape for k, v in want.items()} == {k: v.shape for k, v in got.items()}, "tensor names/shapes differ"
assert all(np.array_equal(want[k], got[k]) for k in want), "f32 export changed values"
wk, gk = set(json.load(open(G + "/model/config.json"))), set(json.load(open("hf/config.json")))
assert wk <= gk and gk - wk <= {"rope_theta"}, (wk ^ gk)
assert json.load(open("bf16/config.json"))["dtype"] == "bfloat16"
assert os.path.exists("bf16/model.safetensors.index.json") and os.path.exists("bf16/model-00001-of-00005.safetensors") or \
       len([f for f in os.listdir("bf16") if f.startswith("model-0000")]) > 1
a, b, c = (sttools.read("out_" + f + ".safetensors")["logits"] for f in ("ref", "hf", "bf16"))
assert np.array_equal(a, b), "re-imported f32 export gives different logits"
r = sttools.rel(c, a)
assert r < 2e-2, r
print(f"hf export: names, shapes, values identical; config keys = golden + rope_theta; logits identical; "
      f"bf16 sharded export logits rel diff {r:.1e}")
PY
(cd hf && sha256sum -c --quiet SHA256SUMS) && (cd bf16 && sha256sum -c --quiet SHA256SUMS)
for f in README.md LICENSE tokenizer.json tokenizer_config.json generation_config.json; do [ -s hf/$f ]; done
head -3 hf/README.md | grep -q "license: apache-2.0"
grep -q "Apache License" hf/LICENSE && grep -q "Version 2.0" hf/LICENSE
# overwrite protection
if "$MOET" export "$G/model" hf --format hf 2>err.log; then echo "overwrote without --force"; exit 1; fi
grep -q "already exists" err.log
before=$(sha256sum hf/model.safetensors)
"$MOET" export "$G/model" hf --format hf --dtype f16 --force > /dev/null
[ "$(sha256sum hf/model.safetensors)" != "$before" ] && [ "$("$PY" -c 'import json;print(json.load(open("hf/config.json"))["dtype"])')" = float16 ]
ls -d hf.* 2>/dev/null && { echo "leftover temp dirs"; exit 1; }
# OUT/ is OUT: a trailing slash replaces the same export
"$MOET" export "$G/model" hf/ --format hf --force > /dev/null
[ "$("$PY" -c 'import json;print(json.load(open("hf/config.json"))["dtype"])')" = float32 ]
ls -d hf.* hf/hf* 2>/dev/null && { echo "trailing slash: leftovers"; exit 1; }
# --force never replaces what is not an export, nor the source itself or a dir holding it
mkdir -p notexport && echo keep > notexport/mine.txt && echo keep > plainfile
for out in notexport plainfile "$work/srccopy" "$work"; do
    [ "$out" = "$work/srccopy" ] && cp -r "$G/model" "$work/srccopy"
    src="$G/model"; case $out in "$work"*) src="$work/srccopy" ;; esac
    if "$MOET" export "$src" "$out" --format hf --force 2>err.log; then echo "--force replaced $out"; exit 1; fi
    [ "$(wc -l < err.log)" = 1 ] || { cat err.log; exit 1; }
    echo "refused: $(cat err.log)"
done
[ -s notexport/mine.txt ] && [ -s plainfile ] && [ -s "$work/srccopy/model.safetensors" ]
# bad requests
if "$MOET" export "$G/model" p --format peft 2>err.log; then exit 1; fi; grep -q "not a LoRA checkpoint" err.log
if "$MOET" export "$G/model" x --format onnx 2>err.log; then exit 1; fi; grep -q "format must be" err.log
if "$MOET" export /nonexistent x --format hf 2>err.log; then exit 1; fi; [ "$(wc -l < err.log)" = 1 ]
if "$MOET" export "$G/model" x --format hf --tokenizer nope.json 2>err.log; then exit 1; fi; grep -q "nope.json (from --tokenizer) does not exist" err.log
[ ! -e p ] && [ ! -e x ]
# what killed exports leave is tidied by the next export to the same OUT: an OUT.tmp-PID of a dead
# PID goes (a live one stays); an OUT.old-PID (a --force swap cut short) comes back as OUT when
# OUT is missing, and goes when OUT is there
sh -c 'exit 0' & dead=$!; wait $dead
mkdir -p k/sub "k.tmp-$dead" "k.tmp-$$" && echo junk > "k.tmp-$dead/model.safetensors"
"$MOET" export "$G/model" k/sub/e --format hf > /dev/null
mkdir -p "k/sub/e.tmp-$dead" "k/sub/e.old-$dead" && echo junk > "k/sub/e.old-$dead/x"
"$MOET" export "$G/model" k/sub/e --format hf --dtype bf16 --force > /dev/null
[ ! -e "k/sub/e.tmp-$dead" ] && [ ! -e "k/sub/e.old-$dead" ] && [ -d "k.tmp-$dead" ] && [ -d "k.tmp-$$" ] ||
    { echo "stale temp dirs: $(ls -d k/sub/* k.*)"; exit 1; }
mv k/sub/e "k/sub/e.old-$dead"          # as if killed between moving OUT aside and the rename
"$MOET" export "$G/model" k/sub/e --format hf --force > /dev/null
[ "$("$PY" -c 'import json;print(json.load(open("k/sub/e/config.json"))["dtype"])')" = float32 ] && [ ! -e "k/sub/e.old-$dead" ] ||
    { echo "interrupted swap not repaired: $(ls -d k/sub/*)"; exit 1; }
echo "stale export temp dirs: removed (dead PID), kept (live PID), an interrupted --force swap put back"
echo "export checks passed"
