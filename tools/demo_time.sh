#!/bin/bash
# demo_time.sh CONFIG [key.path=value ...]: the expected time of training CONFIG on this machine,
# measured, not guessed: trains 4 steps of the same run (model, data, batch; eval at step 0
# when it has val data) in a temp run dir, then scales: max_steps x the median seconds of
# steps 2-4, plus one measured eval per eval (at start and every eval_every steps). Prints
# one line. The time depends on the cores (OMP_NUM_THREADS) and the CPU (AVX-512 or AVX2
# BLAS kernels), so the README gives no fixed number.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: tools/demo_time.sh CONFIG [key.path=value ...]" >&2; exit 2; }
cfg=$1; shift
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
./moet train "$cfg" "$@" --print-config > "$tmp/cfg.yaml"
has_val=$(/usr/bin/python3 -c "import sys, yaml; c = yaml.safe_load(open(sys.argv[1])); print(int(bool(c['data']['val'])))" "$tmp/cfg.yaml")
./moet train "$cfg" "$@" run.dir="$tmp/run" train.max_steps=4 train.log_every=1 train.eval_every=0 \
    train.eval_at_start=$([ "$has_val" = 1 ] && echo true || echo false) train.save_every=0 train.resume=never \
    optim.warmup_steps=0 train.keep_checkpoints=1 > "$tmp/log" 2>&1 || { cat "$tmp/log" >&2; exit 1; }
/usr/bin/python3 - "$tmp" <<'PY'
import json, os, re, statistics, sys
import yaml
tmp = sys.argv[1]
c = yaml.safe_load(open(os.path.join(tmp, "cfg.yaml")))
rows = [json.loads(l) for l in open(os.path.join(tmp, "run", "metrics.jsonl")) if '"loss"' in l]
step_s = statistics.median([(rows[i]["tokens"] - rows[i - 1]["tokens"]) / rows[i]["tokens_per_s"] for i in range(1, len(rows))])
tok_step = rows[0]["tokens"]
t = c["train"]
n_steps = t["max_steps"]
m = re.search(r"^eval step 0 .*, ([0-9.]+)s$", open(os.path.join(tmp, "log")).read(), re.M)
eval_s = float(m.group(1)) if m else 0.0
n_evals = (n_steps // t["eval_every"] if t["eval_every"] else 0) + (1 if t["eval_at_start"] else 0) if m else 0
total = n_steps * step_s + n_evals * eval_s
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "this CPU")
threads = os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count())
fmt = lambda s: "%d min %02d s" % divmod(round(s), 60) if round(s) >= 60 else f"{s:.0f} s"
print(f"expected: about {fmt(total)} of training ({n_steps} steps of {tok_step} tokens at {tok_step / step_s:,.0f} tok/s, "
      f"measured just now over 3 steps" + (f", + {n_evals} evals of {eval_s:.1f} s" if n_evals else "") +
      f"; {threads} threads on {cpu})")
PY
