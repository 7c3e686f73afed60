#!/bin/bash
# asan: yes
# Bad input to `moet train`: one clear line on stderr, exit 1, nothing good destroyed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
"$PY" "$here/make_shard.py" train.h5 16 32 300 1
"$PY" "$here/make_shard.py" big_vocab.h5 16 32 5000 1
cat > cfg.yaml <<YAML
run: {name: e, dir: $work/run}
model:
  arch: {vocab_size: 300, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2,
         num_attention_heads: 4, num_key_value_heads: 2, num_local_experts: 4, num_experts_per_tok: 2}
data: {train: [train.h5], seq_len: 32}
train: {batch_size: 2, max_steps: 3, save_every: 1}
optim: {lr: 1e-3}
YAML
fail=0
# expect_error DESCRIPTION PATTERN ARGS...: exit 1, exactly one stderr line matching PATTERN
expect_error() {
    local what=$1 pat=$2; shift 2
    "$MOET" train "$@" >out.log 2>err.log; local rc=$?
    local lines; lines=$(wc -l < err.log)
    if [ $rc = 1 ] && [ "$lines" = 1 ] && grep -qE "$pat" err.log; then
        echo "ok   $what: $(cat err.log)"
    else
        echo "FAIL $what: rc=$rc lines=$lines: $(cat err.log)"; fail=1
    fi
}
expect_error "unknown key" "unknown key 'optim.learning_rate' \(did you mean 'optim.lr'\?\)" cfg.yaml optim.learning_rate=1
expect_error "wrong type" "optim.lr: expected a positive number" cfg.yaml optim.lr=fast
expect_error "missing shard" "nope.h5" cfg.yaml 'data.train=[nope.h5]'
expect_error "shard vocab above the model's" "vocab" cfg.yaml 'data.train=[big_vocab.h5]'
head -c 3000 train.h5 > trunc.h5
expect_error "truncated shard" "trunc.h5" cfg.yaml 'data.train=[trunc.h5]'
expect_error "unwritable run dir" "run.dir" cfg.yaml run.dir=/dev/null/run
expect_error "missing config" "no_such.yaml" no_such.yaml
expect_error "init_from not a model" "model.init_from" cfg.yaml model.init_from=/tmp
expect_error "lora keys without lora.enabled" "lora.r is set but lora.enabled is not" cfg.yaml lora.r=4 lora.alpha=8
expect_error "tokenizer not a tokenizer" "tokenizer: cfg.yaml: not valid JSON" cfg.yaml tokenizer=cfg.yaml
expect_error "tokenizer larger than the model" "has 32000 tokens, more than the model's vocab_size 300" cfg.yaml \
    tokenizer=$SHARED/data/mistral-tokenizer/tokenizer.json
"$MOET" train --help > /dev/null || { echo "FAIL --help"; fail=1; }

# NaN: an absurd lr blows the weights up; the run stops with one line and keeps step 1.
"$MOET" train cfg.yaml optim.lr=1e30 optim.grad_clip=0 optim.weight_decay=0 --quiet >out.log 2>err.log; rc=$?
if [ $rc = 1 ] && grep -qE "non-finite (loss|gradient norm) at step" err.log && [ -e run/checkpoints/step_00000001/model.safetensors ]; then
    echo "ok   NaN loss: $(cat err.log); kept $(ls run/checkpoints | tr '\n' ' ')"
else
    echo "FAIL NaN loss: rc=$rc $(cat err.log) $(ls run/checkpoints 2>&1)"; fail=1
fi
# A good run afterwards in a fresh dir still works
"$MOET" train cfg.yaml run.dir=$work/good --quiet > /dev/null 2>&1 || { echo "FAIL good run"; fail=1; }
[ -e good/checkpoints/step_00000003/model.safetensors ] || { echo "FAIL good run checkpoint"; fail=1; }
# resume: never over an existing run is refused and leaves its checkpoints alone
before=$(sha256sum good/checkpoints/step_00000003/model.safetensors)
expect_error "resume never over a run" "already holds checkpoints" cfg.yaml run.dir=$work/good train.resume=never
[ "$(sha256sum good/checkpoints/step_00000003/model.safetensors)" = "$before" ] || { echo "FAIL checkpoint changed"; fail=1; }
# resume with a changed model, data or batch is refused (the checkpoint's config says what the run
# was), and neither the checkpoints nor the run's config.yaml change; optim / max_steps may change
cfg_before=$(sha256sum good/config.yaml)
expect_error "resume with another arch" "another model \(model.init_from / model.arch\) .*another run.dir" cfg.yaml run.dir=$work/good \
    train.max_steps=4 model.arch.num_local_experts=8
expect_error "resume with another batch" "another train.batch_size" cfg.yaml run.dir=$work/good train.max_steps=4 \
    train.batch_size=4
expect_error "resume with another seq_len" "another data.seq_len" cfg.yaml run.dir=$work/good train.max_steps=4 \
    data.seq_len=16
expect_error "resume with another seed" "another run.seed" cfg.yaml run.dir=$work/good train.max_steps=4 run.seed=9
expect_error "bad value over a good run" "model.arch" cfg.yaml run.dir=$work/good model.arch.hidden_size=-5
[ "$(sha256sum good/config.yaml)" = "$cfg_before" ] || { echo "FAIL config.yaml of the run replaced by a refused one"; fail=1; }
[ "$(sha256sum good/checkpoints/step_00000003/model.safetensors)" = "$before" ] || { echo "FAIL checkpoint changed"; fail=1; }
if "$MOET" train cfg.yaml run.dir=$work/good train.max_steps=4 optim.lr=5e-4 model.arch.model_type=mixtral --quiet \
       >out.log 2>err.log &&
   [ -e good/checkpoints/step_00000004/model.safetensors ] && grep -q "lr: 0.0005" good/config.yaml; then
    echo "ok   resume with a new lr and max_steps (and the same model written differently) continues to step 4"
else
    echo "FAIL resume with a new lr: $(cat err.log)"; fail=1
fi
# a tampered trainer_state.json (not covered by the sha256s) is one line, not a crash
cp -r good tamper
"$PY" - tamper/checkpoints/step_00000004/trainer_state.json <<'PY'
import json, sys
p = sys.argv[1]; s = json.load(open(p)); s["rng"][1] = 1; json.dump(s, open(p, "w"))
PY
expect_error "tampered rng" "trainer_state.json: step, data position or rng" cfg.yaml run.dir=$work/tamper \
    train.max_steps=5 optim.lr=5e-4
# resuming from an older checkpoint by path into a run that holds newer ones would overwrite them
expect_error "resume path under newer checkpoints" "already holds newer or other checkpoints .*train.resume: auto" cfg.yaml \
    run.dir=$work/good train.max_steps=5 optim.lr=5e-4 train.resume=$work/good/checkpoints/step_00000003
# every checkpoint damaged: not started over (the damaged ones stay for a person to look at)
cp -r good dmg
for f in dmg/checkpoints/*/optimizer.safetensors; do printf 'X' | dd of="$f" bs=1 seek=100 conv=notrunc 2>/dev/null; done
expect_error "all checkpoints damaged" "every checkpoint in .* is damaged" cfg.yaml run.dir=$work/dmg train.max_steps=5 \
    optim.lr=5e-4
[ "$(ls dmg/checkpoints | wc -l)" = "$(ls good/checkpoints | wc -l)" ] || { echo "FAIL damaged checkpoints removed"; fail=1; }
# two trainers on one run dir: the second is refused while the first holds the run's lock
# (held here by flock(1) on RUN_DIR/.moet-train.lock, the same flock(2) lock moet takes), and
# it writes nothing there
mkdir -p busy && flock busy/.moet-train.lock sleep 5 &
pid=$!
for i in $(seq 50); do [ -e busy/.moet-train.lock ] && ! flock -n busy/.moet-train.lock true && break; sleep 0.1; done
expect_error "second trainer on a busy run dir" "another moet train is using it" cfg.yaml run.dir=$work/busy
[ "$(ls -A busy)" = ".moet-train.lock" ] || { echo "FAIL the refused trainer wrote into the busy run dir: $(ls -A busy)"; fail=1; }
wait $pid
"$MOET" train cfg.yaml run.dir=$work/busy --quiet >/dev/null 2>&1 || { echo "FAIL run dir free again"; fail=1; }
# lora.init_from an adapter that differs from the lora section: the differing field is named
"$MOET" train cfg.yaml run.dir=$work/lo lora.enabled=true lora.r=4 lora.alpha=8 --quiet >/dev/null 2>&1 ||
    { echo "FAIL LoRA run"; fail=1; }
expect_error "init_from adapter with another rslora" "the adapter's rslora is false, the config's lora.rslora is true" \
    cfg.yaml run.dir=$work/lo2 lora.enabled=true lora.r=4 lora.alpha=8 lora.rslora=true \
    lora.init_from=$work/lo/checkpoints/step_00000003
expect_error "init_from adapter with other targets" "the adapter's targets is q_proj,k_proj,v_proj,o_proj, the config's lora.targets is q_proj" \
    cfg.yaml run.dir=$work/lo2 lora.enabled=true lora.r=4 lora.alpha=8 'lora.targets=[q_proj]' \
    lora.init_from=$work/lo/checkpoints/step_00000003
# a shard without targets trains (nothing to learn) but says so once on stderr
"$PY" "$here/make_shard.py" nomask.h5 4 32 300 1 --zero-mask
if "$MOET" train cfg.yaml run.dir=$work/nomask 'data.train=[nomask.h5]' --quiet >/dev/null 2>err.log &&
   [ "$(wc -l < err.log)" = 1 ] && grep -q "step 1 has no target tokens" err.log; then
    echo "ok   no targets: $(cat err.log)"
else
    echo "FAIL no targets: $(cat err.log)"; fail=1
fi
# the base model of a resume: a full run resumes with its init_from moved away (the weights
# are in the checkpoint); a LoRA run whose init_from now names another model of the same
# shape is refused (its adapter was trained against the old base's weights)
"$MOET" train cfg.yaml run.dir=$work/b1 train.max_steps=1 --quiet >/dev/null 2>&1
"$MOET" train cfg.yaml run.dir=$work/b2 train.max_steps=1 run.seed=5 --quiet >/dev/null 2>&1
cp -r b1/checkpoints/step_00000001 base1 && cp -r b2/checkpoints/step_00000001 base2
"$MOET" train cfg.yaml run.dir=$work/fromb model.init_from=$work/base1 'model.arch={}' train.max_steps=2 --quiet >/dev/null 2>&1
mv base1 base1.moved
if "$MOET" train cfg.yaml run.dir=$work/fromb model.init_from=$work/base1 'model.arch={}' train.max_steps=3 --quiet \
       >/dev/null 2>err.log && [ -e fromb/checkpoints/step_00000003 ]; then
    echo "ok   full run resumes with its base model moved away"
else
    echo "FAIL full run with its base moved: $(cat err.log)"; fail=1
fi
mv base1.moved base1
"$MOET" train cfg.yaml run.dir=$work/lob model.init_from=$work/base1 'model.arch={}' lora.enabled=true lora.r=4 \
    lora.alpha=8 train.max_steps=2 --quiet >/dev/null 2>&1
expect_error "LoRA resume on another base" "another model.init_from \(the LoRA base" cfg.yaml run.dir=$work/lob \
    model.init_from=$work/base2 'model.arch={}' lora.enabled=true lora.r=4 lora.alpha=8 train.max_steps=3
expect_error "LoRA resume on a random base" "another model.init_from \(the LoRA base" cfg.yaml run.dir=$work/lob \
    lora.enabled=true lora.r=4 lora.alpha=8 train.max_steps=3
"$MOET" train cfg.yaml run.dir=$work/lor lora.enabled=true lora.r=4 lora.alpha=8 train.max_steps=2 --quiet >/dev/null 2>&1
expect_error "LoRA resume from a random base onto a given one" "another model.init_from \(the LoRA base" cfg.yaml \
    run.dir=$work/lor model.init_from=$work/base1 'model.arch={}' lora.enabled=true lora.r=4 lora.alpha=8 train.max_steps=3
# a config that fails leaves no run dir behind
expect_error "failing config, fresh dir" "model.arch: .*hidden_size is -5, must be positive" cfg.yaml run.dir=$work/never model.arch.hidden_size=-5
[ ! -e never ] || { echo "FAIL a refused config created its run dir"; fail=1; }
expect_error "failing config, fresh nested dir" "hidden_size is -5" cfg.yaml run.dir=$work/nest/a/run/ model.arch.hidden_size=-5
[ ! -e nest ] || { echo "FAIL a refused config left parents of its run dir: $(find nest)"; fail=1; }
mkdir keepme  # an existing empty dir reached through '..' is not "made" by the failing run
expect_error "failing config, run.dir through .." "hidden_size is -5" cfg.yaml run.dir=$work/new/../keepme model.arch.hidden_size=-5
[ -d keepme ] || { echo "FAIL a failing run removed a directory it did not make"; fail=1; }
exit $fail
