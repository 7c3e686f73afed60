#!/bin/bash
# asan: yes
# A 16-bit frozen base (model.base_dtype), activation checkpointing, and what a user does with
# them: LoRA on a bf16 base equals the fp32 run on the same bf16-rounded weights (forward,
# gradients and training steps, also against the PyTorch reference); activation
# checkpointing gives bit-identical runs; resume, eval, export and generate on a bf16 base;
# bad input is one line and writes nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
G="$SHARED/golden/tiny-mixtral"
fail() { echo "FAIL: $*"; exit 1; }

echo "== forward: bf16 store vs fp32 store vs PyTorch"
"$PY" "$here/bf16_check.py" "$MOET" "$G" "$work/fwd"
B16="$work/fwd/bf16"   # the golden model exported as bf16 by bf16_check.py

"$PY" -c "
import sys; sys.path.insert(0, '$here')
import numpy as np, sttools
from make_shard import write_shard
g = sttools.read('$G/golden.safetensors')
ids = g['input_ids'].reshape(-1, g['input_ids'].shape[-1]); lab = g['labels'].reshape(ids.shape)
write_shard('$work/d.h5', np.concatenate([ids] * 8), 512, np.concatenate([lab] * 8) != -100, bos=1, eos=2)
"

# run NAME BASE_DIR BASE_DTYPE CKPT LORA STEPS [extra key=value ...]
run() {
    local name=$1 base=$2 dt=$3 ck=$4 lora=$5 steps=$6; shift 6
    local lcfg="lora: {enabled: false}"
    [ "$lora" = 1 ] && lcfg="lora: {enabled: true, r: 4, alpha: 8, dropout: 0.1, targets: [q_proj, k_proj, v_proj, o_proj, w1, w2, w3]}"
    cat > "$work/$name.yaml" <<EOF
run: {name: $name, dir: $work/$name, seed: 3}
model: {init_from: $base, base_dtype: $dt}
data: {train: [$work/d.h5], seq_len: 24, shuffle: true}
train: {batch_size: 4, grad_accum: 2, max_steps: $steps, save_every: 4, activation_checkpointing: $ck}
optim: {lr: 0.01, weight_decay: 0.1}
$lcfg
EOF
    "$MOET" train "$work/$name.yaml" --quiet "$@"
}
col() { "$PY" -c "import json,sys; print(' '.join(repr(json.loads(l)['$2']) for l in open('$1/metrics.jsonl') if '\"loss\"' in l))"; }

echo "== training steps: bf16 base (small widening tiles) vs fp32 store of the same weights"
MOET_TILE_BYTES=4096 run lb "$B16" auto false 1 8
run lf "$B16" float32 false 1 8
"$PY" - "$work/lb" "$work/lf" <<'EOF'
import json, sys
a, b = ([json.loads(l) for l in open(d + "/metrics.jsonl") if '"loss"' in l] for d in sys.argv[1:3])
worst = max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(a, b))
g1 = abs(a[0]["grad_norm"] - b[0]["grad_norm"]) / b[0]["grad_norm"]
print(f"losses over {len(a)} steps: worst rel {worst:.2e}; step-1 grad_norm rel {g1:.2e} (tolerance 1e-6)")
sys.exit(0 if len(a) == 8 and worst <= 1e-6 and g1 <= 1e-6 else 1)
EOF

echo "== activation checkpointing: bit-identical runs (full fp32, and LoRA with dropout on the bf16 base)"
run full0 "$G/model" auto false 0 6
run full1 "$G/model" auto true 0 6
[ "$(col "$work/full0" loss) $(col "$work/full0" grad_norm)" = "$(col "$work/full1" loss) $(col "$work/full1" grad_norm)" ] || fail "full run: losses differ with checkpointing"
cmp "$work/full0/checkpoints/step_00000006/model.safetensors" "$work/full1/checkpoints/step_00000006/model.safetensors" || fail "full run: weights differ"
cmp "$work/full0/checkpoints/step_00000006/optimizer.safetensors" "$work/full1/checkpoints/step_00000006/optimizer.safetensors" || fail "full run: AdamW state differs"
run lb1 "$B16" auto true 1 8
run lb0 "$B16" auto false 1 8
[ "$(col "$work/lb0" loss) $(col "$work/lb0" grad_norm)" = "$(col "$work/lb1" loss) $(col "$work/lb1" grad_norm)" ] || fail "LoRA run: losses differ with checkpointing"
cmp "$work/lb0/checkpoints/step_00000008/adapter_model.safetensors" "$work/lb1/checkpoints/step_00000008/adapter_model.safetensors" || fail "LoRA run: adapters differ"
echo "bit-identical: 6 full steps (losses, grad norms, weights, AdamW state), 8 LoRA steps (losses, grad norms, adapters)"

echo "== resume on the bf16 base: 4 steps, then on to 8 == 8 straight"
run lr "$B16" auto false 1 4
sed -i 's/max_steps: 4/max_steps: 8/' "$work/lr.yaml"
"$MOET" train "$work/lr.yaml" --quiet
[ "$(col "$work/lr" loss)" = "$(col "$work/lb0" loss)" ] || fail "resumed losses differ"
cmp "$work/lr/checkpoints/step_00000008/adapter_model.safetensors" "$work/lb0/checkpoints/step_00000008/adapter_model.safetensors" || fail "resumed adapter differs"
echo "resumed run bit-identical to the straight one"

echo "== export merged from the bf16-base LoRA checkpoint: W_bf16 + s B A"
ck="$work/lb0/checkpoints/step_00000008"
"$MOET" export "$ck" "$work/m32" --format merged --dtype f32 > /dev/null
"$MOET" export "$ck" "$work/m16" --format merged --dtype bf16 > /dev/null
HERE="$here" "$PY" - "$B16" "$ck" "$work/m32" "$work/m16" <<'EOF'
import json, os, sys
sys.path.insert(0, os.environ["HERE"])
import numpy as np, sttools
base, ck, m32, m16 = sys.argv[1:5]
W, A = sttools.read_dir(base), sttools.read(os.path.join(ck, "adapter_model.safetensors"))
ac = json.load(open(os.path.join(ck, "adapter_config.json")))
s = ac["lora_alpha"] / ac["r"]
want = dict(W)
for k in A:
    if k.endswith(".lora_A.weight"):
        name = k[len("base_model.model."):-len(".lora_A.weight")] + ".weight"
        want[name] = W[name].astype(np.float64) + s * (A[k.replace("lora_A", "lora_B")].astype(np.float64) @ A[k])
got = sttools.read_dir(m32)
d = max(float(np.abs(got[k] - want[k]).max()) for k in want)
raw16 = sttools.read_dir(m16)
names = {k[len("base_model.model."):-len(".lora_A.weight")] + ".weight" for k in A if k.endswith(".lora_A.weight")}
same = all(np.array_equal(raw16[k], W[k]) for k in W if k not in names)
adapted = len(names)
print(f"merged f32: {len(want)} tensors ({adapted} adapted), max abs diff vs numpy W + s B A: {d:.2e} (tolerance 1e-6); "
      f"bf16 export keeps the un-adapted tensors' bytes: {same}")
sys.exit(0 if d <= 1e-6 and same else 1)
EOF

T="$G/model/tokenizer.json"
echo "== GGUF from the bf16-base LoRA checkpoint: adapters added row block by row block, no fp32 copy"
"$MOET" export "$ck" "$work/g-direct" --format gguf --dtype f32 --tokenizer "$T" --name lb0 > /dev/null
"$MOET" export "$work/m32" "$work/g-merged" --format gguf --dtype f32 --tokenizer "$T" --name lb0 > /dev/null
"$PY" - "$work/g-direct/model-f32.gguf" "$work/g-merged/model-f32.gguf" <<'EOF'
import sys
import numpy as np
a, b = (open(p, "rb").read() for p in sys.argv[1:3])
n = len(a)
if n != len(b):
    sys.exit(f"GGUF sizes differ: {n} vs {len(b)}")
i = next((k for k in range(n) if a[k] != b[k]), n)
if i == n:
    print("GGUF of the LoRA checkpoint on the bf16 base = GGUF of its merged f32 export, byte for byte")
    sys.exit(0)
# same header (names, shapes, offsets: equal sizes); every tensor is F32: compare the floats
fa = np.frombuffer(a[: n - n % 4], dtype=np.float32).astype(np.float64)
fb = np.frombuffer(b[: n - n % 4], dtype=np.float32).astype(np.float64)
ok = np.isfinite(fa) & np.isfinite(fb)
d = np.abs(fa - fb)[ok]
print(f"GGUF direct vs via its merged export: first byte difference at {i} of {n}, max abs diff {d.max():.2e} "
      f"(tolerance 1e-6)")
sys.exit(0 if d.max() <= 1e-6 else 1)
EOF

echo "== generate and eval on the bf16 base"
a=$("$MOET" generate "$ck" --prompt "hello world" --max-new-tokens 12 --temperature 0 --ids --tokenizer "$T" 2>/dev/null)
b=$("$MOET" generate "$work/m32" --prompt "hello world" --max-new-tokens 12 --temperature 0 --ids --tokenizer "$T" 2>/dev/null)
[ -n "$a" ] && [ "$a" = "$b" ] || fail "generate: LoRA checkpoint on the bf16 base ($a) != merged export ($b)"
echo "greedy ids of the LoRA checkpoint (adapters unmerged on the bf16 base) = its merged export: $a"
"$MOET" export "$B16" "$work/w32" --format hf --dtype f32 > /dev/null
e16=$("$MOET" eval "$B16" --data "$work/d.h5" | grep -o 'val_loss [0-9.]*')
e32=$("$MOET" eval "$work/w32" --data "$work/d.h5" | grep -o 'val_loss [0-9.]*')
[ "$e16" = "$e32" ] || fail "eval: bf16 store '$e16' != fp32 store '$e32'"
echo "eval of the bf16 export (mapped) = eval of its fp32 widening: $e16"

echo "== bad input"
expect_fail() { # expect_fail PATTERN cmd...: exit 1, one line naming PATTERN
    local pat=$1; shift
    set +e; out=$("$@" 2>&1 >/dev/null); rc=$?; set -e
    [ $rc = 1 ] || fail "$* exited $rc (want 1): $out"
    [ "$(printf '%s\n' "$out" | wc -l)" = 1 ] || fail "more than one line: $out"
    echo "$out" | grep -q "$pat" || fail "'$out' does not say '$pat'"
    echo "  ok: $out"
}
cp "$work/full0.yaml" "$work/bad.yaml"
sed -i "s|dir: $work/full0|dir: $work/bad_run|; s|base_dtype: auto|base_dtype: bfloat16|" "$work/bad.yaml"
expect_fail "full fine-tune" "$MOET" train "$work/bad.yaml"
[ ! -e "$work/bad_run" ] || fail "a refused run left $work/bad_run"
for dt in F64 I8; do
    mkdir -p "$work/dt$dt"; cp "$G/model/config.json" "$work/dt$dt/"
    HERE="$here" "$PY" - "$G/model" "$work/dt$dt/model.safetensors" "$dt" <<'EOF'
import os, sys
sys.path.insert(0, os.environ["HERE"])
import numpy as np, sttools
w = sttools.read_dir(sys.argv[1])
k = "model.layers.0.self_attn.q_proj.weight"
w[k] = w[k].astype(np.float64) if sys.argv[3] == "F64" else (w[k] * 100).astype(np.int8)
sttools.write(sys.argv[2], w)
EOF
    expect_fail "dtype $dt" "$MOET" eval "$work/dt$dt" --data "$work/d.h5"
done
mkdir -p "$work/short"; cp "$B16/config.json" "$work/short/"
head -c -1000 "$B16/model.safetensors" > "$work/short/model.safetensors"
sed "s|init_from: $B16|init_from: $work/short|; s|dir: $work/lb0|dir: $work/short_run|" "$work/lb0.yaml" > "$work/short.yaml"
expect_fail "short\|end of the file\|past the end\|truncated" "$MOET" train "$work/short.yaml"
[ ! -e "$work/short_run" ] || fail "a refused run left $work/short_run"
mkdir -p "$work/lie"; cp "$B16/config.json" "$work/lie/"
"$PY" - "$B16/model.safetensors" "$work/lie/model.safetensors" <<'EOF'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
k = "model.layers.0.self_attn.q_proj.weight"
h[k]["dtype"] = "F32"  # the header lies: F32 would need twice the bytes it spans
hb = json.dumps(h).encode()
hb += b" " * (-len(hb) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(hb)) + hb + b[8 + n:])
EOF
expect_fail "q_proj" "$MOET" eval "$work/lie" --data "$work/d.h5"

echo "== a base file cut short while a run has it mapped"
mkdir -p "$work/live"; cp "$B16/config.json" "$B16/model.safetensors" "$work/live/"
sed "s|init_from: $B16|init_from: $work/live|; s|dir: $work/lb0|dir: $work/live_run|; s|max_steps: 8|max_steps: 100000|; s|save_every: 4|save_every: 0|" \
    "$work/lb0.yaml" > "$work/live.yaml"
"$MOET" train "$work/live.yaml" > "$work/live.out" 2> "$work/live.err" &
pid=$!
for _ in $(seq 100); do grep -q "^step" "$work/live.out" 2>/dev/null && break; sleep 0.1; done
grep -q "^step" "$work/live.out" || { kill $pid; fail "the run did not start"; }
truncate -s 4096 "$work/live/model.safetensors"
for _ in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
if kill -0 $pid 2>/dev/null; then kill -9 $pid; fail "the run went on for 10 s on a truncated base"; fi
set +e; wait $pid; rc=$?; set -e
[ $rc = 1 ] || fail "exit $rc, want 1"
grep -q "truncated on disk while in use" "$work/live.err" || fail "no clear message: $(cat "$work/live.err")"
echo "  ok: exit 1 within 10 s: $(cat "$work/live.err")"
echo "all OK"
