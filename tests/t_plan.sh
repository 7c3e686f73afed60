#!/bin/bash
# The memory planner tells the truth: on a model big enough that fixed costs do not hide the
# error (110 M parameters: 0.4 GiB of fp32 weights, 0.2 GiB of bf16), `moet train` reports its
# measured peak RSS within 10% of the plan it printed, for full and LoRA runs, fp32 and bf16
# bases, with and without activation checkpointing; `moet info RUN.yaml --json` gives the same
# plan, works from a directory holding only config.json, and says what would make a run fit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
"$PY" "$here/bench/make_slice.py" "$work/P" --layers 4 --shards 2 --hidden 512 --ffn 1536 --heads 8 \
    --kv-heads 2 --head-dim 64 --experts 8 --top-k 2 --rows 32 --seq 256 > /dev/null
printf '%-24s %10s %10s %8s\n' run planned peak diff
for spec in "full auto false 0" "full auto true 0" "lf float32 false 1" "lf float32 true 1" \
            "lb auto false 1" "lb auto true 1"; do
    set -- $spec
    name=$1-$3
    lcfg="lora: {enabled: false}"
    [ "$4" = 1 ] && lcfg="lora: {enabled: true, r: 16, alpha: 32, targets: [q_proj, k_proj, v_proj, o_proj, w1, w2, w3]}"
    cat > "$work/$name.yaml" <<EOF
run: {name: $name, dir: $work/runs/$name, seed: 1}
model: {init_from: $work/P, base_dtype: $2}
data: {train: [$work/P/train.h5], seq_len: 256}
train: {batch_size: 4, max_steps: 2, activation_checkpointing: $3}
optim: {lr: 1e-4}
$lcfg
EOF
    line=$("$MOET" train "$work/$name.yaml" | grep "^done:")
    "$PY" - "$name" "$line" "$("$MOET" info "$work/$name.yaml" --json)" <<'EOF' || fail "$name: $line"
import json, re, sys
name, line, info = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
peak, planned = (float(x) for x in re.search(r"peak RSS ([0-9.]+) GiB \(planned ([0-9.]+) GiB", line).groups())
diff = peak / planned - 1
same = abs(info["memory"]["total"] / 2**30 - planned) < 0.0015
print(f"{name:24s} {planned:9.3f}G {peak:9.3f}G {100 * diff:+7.1f}%  (moet info --json: {info['memory']['total'] / 2**30:.3f}G)")
sys.exit(0 if abs(diff) <= 0.10 and same else 1)
EOF
done

echo "== moet info from a directory holding only config.json (dtype from config.json)"
mkdir -p "$work/only"; cp "$work/P/config.json" "$work/only/"
"$MOET" info "$work/only" --json > "$work/only.json"
"$PY" - "$work/only.json" "$work/P" <<EOF
import json, sys
j = json.load(open(sys.argv[1]))
for k in ("parameters", "active_parameters", "flops_per_token", "ram", "fits"):
    assert k in j, k
for k in ("weights", "trainable", "grads", "optimizer", "activations", "scratch", "total"):
    assert isinstance(j["memory"][k], (int, float)) and j["memory"][k] >= 0, k
m = j["memory"]
assert abs(sum(m[k] for k in ("weights", "trainable", "grads", "optimizer", "activations", "scratch")) - m["total"]) < 2
assert j["parameters"] > 100e6 and j["seq_len"] == 32768, j
print(f"config.json only: {j['parameters']} parameters, full fine-tune at 1 x {j['seq_len']}: {m['total'] / 2**30:.2f} GiB")
EOF

echo "== a run that does not fit is told what would"
"$MOET" info "$work/lb-false.yaml" --ram 450MiB --json > "$work/tight.json"
"$PY" - "$work/tight.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
print(f"total {j['memory']['total'] / 2**20:.0f} MiB in 450 MiB: fits {j['fits']}; suggestions: {j['suggestions']}")
assert not j["fits"] and any("activation_checkpointing: true" in s for s in j["suggestions"]), j
EOF
"$MOET" info "$work/lb-false.yaml" --ram 400MiB | grep -q "lower data.seq_len to" || fail "no seq_len suggestion"
set +e; out=$("$MOET" info "$work/nonexistent" 2>&1); rc=$?; set -e
[ $rc = 1 ] && echo "$out" | grep -q "no such file or directory" || fail "missing path: $rc $out"
echo "all OK"
