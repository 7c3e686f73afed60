#!/bin/bash
# asan: yes
# Paths that travel: a LoRA run started with relative paths is evaluated, generated from and
# exported from another working directory; a PEFT export is a model for every command (on
# --base, or its base_model_name_or_path); exports name the release and its base by --name /
# --base-model (default: the base config's _name_or_path when it is a Hub id, never a local
# path) in the card, PEFT config and GGUF.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
G="$SHARED/golden/tiny-mixtral"
fail() { echo "FAIL: $*"; exit 1; }
mkdir -p "$work/proj" "$work/elsewhere"
cp -r "$G/model" "$work/proj/base"
chmod -R u+w "$work/proj/base"
"$PY" -c "
import json; p='$work/proj/base/config.json'; c=json.load(open(p)); c['_name_or_path']='mistralai/Mixtral-8x7B-v0.1'
json.dump(c, open(p, 'w'))"
"$PY" -c "
import sys; sys.path.insert(0, '$here')
import numpy as np, sttools
from make_shard import write_shard
g = sttools.read('$G/golden.safetensors')
ids = g['input_ids'].reshape(-1, g['input_ids'].shape[-1]); lab = g['labels'].reshape(ids.shape)
write_shard('$work/proj/d.h5', np.concatenate([ids] * 4), 512, np.concatenate([lab] * 4) != -100, bos=1, eos=2)
"
cat > "$work/proj/lora.yaml" <<EOF
run: {name: tinylora, dir: runs/tinylora}
model: {init_from: base}
tokenizer: base/tokenizer.json
data: {train: [d.h5], seq_len: 24}
train: {batch_size: 4, max_steps: 3}
optim: {lr: 0.01}
lora: {enabled: true, r: 4, alpha: 8, targets: [q_proj, v_proj, w1]}
EOF
(cd "$work/proj" && "$MOET" train lora.yaml --quiet)
ck="$work/proj/runs/tinylora/checkpoints/step_00000003"
jget() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]))" "$1" "$2"; }
[ "$(jget "$ck/trainer_state.json" cwd)" = "$work/proj" ] || fail "trainer_state.json records no cwd"
[ "$(jget "$ck/adapter_config.json" base_model_name_or_path)" = "$work/proj/base" ] || fail "checkpoint's PEFT base is not absolute"

cd "$work/elsewhere"
v1=$("$MOET" eval "$ck" --data "$work/proj/d.h5" | grep -o 'val_loss [0-9.]*')
echo "eval from another directory: $v1"
ids=$("$MOET" generate "$ck" --prompt "hello" --max-new-tokens 6 --temperature 0 --ids 2>/dev/null)
[ -n "$ids" ] || fail "generate from another directory"

echo "== an older checkpoint without cwd: the run dir tells where the run started"
cp -r "$ck" "$work/proj/runs/tinylora/checkpoints/step_00000004"
old="$work/proj/runs/tinylora/checkpoints/step_00000004"
"$PY" -c "
import json; p='$old/trainer_state.json'; s=json.load(open(p)); del s['cwd']; s['step']=4; json.dump(s, open(p, 'w'))"
v2=$("$MOET" eval "$old" --data "$work/proj/d.h5" | grep -o 'val_loss [0-9.]*')
[ "$v1" = "$v2" ] || fail "old checkpoint: $v2 != $v1"
echo "resolved through run.dir: $v2"

echo "== exports name the release and its base (never a local path)"
"$MOET" export "$ck" "$work/peft" --format peft > /dev/null
"$MOET" export "$ck" "$work/gguf" --format gguf --name "Tiny Chat" > /dev/null
[ "$(jget "$work/peft/adapter_config.json" base_model_name_or_path)" = mistralai/Mixtral-8x7B-v0.1 ] || fail "PEFT base: $(grep base_model "$work/peft/adapter_config.json")"
grep -q '^base_model: mistralai/Mixtral-8x7B-v0.1$' "$work/peft/README.md" || fail "card base_model"
grep -q '^# tinylora$' "$work/peft/README.md" || fail "card title: $(grep '^# ' "$work/peft/README.md")"
! grep -rq "$work" "$work/peft/README.md" "$work/peft/adapter_config.json" || fail "a local path in the release"
"$PY" - "$work/gguf/model-f32.gguf" <<'EOF'
import struct, sys
b = open(sys.argv[1], "rb").read()
assert b[:4] == b"GGUF"
n_kv = struct.unpack_from("<Q", b, 16)[0]
o, kv = 24, {}
def s(o):
    n = struct.unpack_from("<Q", b, o)[0]
    return b[o + 8:o + 8 + n].decode(), o + 8 + n
sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
for _ in range(n_kv):
    k, o = s(o)
    t = struct.unpack_from("<I", b, o)[0]; o += 4
    if t == 8:
        kv[k], o = s(o)
    elif t == 9:
        at, n = struct.unpack_from("<IQ", b, o); o += 12
        for _ in range(n):
            if at == 8: _, o = s(o)
            else: o += sizes[at]
    else:
        o += sizes[t]
print("GGUF general.name:", kv.get("general.name"))
assert kv.get("general.name") == "Tiny Chat", kv.get("general.name")
EOF
"$MOET" export "$ck" "$work/peft2" --format peft --base-model acme/tiny-base > /dev/null
[ "$(jget "$work/peft2/adapter_config.json" base_model_name_or_path)" = acme/tiny-base ] || fail "--base-model"
set +e; out=$("$MOET" export "$ck" "$work/peft3" --format peft --base-model ./local/dir 2>&1); rc=$?; set -e
[ $rc = 2 ] && echo "$out" | grep -q "not a Hub id" || fail "--base-model with a path: $rc $out"

echo "== a PEFT export is a model for eval, generate and export"
v3=$("$MOET" eval "$work/peft2" --base "$work/proj/base" --data "$work/proj/d.h5" | grep -o 'val_loss [0-9.]*')
[ "$v3" = "$v1" ] || fail "eval of the PEFT export on --base: $v3 != $v1"
ids2=$("$MOET" generate "$work/peft2" --base "$work/proj/base" --prompt "hello" --max-new-tokens 6 --temperature 0 \
       --ids --tokenizer "$work/proj/base/tokenizer.json" 2>/dev/null)
[ "$ids2" = "$ids" ] || fail "generate of the PEFT export: $ids2 != $ids"
"$MOET" export "$work/peft2" "$work/merged" --format merged --base "$work/proj/base" > /dev/null
v4=$("$MOET" eval "$work/merged" --data "$work/proj/d.h5" | grep -o 'val_loss [0-9.]*')
"$PY" -c "
a, b = float('${v1#val_loss }'), float('${v4#val_loss }')
assert abs(a - b) <= 1e-5 * abs(a), (a, b)
print(f'merged export of the PEFT dir: {b} vs adapter {a}')"
set +e; out=$("$MOET" eval "$work/peft2" --data "$work/proj/d.h5" 2>&1); rc=$?; set -e
[ $rc = 1 ] && echo "$out" | grep -q "pass --base DIR" || fail "adapter without a base: $rc $out"
echo "  ok: $out"
set +e; out=$("$MOET" eval "$work/nothing" --data "$work/proj/d.h5" 2>&1); rc=$?; set -e
[ $rc = 1 ] && echo "$out" | grep -q "no such file or directory" || fail "missing path: $rc $out"
echo "all OK"
