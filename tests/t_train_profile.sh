#!/bin/bash
# `moet train --profile` (with evaluation every 2 steps, which it must leave out): one row per kernel family the issue names (attention, experts,
# router, lm_head+loss, norms, optimizer, data wait; lora with adapters), times >= 0 that add
# up to the step (families + optimizer + data wait + other = step, to the printed rounding;
# "other" is what no family timed and stays small), shares summing to 100%; the machine-
# readable PROFILE line agrees with the table; a run with no timed step says so (no NaN).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
"$PY" "$here/make_shard.py" train.h5 64 128 256 1
"$PY" "$here/make_shard.py" val.h5 16 128 256 2
for lora in off on; do
    cat > $lora.yaml <<YAML
run: {name: prof, dir: $work/run-$lora}
model:
  arch: {vocab_size: 256, hidden_size: 128, intermediate_size: 192, num_hidden_layers: 2,
         num_attention_heads: 4, num_key_value_heads: 2, num_local_experts: 4, num_experts_per_tok: 2}
data: {train: [train.h5], val: [val.h5], seq_len: 128}
train: {batch_size: 8, max_steps: 6, log_every: 3, eval_every: 2}
optim: {lr: 1e-3}
YAML
    [ $lora = on ] && echo "lora: {enabled: true, r: 4, alpha: 8}" >> $lora.yaml
    "$MOET" train $lora.yaml --profile > $lora.log
    LORA=$lora "$PY" - $lora.log <<'PY'
import os, re, sys
text = open(sys.argv[1]).read()
head = re.search(r"profile over (\d+) steps", text)
assert head and int(head.group(1)) == 5, "5 timed steps (the first is a warm-up)"
text = text[head.start():].replace("data wait", "data_wait")
rows = {}
for m in re.finditer(r"^  (\S+)\s+([-\d. ]+?)\s*(-?[\d.]+)%?$", text, re.M):
    if m.group(1) != "step":
        rows[m.group(1)] = [float(x) for x in m.group(2).split()] + [float(m.group(3))]
step = re.search(r"^  step\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", text, re.M)
assert step, text
fwd, bwd, total = map(float, step.groups())
want = ["embedding", "norms", "attention", "router", "experts", "lm_head+loss", "optimizer", "data_wait", "other"]
if os.environ["LORA"] == "on":
    want.append("lora")
for w in want:
    assert w in rows, (w, sorted(rows))
fams = [r for k, r in rows.items() if k not in ("optimizer", "data_wait", "other")]
for k, r in rows.items():
    assert all(x >= 0 for x in r[:-1]) or k == "other", (k, r)
    if k not in ("optimizer", "data_wait", "other"):  # forward, backward, total, share
        assert abs(r[0] + r[1] - r[2]) <= 0.011, (k, r)
assert abs(sum(r[0] for r in fams) - fwd) <= 0.01 * len(fams) + 1e-9, "forward column sums to the step's forward"
assert abs(sum(r[1] for r in fams) - bwd) <= 0.01 * len(fams) + 1e-9
parts = sum(r[2] for r in fams) + sum(rows[k][-2] for k in ("optimizer", "data_wait", "other"))
assert abs(parts - total) <= 0.01 * (len(fams) + 3), (parts, total)
shares = sum(r[-1] for r in rows.values())
assert abs(shares - 100) <= 0.05 * len(rows) + 1e-9, shares
assert abs(rows["other"][-2]) <= 0.5 * total, ("untimed share too large", rows["other"], total)
# evaluation (every 2 steps here) is not part of a step: its forward passes must not land in
# the families, which would push "other" below zero
assert rows["other"][-2] >= -0.02 * total, ("families hold more than the step", rows["other"], total)
m = dict(kv.split("=") for kv in re.search(r"^PROFILE (.*)$", text, re.M).group(1).split())
assert abs(float(m["step_ms"]) - total) <= 0.006 and abs(float(m["fwd_ms"]) - fwd) <= 0.006, (m, total, fwd)
assert abs(float(m["opt_ms"]) - rows["optimizer"][-2]) <= 0.006, m
print("%s: step %.2f ms = fwd %.2f + bwd %.2f + opt %.2f + other %.2f" % (
    sys.argv[1], total, fwd, bwd, rows["optimizer"][-2], rows["other"][-2]))
PY
done
# resumed at max_steps: nothing timed, said plainly
"$MOET" train off.yaml --profile > again.log
grep -q "profile: no steps were timed" again.log
! grep -qi nan again.log
echo "no-step profile: $(grep profile: again.log)"
