#!/bin/bash
# ab_bench.sh: moet against moet, interleaved, for changes to the kernels on a machine whose
# load varies (its other users): each round runs every variant once on the same preset, and
# the table gives per variant the median over rounds of its median step time, plus each
# variant's ratio to the first one taken round by round (same minute), median and range.
#
# usage: tests/bench/ab_bench.sh CONFIG ROUNDS NAME=[ENV...]BINARY ...
#   e.g. ab_bench.sh tiny 3 base=/tmp/base/moet new=./moet blas='MOET_GEMM=blas ./moet'
# Each run: 2 warm-up + 4 timed steps of tests/bench/bench_configs.py CONFIG, fp32,
# OMP_NUM_THREADS (2), moet's --profile step times, and the CPU seconds of the whole run
# (user + system: with OMP_WAIT_POLICY=passive the work done, whatever the waits for a core).
set -u
cd "$(dirname "$0")/../.."
PY="${PY:-/usr/bin/python3}"
cfg=$1 rounds=$2; shift 2
OUT="${AB_OUT:-build/ab}/$cfg"
warm=2 steps=4
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p "$OUT"
"$PY" tests/bench/bench_configs.py shard "$cfg" "$OUT/tokens.h5" $((warm + steps)) || exit 1
names=()
for v in "$@"; do names+=("${v%%=*}"); done
for r in $(seq 1 "$rounds"); do
    for v in "$@"; do
        name=${v%%=*} cmd=${v#*=}
        "$PY" tests/bench/bench_configs.py yaml "$cfg" "$OUT/run-$name" $((warm + steps)) "$OUT/tokens.h5" \
            > "$OUT/$name.yaml"
        rm -rf "$OUT/run-$name"
        /usr/bin/time -o "$OUT/$name-$r.cpu" -f "%U %S" env $cmd train "$OUT/$name.yaml" --profile \
            > "$OUT/$name-$r.log" 2>&1 || { echo "$name failed: $OUT/$name-$r.log"; exit 1; }
        awk -v warm=$warm '/^profile / { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                                          if (v["step"] > warm) print v["step_ms"] }' "$OUT/$name-$r.log" |
            sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }' \
            > "$OUT/$name-$r.ms"
        echo "round $r $name $(cat "$OUT/$name-$r.ms") ms/step, CPU $(awk '{print $1 + $2}' "$OUT/$name-$r.cpu") s" \
             "in all (load $(cut -d' ' -f1 /proc/loadavg))"
    done
done
"$PY" - "$OUT" "$rounds" "$cfg" "${names[@]}" <<'EOF'
import statistics, sys
out, rounds, cfg, names = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
ms = {n: [float(open(f"{out}/{n}-{r}.ms").read()) for r in range(1, rounds + 1)] for n in names}
cpu = {n: [sum(map(float, open(f"{out}/{n}-{r}.cpu").read().split()[:2])) for r in range(1, rounds + 1)] for n in names}
print(f"{cfg}: median over {rounds} rounds of the median step (ms); ratio = {names[0]} step / variant step, per round")
for n in names:
    rat = [a / b for a, b in zip(ms[names[0]], ms[n])]
    print(f"  {n:12s} {statistics.median(ms[n]):9.1f} ms   speed vs {names[0]}: {statistics.median(rat):.2f}x "
          f"(rounds {min(rat):.2f}-{max(rat):.2f}); CPU seconds of the run {statistics.median(cpu[n]):.1f}")
EOF
