#!/bin/bash
# make bench, data-parallel part (also `make bench-dist`): on this machine's cores, one process
# with 2 OpenMP threads against 2 MPI ranks with 1 thread each (OpenMPI, shared memory), on the
# tiny and small presets (tests/bench/bench_configs.py), random tokens, fp32, all in one run so
# the numbers are side by side. Per configuration: tok/s (median step), and for the 2-rank runs
# the gradient wait after the backward (what the overlap did not hide), the ZeRO-1 parameter
# all-gather, the small sums, and the hidden share of the gradient communication:
#   hidden = 1 - grads_wait(overlap) / grads_wait(dist.overlap: false),
# the second run reducing every bucket only after its backward, so that its wait is the whole
# communication time of the gradients.
#
# Then the model on paper (dist_model.py): step time for Mixtral-8x7B LoRA and a full fine-tune of
# the small preset on 2, 8 and 32 nodes at 25 and 100 Gbit/s, from the bytes each step sends and
# the compute rate measured here (small and small-lora, one process, 2 threads).
#
# env: DIST_BENCH_CONFIGS ("tiny small"), BENCH_OUT (build/bench), BENCH_QUICK=1 (smoke run).
set -u
cd "$(dirname "$0")/../.."
PY="${PY:-/usr/bin/python3}"
OUT="${BENCH_OUT:-build/bench}/dist"
CONFIGS="${DIST_BENCH_CONFIGS:-tiny small}"
BENCH=tests/bench
die() { echo "dist bench: $*" >&2; exit 1; }
[ -x ./moet ] || die "build ./moet first (make)"
command -v mpirun >/dev/null || die "no mpirun (tools/deps.sh installs openmpi-bin)"
mkdir -p "$OUT" || die "cannot create $OUT"
MPIRUN=(mpirun --allow-run-as-root --oversubscribe -np 2 --bind-to core)

steps_for() { # CONFIG -> "WARMUP TIMED"
    if [ "${BENCH_QUICK:-0}" = 1 ]; then echo "1 2"; return; fi
    case $1 in tiny) echo "3 10" ;; *) echo "2 5" ;; esac
}

echo "== data parallelism: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg); $(mpirun --version | head -1)"
awk '$1 > 1.5 { print "   WARNING: load average " $1 " on this machine: other processes slow these runs down" }' \
    /proc/loadavg

# run NAME CONFIG THREADS RANKS OVERRIDES...: one training run with --profile; medians of the
# timed steps into OUT/NAME-CONFIG.result
run() {
    local name=$1 cfg=$2 th=$3 ranks=$4; shift 4
    local log="$OUT/$name-$cfg.log" res="$OUT/$name-$cfg.result"
    read -r warm timed <<<"$(steps_for "$cfg")"
    rm -rf "$OUT/run-$name-$cfg" "$res"
    local cmd=(./moet train "$OUT/$cfg.yaml" run.dir="$OUT/run-$name-$cfg" train.max_steps=$((warm + timed)) --profile "$@")
    if [ "$ranks" = 1 ]; then OMP_NUM_THREADS=$th "${cmd[@]}" >"$log" 2>&1
    else OMP_NUM_THREADS=$th "${MPIRUN[@]}" -x OMP_NUM_THREADS "${cmd[@]}" >"$log" 2>&1; fi
    [ $? = 0 ] || { tail -5 "$log"; die "$name $cfg failed: see $log"; }
    awk -v warm="$warm" -v tokens="$("$PY" "$BENCH/bench_configs.py" tokens "$cfg")" '
        /^profile step=/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                          if (v["step"] > warm) { n++; s[n] = v["step_ms"]; g[n] = v["grads_wait_ms"] + 0
                                                   p[n] = v["params_ms"] + 0; y[n] = v["sync_ms"] + 0 } }
        function median(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
                                             if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                                           return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
        END { if (!n) exit 1; S = median(s, n)
              printf "step_ms=%.1f\ntok_s=%.1f\ngrads_wait_ms=%.2f\nparams_ms=%.2f\nsync_ms=%.2f\n",
                     S, tokens * 1000 / S, median(g, n), median(p, n), median(y, n) }' "$log" >"$res" ||
        die "no profile lines in $log"
    echo "   $name: $(tr '\n' ' ' <"$res")"
}

for cfg in $CONFIGS; do
    read -r warm timed <<<"$(steps_for "$cfg")"
    echo "== $cfg ($warm warm-up + $timed timed steps each)"
    "$PY" "$BENCH/bench_configs.py" shard "$cfg" "$OUT/tokens-$cfg.h5" $((warm + timed)) || die "shard"
    "$PY" "$BENCH/bench_configs.py" yaml "$cfg" "$OUT/run-$cfg" $((warm + timed)) "$OUT/tokens-$cfg.h5" \
        >"$OUT/$cfg.yaml" || die "yaml"
    run one-2t "$cfg" 2 1
    run mpi-2x1 "$cfg" 1 2
    run mpi-2x1-nooverlap "$cfg" 1 2 dist.overlap=false
    run mpi-2x1-zero0 "$cfg" 1 2 dist.zero=0
done
"$PY" - "$OUT" $CONFIGS <<'PY' | tee "$OUT/table.txt"
import sys
out, cfgs = sys.argv[1], sys.argv[2:]
def res(name, cfg):
    return {k: float(v) for k, v in (l.strip().split("=") for l in open(f"{out}/{name}-{cfg}.result"))}
print("\n| preset | 1 rank x 2 threads | 2 ranks x 1 thread, ZeRO-1 | no ZeRO | ZeRO-1, no overlap | "
      "gradient comm hidden | not hidden (share of step) | param all-gather | sums |")
print("|---|---|---|---|---|---|---|---|---|")
for c in cfgs:
    one, dp, no, z0 = (res(n, c) for n in ("one-2t", "mpi-2x1", "mpi-2x1-nooverlap", "mpi-2x1-zero0"))
    full = no["grads_wait_ms"]
    hidden = 1 - dp["grads_wait_ms"] / full if full > 0 else float("nan")
    print(f"| {c} | {one['tok_s']:,.0f} tok/s | {dp['tok_s']:,.0f} tok/s ({dp['tok_s'] / one['tok_s']:.2f}x) "
          f"| {z0['tok_s']:,.0f} | {no['tok_s']:,.0f} | {100 * hidden:.0f}% of {full:.1f} ms "
          f"| {dp['grads_wait_ms']:.1f} ms ({100 * dp['grads_wait_ms'] / dp['step_ms']:.1f}%) "
          f"| {dp['params_ms']:.1f} ms ({100 * dp['params_ms'] / dp['step_ms']:.1f}%) "
          f"| {dp['sync_ms']:.1f} ms ({100 * dp['sync_ms'] / dp['step_ms']:.1f}%) |")
print("\nmedian steps; 'sums' (router statistics per micro-batch, targets, losses, norm) also wait for the "
      "slower rank. tok/s = batch x seq / step.")
PY
if [ -e "$OUT/one-2t-small.result" ]; then
    cfg=small-lora
    read -r warm timed <<<"$(steps_for "$cfg")"
    echo "== $cfg, one process (for the model on paper)"
    "$PY" "$BENCH/bench_configs.py" shard "$cfg" "$OUT/tokens-$cfg.h5" $((warm + timed)) || die "shard"
    "$PY" "$BENCH/bench_configs.py" yaml "$cfg" "$OUT/run-$cfg" $((warm + timed)) "$OUT/tokens-$cfg.h5" \
        >"$OUT/$cfg.yaml" || die "yaml"
    run one-2t "$cfg" 2 1
    echo "== model on paper (tests/bench/dist_model.py)"
    "$PY" "$BENCH/dist_model.py" "$(sed -n 's/^tok_s=//p' "$OUT/one-2t-small.result")" \
        "$(sed -n 's/^tok_s=//p' "$OUT/one-2t-small-lora.result")" 2 | tee "$OUT/model.txt"
fi
