#!/bin/bash
# asan: yes
# Non-finite weights (issue 14): every command that loads a base model or a LoRA adapter
# refuses a NaN / Inf tensor with one line naming the file, the tensor and the element
# (under `make asan` a NaN used to reach model_expf's undefined int cast); a run that
# diverges (lr = 2^63-1) reaches the NaN stop instead of undefined behaviour.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
G="$SHARED/golden/tiny-mixtral"
cd "$work"
cp -r "$G/model" good && cp -r "$G/model" nan && cp -r "$G/model" f16inf && cp -r "$G/lora_init" inflora
"$PY" - "$here" <<'PY'
import sys; sys.path.insert(0, sys.argv[1])
import numpy as np, sttools
t = sttools.read("nan/model.safetensors")
t["model.layers.1.self_attn.q_proj.weight"] = t["model.layers.1.self_attn.q_proj.weight"].copy()
t["model.layers.1.self_attn.q_proj.weight"].flat[5] = np.nan
sttools.write("nan/model.safetensors", t)
t = sttools.read("f16inf/model.safetensors")                  # an F16 model with one -inf
t = {k: v.astype(np.float16) for k, v in t.items()}
t["model.norm.weight"][63] = -np.inf
sttools.write("f16inf/model.safetensors", t)
a = sttools.read("inflora/adapter_model.safetensors")
k = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
a[k] = a[k].copy(); a[k].flat[70] = np.inf
sttools.write("inflora/adapter_model.safetensors", a)
sttools.write("b.safetensors", {"input_ids": np.arange(1, 17, dtype=np.int64).reshape(1, 16)})
PY
"$PY" "$here/make_shard.py" val.h5 4 16 512 1
cat > cfg.yaml <<YAML
run: {name: w, dir: $work/run}
model: {init_from: good}
data: {train: [val.h5], seq_len: 16}
train: {batch_size: 2, max_steps: 2}
optim: {lr: 1e-3}
YAML
NAN="nan: tensor 'model.layers.1.self_attn.q_proj.weight': element 5 of 4096 is NaN"
INF16="f16inf: tensor 'model.norm.weight': element 63 of 64 is -inf"
INFL="inflora/adapter_model.safetensors: tensor 'base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight': element 70 of 128 is inf"
fail=0
expect() { # expect WHAT PATTERN CMD...: exit 1 and exactly one stderr line containing PATTERN
    local what=$1 pat=$2; shift 2
    "$MOET" "$@" > out.log 2> err.log; local rc=$?
    local lines; lines=$(wc -l < err.log)
    if [ $rc = 1 ] && [ "$lines" = 1 ] && grep -qF -- "$pat" err.log; then
        echo "ok   $what: $(cat err.log)"
    else
        echo "FAIL $what: rc=$rc lines=$lines: $(cat err.log)"; fail=1
    fi
}
expect "forward"                "$NAN"   forward nan --batch b.safetensors --out o.safetensors
expect "forward, F16 -inf"      "$INF16" forward f16inf --batch b.safetensors --out o.safetensors
expect "forward --lora"         "$INFL"  forward good --lora inflora --batch b.safetensors --out o.safetensors
expect "generate"               "$NAN"   generate nan --prompt hi --tokenizer "$G/model/tokenizer.json"
expect "eval"                   "$NAN"   eval nan --data val.h5
expect "export"                 "$NAN"   export nan out --format hf
expect "train model.init_from"  "$NAN"   train cfg.yaml model.init_from=nan
expect "train lora.init_from"   "$INFL"  train cfg.yaml lora.enabled=true lora.r=4 lora.alpha=8 lora.init_from=inflora
[ ! -e o.safetensors ] && [ ! -e out ] && [ ! -e run/checkpoints ] || { echo "FAIL: output left behind"; fail=1; }
# the good model still loads everywhere
"$MOET" forward good --lora "$G/lora_init" --batch b.safetensors --out o.safetensors > /dev/null || fail=1
"$MOET" eval good --data val.h5 > /dev/null || fail=1
# A diverging run: lr = 2^63-1 turns the weights to inf / NaN in one step. The loss is NaN, not
# undefined behaviour in model_expf, and the run stops on it with one line.
"$MOET" train cfg.yaml optim.lr=9223372036854775807 optim.grad_clip=0 --quiet > out.log 2> err.log; rc=$?
if [ $rc = 1 ] && [ "$(wc -l < err.log)" = 1 ] && grep -qE "non-finite (loss|gradient norm) at step" err.log; then
    echo "ok   diverging run: $(cat err.log)"
else
    echo "FAIL diverging run: rc=$rc: $(cat err.log)"; fail=1
fi
exit $fail
