#!/bin/bash
# Eval during training and `moet eval` agree; metrics.jsonl carries what DESIGN.md lists,
# expert load fractions sum to 1 per layer; the loss goes down on learnable data.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
"$PY" "$here/make_shard.py" train.h5 64 64 256 1
"$PY" "$here/make_shard.py" val.h5 8 64 256 2
cat > cfg.yaml <<YAML
run: {name: ev, dir: $work/run}
model:
  arch: {vocab_size: 256, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2,
         num_attention_heads: 4, num_key_value_heads: 2, num_local_experts: 4, num_experts_per_tok: 2}
data: {train: [train.h5], val: [val.h5], seq_len: 64}
train: {batch_size: 4, max_steps: 40, eval_every: 20, eval_batches: 2, log_every: 5}
optim: {lr: 3e-3, schedule: wsd, warmup_steps: 4}
YAML
"$MOET" train cfg.yaml > train.log
grep -E "^step +40/40" train.log
"$MOET" eval run/checkpoints/step_00000040 --data val.h5 --batch-size 4 --max-batches 2 | tee eval.log
"$PY" - <<'PY'
import json, math
rows = [json.loads(l) for l in open("run/metrics.jsonl")]
train = [r for r in rows if "loss" in r]
evals = [r for r in rows if "val_loss" in r]
assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30, 35, 40], [r["step"] for r in train]
assert [r["step"] for r in evals] == [0, 20, 40], [r["step"] for r in evals]   # train.eval_at_start: a baseline
# at step 0 the model is its random init: near-uniform over 256 tokens (ln 256 = 5.545)
assert abs(evals[0]["val_loss"] - math.log(256)) < 0.25, evals[0]
assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5, evals
for r in train:
    for k in ("step", "loss", "ce_loss", "aux_loss", "lr", "grad_norm", "tokens_per_s", "expert_load", "load_imbalance"):
        assert k in r, k
    assert abs(r["loss"] - (r["ce_loss"] + 0.02 * r["aux_loss"])) < 1e-5 * r["loss"]
    assert len(r["expert_load"]) == 2 and all(abs(sum(l) - 1) < 1e-3 for l in r["expert_load"])
    assert all(x >= 1 for x in r["load_imbalance"])
for r in evals:
    assert abs(r["val_ppl"] - math.exp(r["val_loss"])) < 1e-6 * r["val_ppl"]
assert train[-1]["ce_loss"] < train[0]["ce_loss"] - 0.5, (train[0]["ce_loss"], train[-1]["ce_loss"])
got = float(open("eval.log").read().split()[1])
assert abs(got - evals[-1]["val_loss"]) < 1e-6, (got, evals[-1]["val_loss"])
print(f"ce {train[0]['ce_loss']:.3f} -> {train[-1]['ce_loss']:.3f}; val_loss {evals[-1]['val_loss']:.4f} == moet eval {got:.4f}")
PY
# A fresh LoRA run (PEFT init: A kaiming-uniform, B zero; router frozen) learns: every logged
# grad_norm > 0 and the loss falls (a zero A would leave every gradient at 0 and the loss flat)
cat > lora.yaml <<YAML
run: {name: lo, dir: $work/runl}
model:
  arch: {vocab_size: 256, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2,
         num_attention_heads: 4, num_key_value_heads: 2, num_local_experts: 4, num_experts_per_tok: 2}
data: {train: [train.h5], seq_len: 64}
train: {batch_size: 4, max_steps: 30, log_every: 5}
optim: {lr: 1e-2}
lora: {enabled: true, r: 8, alpha: 16, targets: [q_proj, k_proj, v_proj, o_proj, w1, w2, w3]}
YAML
"$MOET" train lora.yaml --quiet
"$PY" - <<'PY'
import json
rows = [json.loads(l) for l in open("runl/metrics.jsonl") if '"loss"' in l]
assert all(r["grad_norm"] > 0 for r in rows), [r["grad_norm"] for r in rows]
assert rows[-1]["ce_loss"] < rows[0]["ce_loss"] - 0.1, (rows[0]["ce_loss"], rows[-1]["ce_loss"])
print(f"fresh LoRA: ce {rows[0]['ce_loss']:.3f} -> {rows[-1]['ce_loss']:.3f}, grad_norm {rows[0]['grad_norm']:.3f}")
PY
# moet eval counts every row, the last partial batch included: batch sizes 1, 3, 8 and 16 over
# the 8 val rows give the same targets and loss (to 1e-5: the rows are batched differently);
# a batch larger than the data is one batch of every row (issue 14: a 1-row shard was refused)
for bs in 1 3 8 16; do "$MOET" eval run/checkpoints/step_00000040 --data val.h5 --batch-size $bs > eval$bs.log; done
"$PY" "$here/make_shard.py" one.h5 1 64 256 5
for bs in 1 3; do "$MOET" eval run/checkpoints/step_00000040 --data one.h5 --batch-size $bs > one$bs.log; done
[ "$(cut -d' ' -f1-4 one1.log)" = "$(cut -d' ' -f1-4 one3.log)" ] && grep -q "in 1 rows of 64 tokens, batch 1" one3.log ||
    { echo "FAIL: 1-row shard, --batch-size 3: $(cat one3.log)"; exit 1; }
echo "1-row shard, --batch-size 3: $(cat one3.log)"
# without --batch-size, eval batches rows of 2048 tokens (here 32 rows of 64, so all 8 val rows
# in one batch; one row at a time left the cores idle: 6x slower on the tiny model), same loss
"$MOET" eval run/checkpoints/step_00000040 --data val.h5 > evaldef.log
grep -q "in 8 rows of 64 tokens, batch 8" evaldef.log && [ "$(cut -d' ' -f1-2 evaldef.log)" = "$(cut -d' ' -f1-2 eval8.log)" ] ||
    { echo "FAIL: default eval batch: $(cat evaldef.log)"; exit 1; }
"$PY" - <<'PY'
import re
got = {}
for bs in (1, 3, 8, 16):
    t = open(f"eval{bs}.log").read()
    got[bs] = (float(t.split()[1]), int(re.search(r"(\d+) targets", t).group(1)), int(re.search(r"in (\d+) rows", t).group(1)))
assert len({g[1] for g in got.values()}) == 1 and all(g[2] == 8 for g in got.values()), got
assert max(g[0] for g in got.values()) - min(g[0] for g in got.values()) < 1e-5, got
print("eval over every row:", got)
PY
# no target at all (every loss_mask 0) is an error, not a NaN loss with exit 0
"$PY" "$here/make_shard.py" nomask.h5 4 64 256 1 --zero-mask
if "$MOET" eval run/checkpoints/step_00000040 --data nomask.h5 > /dev/null 2> err.log; then
    echo "FAIL: eval without targets exited 0"; exit 1
fi
grep -q "no target tokens in the 4 evaluated rows" err.log && [ "$(wc -l < err.log)" = 1 ]
echo "no targets: $(cat err.log)"
# an eval that gives no number (a val set without targets) warns, logs null and keeps training
# (the run reaches max_steps and saves); tools/report.py reads such a log
if "$MOET" train cfg.yaml run.dir=$work/runnv 'data.val=[nomask.h5]' train.max_steps=4 train.eval_every=2 \
       train.save_every=0 --quiet >/dev/null 2>err.log && [ -e runnv/checkpoints/step_00000004/model.safetensors ]; then
    grep -q "eval at step 2: data.val: no target tokens" err.log
    [ "$(grep -c '"val_loss": null' runnv/metrics.jsonl)" = 3 ]   # steps 0 (eval_at_start), 2, 4
    "$PY" "$here/../tools/report.py" runnv >/dev/null
    echo "eval without a number: $(head -1 err.log)"
else
    echo "FAIL: a val set without targets stopped the run: $(cat err.log)"; exit 1
fi

# train.eval_at_start: not repeated on resume; elapsed_s and tokens continue over resumes (kept in
# trainer_state.json; a checkpoint without elapsed_s, as older ones, resumes from 0 s)
"$MOET" train cfg.yaml train.max_steps=50 train.log_every=5 > resume.log
grep -q "^eval step 0 " resume.log && { echo "FAIL: eval_at_start repeated on resume"; exit 1; }
"$PY" - <<'PY'
import json
rows = [json.loads(l) for l in open("run/metrics.jsonl")]
assert [r["step"] for r in rows if "val_loss" in r] == [0, 20, 40], rows
tr = [r for r in rows if "loss" in r]
assert [r["step"] for r in tr] == list(range(5, 55, 5)), [r["step"] for r in tr]
assert all(r["tokens"] == r["step"] * 4 * 64 for r in tr), [(r["step"], r["tokens"]) for r in tr]
st = json.load(open("run/checkpoints/step_00000050/trainer_state.json"))
el = {r["step"]: r["elapsed_s"] for r in tr}
assert el[45] > el[40] and el[50] >= el[45], el    # the resumed run goes on from the first run's time
assert abs(st["elapsed_s"] - el[50]) < 0.5, (st["elapsed_s"], el[50])
print(f"resume: elapsed_s {el[40]:.2f} at step 40 -> {el[45]:.2f} at 45 (resumed), {st['elapsed_s']:.2f} in the state")
PY
grep -Eq "^done: 10 steps in [0-9.]+s \(all runs of this training: 50 steps, 12800 tokens, [0-9.]+s\); peak RSS [0-9.]+ GiB" resume.log ||
    { echo "FAIL: done line: $(grep '^done' resume.log)"; exit 1; }
grep '^done' resume.log
"$PY" - <<'PY'
import json   # an older checkpoint: no elapsed_s (trainer_state.json is not in its own sha256 list)
p = "run/checkpoints/step_00000050/trainer_state.json"
st = json.load(open(p)); del st["elapsed_s"]; json.dump(st, open(p, "w"))
PY
"$MOET" train cfg.yaml train.max_steps=55 train.log_every=5 --quiet
"$PY" - <<'PY'
import json
tr = {r["step"]: r for r in map(json.loads, open("run/metrics.jsonl")) if "loss" in r}
assert tr[55]["elapsed_s"] < tr[50]["elapsed_s"] and tr[55]["tokens"] == 55 * 256, (tr[50], tr[55])
print(f"resumed from a state without elapsed_s: elapsed_s {tr[55]['elapsed_s']:.2f} (from 0), tokens {tr[55]['tokens']}")
PY
# eval_at_start false: no step-0 line; true without data.val is an error naming the key
"$MOET" train cfg.yaml run.dir=$work/runns train.max_steps=4 train.eval_every=0 train.eval_at_start=false --quiet
grep -q '"step": 0' runns/metrics.jsonl && { echo "FAIL: eval_at_start=false still evaluated"; exit 1; }
"$MOET" train lora.yaml run.dir=$work/runx train.eval_at_start=true > /dev/null 2> err.log && { echo "FAIL: eval_at_start without val"; exit 1; }
grep -q "train.eval_at_start: true but data.val lists no files" err.log && [ "$(wc -l < err.log)" = 1 ] ||
    { echo "FAIL: $(cat err.log)"; exit 1; }
# data.seq_len beyond max_position_embeddings: a warning at the start of train and eval, an error with --strict
"$MOET" train cfg.yaml run.dir=$work/runctx model.arch.max_position_embeddings=32 train.max_steps=4 \
    train.eval_every=0 train.eval_at_start=false --quiet 2> warn.log
grep -q "^moet train: warning: data.seq_len 64 is more than the model's max_position_embeddings 32" warn.log ||
    { echo "FAIL: no seq_len warning: $(cat warn.log)"; exit 1; }
if "$MOET" train cfg.yaml run.dir=$work/runctx2 model.arch.max_position_embeddings=32 --strict > /dev/null 2> err.log; then
    echo "FAIL: --strict accepted seq_len > max_position_embeddings"; exit 1
fi
grep -q "data.seq_len 64 is more than the model's max_position_embeddings 32 (--strict)" err.log && [ "$(wc -l < err.log)" = 1 ]
[ ! -e runctx2/checkpoints ] || { echo "FAIL: --strict left checkpoints"; exit 1; }
"$MOET" eval runctx/checkpoints/step_00000004 --data val.h5 > /dev/null 2> warn.log
grep -q "^moet eval: warning: the shards' rows of 64 tokens are longer than the model's max_position_embeddings 32" warn.log
"$MOET" eval runctx/checkpoints/step_00000004 --data val.h5 --strict > /dev/null 2> err.log && { echo "FAIL: eval --strict"; exit 1; }
grep -q "max_position_embeddings 32 (--strict)" err.log && [ "$(wc -l < err.log)" = 1 ]
"$MOET" eval run/checkpoints/step_00000050 --data val.h5 --strict --max-batches 1 > /dev/null   # within the context: fine
echo "seq_len past the context: warning, --strict error (train and eval)"
# tools/report.py: heat maps and the loss plot have axis labels (step; loss / expert), the legend
# sits above the plot box (the lr curve spans the box), the val curve starts at step 0 (eval_at_start)
"$PY" "$here/../tools/report.py" run > report.txt
grep -q "^val_loss at step 0 (before training" report.txt || { echo "FAIL: report table lacks the step-0 val loss"; exit 1; }
"$PY" - <<'PY'
import xml.etree.ElementTree as ET
ns = "{http://www.w3.org/2000/svg}"
root = ET.parse("run/report.svg").getroot()
box = next(r for r in root.iter(ns + "rect") if r.get("fill") == "none")
y0, x0, h = float(box.get("y")), float(box.get("x")), float(box.get("height"))
legend = next(g for g in root.iter(ns + "g") if g.get("class") == "legend")
assert [t.text.split()[0] for t in legend] == ["train", "val", "lr"], [t.text for t in legend]
assert all(float(t.get("y")) < y0 for t in legend), "legend inside the plot box (over the curves)"
axes = [g for g in root.iter(ns + "g") if g.get("class") == "axis"]
texts = lambda g: [t.text for t in g]
assert "step" in texts(axes[0]) and "loss" in texts(axes[0]), texts(axes[0])
heat = [g for g in axes if g.get("data-layer") is not None]
assert [g.get("data-layer") for g in heat] == ["0", "1"], [g.get("data-layer") for g in heat]
assert all("step" in texts(g) and "expert" in texts(g) for g in heat), [texts(g) for g in heat]
val = [p for p in root.iter(ns + "polyline") if p.get("stroke") == "#d62728"][0]
first = [float(v) for v in val.get("points").split()[0].split(",")]
assert abs(first[0] - x0) < 0.1, (first, x0)       # step 0
assert abs(first[1] - y0) < 0.1, (first, y0)       # the highest loss: the untrained model's
print(f"report.svg: legend above the box (y < {y0:.0f}), axis labels on the loss plot and {len(heat)} heat maps, val from step 0")
PY
