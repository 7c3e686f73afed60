#!/bin/bash
# Resume is exact: 6 steps straight == 3 steps, kill -9, resume to 6 (bitwise weights,
# optimizer state and per-step losses). Also: SIGTERM checkpoints and exits 0, a damaged
# or half-written checkpoint is never resumed from.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); trap 'kill -9 $pid 2>/dev/null || true; rm -rf "$work"' EXIT
pid=
cd "$work"
"$PY" "$here/make_shard.py" train.h5 96 128 1000 1
cat > cfg.yaml <<YAML
run: {name: r, dir: $work/straight, seed: 3}
model:
  arch: {vocab_size: 1000, hidden_size: 128, intermediate_size: 192, num_hidden_layers: 4,
         num_attention_heads: 4, num_key_value_heads: 2, num_local_experts: 4, num_experts_per_tok: 2}
  router_z_loss_coef: 0.001
data: {train: [train.h5], seq_len: 128, shuffle: true}
train: {batch_size: 4, grad_accum: 2, max_steps: 6, save_every: 1, keep_checkpoints: 10}
optim: {lr: 3e-3, weight_decay: 0.1, schedule: cosine, warmup_steps: 2}
YAML
# resume_case NAME WEIGHTS_FILE OVERRIDES...: 6 steps straight vs kill -9 after step 3 + resume
resume_case() {
    local name=$1 wfile=$2; shift 2
    "$MOET" train cfg.yaml run.dir=$work/$name-straight "$@" --quiet > $name-straight.log
    "$MOET" train cfg.yaml run.dir=$work/$name-resumed "$@" --quiet > $name-resumed1.log 2>&1 &
    pid=$!
    for i in $(seq 1 3000); do
        [ -e $name-resumed/checkpoints/step_00000003/trainer_state.json ] && break
        sleep 0.01
    done
    kill -9 $pid; wait $pid 2>/dev/null || true
    [ -e $name-resumed/checkpoints/step_00000003 ] || { echo "$name: step 3 never checkpointed"; exit 1; }
    if [ -e $name-resumed/checkpoints/step_00000006 ]; then echo "$name: run finished before the kill: test is void"; exit 1; fi
    echo "$name: killed after: $(ls $name-resumed/checkpoints | tr '\n' ' ')"
    "$MOET" train cfg.yaml run.dir=$work/$name-resumed "$@" > $name-resumed2.log
    grep -q "resuming from" $name-resumed2.log
    cmp $name-straight/checkpoints/step_00000006/$wfile $name-resumed/checkpoints/step_00000006/$wfile
    cmp $name-straight/checkpoints/step_00000006/optimizer.safetensors $name-resumed/checkpoints/step_00000006/optimizer.safetensors
    "$PY" - "$work" $name <<'PY'
import json, sys
w, n = sys.argv[1], sys.argv[2]
def steps(p):
    return {x["step"]: (x["loss"], x["ce_loss"], x["aux_loss"], x["grad_norm"], x["lr"])
            for x in map(json.loads, open(p)) if "loss" in x}
a, b = steps(f"{w}/{n}-straight/metrics.jsonl"), steps(f"{w}/{n}-resumed/metrics.jsonl")
assert sorted(a) == sorted(b) == list(range(1, 7)), (sorted(a), sorted(b))
for s in a:
    assert a[s] == b[s], (s, a[s], b[s])
print(f"{n}: per-step loss, ce, aux, grad_norm, lr identical for steps 1-6")
PY
    echo "$name: resume after kill -9: $wfile and AdamW state bitwise identical"
}
resume_case full model.safetensors
resume_case lora adapter_model.safetensors lora.enabled=true lora.r=4 lora.alpha=8 \
    'lora.targets=[q_proj,v_proj,o_proj,w1,w2,w3]' lora.dropout=0.1 lora.train_router=true

# SIGTERM: checkpoint at the end of the current step, exit 0, then resume to the end
"$MOET" train cfg.yaml run.dir=$work/term train.max_steps=40 train.save_every=0 --quiet > term.log 2>&1 &
pid=$!
for i in $(seq 1 3000); do [ -s term/metrics.jsonl ] && break; sleep 0.01; done
kill -TERM $pid
wait $pid; rc=$?
[ $rc = 0 ] || { echo "SIGTERM exit code $rc"; exit 1; }
grep -q "stopped by signal" term.log
n=$(ls term/checkpoints | wc -l); [ "$n" = 1 ] || { echo "expected one checkpoint after SIGTERM, got $n"; exit 1; }
echo "SIGTERM saved $(ls term/checkpoints)"

# a half-written save (temp dir) and a damaged newest checkpoint are skipped
cp -r full-resumed/checkpoints/step_00000006 full-resumed/checkpoints/step_00000007
printf 'garbage' >> full-resumed/checkpoints/step_00000007/model.safetensors
mkdir full-resumed/checkpoints/step_00000008.tmp-999
"$MOET" train cfg.yaml run.dir=$work/full-resumed train.max_steps=7 > resumed3.log 2>&1
grep -q "skipped 1 damaged checkpoint" resumed3.log
grep -q "resuming from .*step_00000006" resumed3.log
[ ! -e full-resumed/checkpoints/step_00000008.tmp-999 ]
echo "damaged and temp checkpoints ignored"
