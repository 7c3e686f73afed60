#!/bin/bash
# make bench: training throughput of moet vs a PyTorch reference of the same model.
#
# For each preset (tests/bench/bench_configs.py: tiny, small, small-lora) both engines
# train fp32 with 2 threads on random tokens: warm-up steps, then timed steps. Printed:
# tokens/s, ms per step split forward / backward / optimizer (median over timed
# steps), peak RSS (ru_maxrss of the engine's own process: each preset and engine
# runs in a fresh process), MFU (model FLOPs/s over the OpenBLAS sgemm peak measured
# below, same FLOP formula for both engines; moet's over the peak read again just before
# and after its own run) and the ratio moet/PyTorch.
#
# env: BENCH_CONFIGS ("tiny small small-lora"), BENCH_OUT (build/bench),
#      BENCH_QUICK=1 (fewer steps, for a smoke run), BENCH_REUSE_TORCH=1 (keep the torch
#      results already in BENCH_OUT: moet only, for a second moet run against the same torch
#      numbers), BENCH_PTHREAD=0 (skip the pthread OpenBLAS run), PY (/usr/bin/python3),
#      BENCH_PAIRED (presets run again in paired rounds, below: "tiny"; "" for none),
#      BENCH_ROUNDS (how many: 5).
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY="${PY:-/usr/bin/python3}"
OUT="${BENCH_OUT:-build/bench}"
CONFIGS="${BENCH_CONFIGS:-tiny small small-lora}"
BLASDIR=/usr/lib/x86_64-linux-gnu/openblas-openmp
BENCH="$ROOT/tests/bench"

# The same environment for every process measured:
#  - 2 threads; the OpenMP build of OpenBLAS for torch too (torch links the system
#    libblas.so.3, which is the pthread build by default: its threads fight torch's
#    OpenMP pool and run 2-3x slower);
#  - glibc malloc keeps freed memory (no mmap per big tensor, no trimming): torch
#    allocates every activation fresh each step and otherwise pays a page fault per
#    4 KiB, several times its sgemm time on the tiny preset. (A caching allocator is
#    what one would deploy with PyTorch on CPU; moet allocates its arena once.)
export OMP_NUM_THREADS=2
export LD_LIBRARY_PATH="$BLASDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export GLIBC_TUNABLES="glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1000000000000"

steps_for() {   # CONFIG -> "WARMUP STEPS". Warm-up covers torch's heap growth: its
    # steps page-fault (see "page faults" in the log) until malloc holds its peak.
    if [ "${BENCH_QUICK:-0}" = 1 ]; then echo "1 2"; return; fi
    case $1 in
        tiny) echo "4 10" ;;
        *)    echo "3 5" ;;
    esac
}

die() { echo "bench: $*" >&2; exit 1; }

mkdir -p "$OUT" || die "cannot create $OUT"
[ -x "$PY" ] || die "$PY not found (Debian's python3 with torch)"
"$PY" -c "import torch" 2>/dev/null || die "$PY has no torch (apt install python3-torch)"

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   OMP_NUM_THREADS=$OMP_NUM_THREADS OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:--}" \
     "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
echo "   GLIBC_TUNABLES=$GLIBC_TUNABLES"
awk '$1 > 1.5 { print "   WARNING: load average " $1 " on a 2-core machine: numbers below are" \
     " slowed down by other processes" }' /proc/loadavg

# ---- sgemm peak: the MFU denominator
echo "== sgemm peak (OpenBLAS OpenMP build, fp32)"
SGEMM_PEAK="$OUT/sgemm_peak"   # by this path: the paired rounds below run with OUT set to their own folder
gcc -O2 -std=c11 -D_GNU_SOURCE -I. $(pkg-config --cflags openblas) -o "$SGEMM_PEAK" \
    "$BENCH/sgemm_peak.c" $(pkg-config --libs openblas) \
    -Wl,--enable-new-dtags -Wl,-rpath,"$BLASDIR" || die "cannot build sgemm_peak"
"$SGEMM_PEAK" 2048 4096 | tee "$OUT/sgemm.txt" | sed 's/^/   /'
MEMBW="$OUT/membw"   # memory bandwidth (STREAM triad), read beside moet's runs as the peak is
gcc -O2 -march=native -fopenmp -o "$MEMBW" "$BENCH/membw.c" || die "cannot build membw"
echo "== memory bandwidth (STREAM triad, $OMP_NUM_THREADS threads): $("$MEMBW" | sed -n 's/^membw_gbs=//p') GB/s"
PEAK=$(sed -n 's/^peak_gflops=//p' "$OUT/sgemm.txt")
[ -n "$PEAK" ] || die "sgemm_peak printed no peak"
# moet runs OpenBLAS's AVX-512 (SkylakeX) kernels on AVX-512 CPUs even when
# OPENBLAS_CORETYPE pins an AVX2 core (common/blas.h). Then both engines are measured
# on both kernel sets: torch as configured and with OPENBLAS_CORETYPE=SkylakeX, moet as it
# runs and with MOET_BLAS=keep; each ratio compares the same kernels, and moet's default
# is also compared with the faster of the two torch runs.
VARIANTS=0
PEAK512=$PEAK
case "${OPENBLAS_CORETYPE:-}" in [Ss]kylake[Xx]|[Cc]ooperlake|[Ss]apphire[Rr]apids) ;; *)
    if grep -q ' avx512f ' /proc/cpuinfo && grep -q ' avx512bw ' /proc/cpuinfo && grep -q ' avx512vl ' /proc/cpuinfo; then
        VARIANTS=1
        echo "== sgemm peak with OPENBLAS_CORETYPE=SkylakeX (the AVX-512 kernels moet selects)"
        OPENBLAS_CORETYPE=SkylakeX "$SGEMM_PEAK" 2048 4096 | tee "$OUT/sgemm512.txt" | sed 's/^/   /'
        PEAK512=$(sed -n 's/^peak_gflops=//p' "$OUT/sgemm512.txt")
    fi ;;
esac
grep -q "^blas=$BLASDIR/" "$OUT/sgemm.txt" ||
    echo "   WARNING: sgemm_peak did not load the OpenMP OpenBLAS from $BLASDIR"

# ---- which kernels run which products: the GEMM libraries against moet's own kernels,
# single-threaded, on moet's shapes (tests/bench/gemm_bench.c; the policy in model/gemm.c)
make --no-print-directory build/gemm_bench build/step_ceiling >"$OUT/gemm_bench_build.log" 2>&1 ||
    die "cannot build gemm_bench / step_ceiling: see $OUT/gemm_bench_build.log"
ct512=${OPENBLAS_CORETYPE:-}
[ $VARIANTS = 1 ] && ct512=SkylakeX
echo "== GEMM kernels per product family, as moet runs (OpenBLAS ${ct512:-as configured}; GFLOP/s, 1 thread)"
OMP_NUM_THREADS=1 OPENBLAS_CORETYPE=$ct512 build/gemm_bench 15 | tee "$OUT/gemm.txt" | sed 's/^/   /'
if [ $VARIANTS = 1 ]; then
    echo "== the same on AVX2 (MOET_ISA=avx2, OpenBLAS as configured, oneDNN and LIBXSMM held to AVX2)"
    OMP_NUM_THREADS=1 MOET_ISA=avx2 DNNL_MAX_CPU_ISA=AVX2 LIBXSMM_TARGET=hsw build/gemm_bench 15 | tee "$OUT/gemm-avx2.txt" | sed 's/^/   /'
fi
echo "== top-level products on $OMP_NUM_THREADS threads: OpenBLAS's own threads against moet's split over M (OpenBLAS ${ct512:-as configured})"
OPENBLAS_CORETYPE=$ct512 build/gemm_bench top 15 | tee "$OUT/gemm-top.txt" | sed 's/^/   /'
if [ $VARIANTS = 1 ]; then
    echo "== the same on the configured OpenBLAS kernels"
    build/gemm_bench top 15 | tee "$OUT/gemm-top-avx2.txt" | sed 's/^/   /'
fi

# ---- correctness before speed: both engines against the Hugging Face golden data
SHARED="${SHARED:-$(cd .. && pwd)/shared}"
GOLDEN="$SHARED/golden/tiny-mixtral"
echo "== correctness first: the PyTorch reference and moet against $GOLDEN"
[ -d "$GOLDEN" ] || die "no golden data at $GOLDEN (set SHARED)"
"$PY" "$BENCH/torch_ref_check.py" "$GOLDEN" >"$OUT/torch-golden.log" 2>&1 ||
    die "the PyTorch reference does not match the golden data: see $OUT/torch-golden.log"
echo "   torch reference: $(grep -c '^OK' "$OUT/torch-golden.log") quantities OK (logits, losses, every gradient, 5 AdamW steps, LoRA)"
if [ -x ./moet ]; then
    mkdir -p "$OUT/moet-golden"
    "$PY" tests/golden_forward.py ./moet "$GOLDEN" "$OUT/moet-golden" >"$OUT/moet-golden.log" 2>&1 ||
        die "moet does not match the golden data: see $OUT/moet-golden.log"
    echo "   moet: $(tail -1 "$OUT/moet-golden.log")"
fi

# ---- PyTorch reference: one process per preset
run_torch() {   # CONFIG [avx512|plain] -> $OUT/torch[-avx512|-plain]-CONFIG.result
    # plain: the issue's setup (OpenMP OpenBLAS, configured kernels, glibc's malloc defaults)
    local cfg=$1 eng=torch${2:+-$2}
    local res="$OUT/$eng-$1.result" log="$OUT/$eng-$1.log" ct=${OPENBLAS_CORETYPE:-}
    local tun=$GLIBC_TUNABLES
    read -r warm steps <<<"$(steps_for "$cfg")"
    rm -f "$res"
    [ "${2:-}" = avx512 ] && ct=SkylakeX
    [ "${2:-}" = plain ] && tun=
    echo "== $eng $cfg ($warm warm-up + $steps timed steps)"
    GLIBC_TUNABLES=$tun OPENBLAS_CORETYPE=$ct "$PY" "$BENCH/run_rss.py" "$res" "$PY" "$BENCH/torch_bench.py" "$cfg" \
        --warmup "$warm" --steps "$steps" --threads 2 >"$log" 2>&1
    sed 's/^/   /' "$log" | grep -v '^   result '
    grep -q "^blas: .*$BLASDIR/libopenblas" "$log" ||
        echo "   WARNING: torch did not load the OpenMP OpenBLAS from $BLASDIR"
    grep '^result ' "$log" | tr ' ' '\n' | grep '=' >>"$res"
}

# ---- moet: the hook for the trainer (issue 6). Fill $OUT/moet-CONFIG.result with
# tok_s=, fwd_ms=, bwd_ms=, opt_ms= lines (averages over timed steps, median if the
# trainer reports each step); run_rss.py adds peak_rss_kib= and exit=.
moet_trainer_available() {
    [ -x ./moet ] && ./moet train --help 2>&1 | grep -q -- '--profile'
}

run_moet() {    # CONFIG [keep|pthread] -> $OUT/moet[-keep|-pthread]-CONFIG.result
    # keep: OpenBLAS's configured kernels; pthread: the pthread build of OpenBLAS swapped in
    # (LD_LIBRARY_PATH wins over moet's RUNPATH) to measure what the OpenMP build buys
    # (keep also runs moet's own kernels as AVX2: the whole AVX2 path)
    local cfg=$1 eng=moet${2:+-$2}
    local res="$OUT/$eng-$1.result" log="$OUT/$eng-$1.log" keep= isa= lib=$LD_LIBRARY_PATH
    case ${2:-} in
        keep) keep=keep isa=avx2 ;;
        pthread) lib=/usr/lib/x86_64-linux-gnu/openblas-pthread ;;
    esac
    rm -f "$res"
    if ! moet_trainer_available; then
        echo "== moet $cfg"
        echo "   moet: trainer not available yet"
        return 0
    fi
    read -r warm steps <<<"$(steps_for "$cfg")"
    echo "== $eng $cfg ($warm warm-up + $steps timed steps)"
    # Random tokens in a moet-shard-1 file and a train config for the preset.
    "$PY" "$BENCH/bench_configs.py" shard "$cfg" "$OUT/tokens-$cfg.h5" $((warm + steps)) ||
        die "cannot write $OUT/tokens-$cfg.h5"
    "$PY" "$BENCH/bench_configs.py" yaml "$cfg" "$OUT/run-$cfg" $((warm + steps)) \
        "$OUT/tokens-$cfg.h5" >"$OUT/moet-$cfg.yaml" || die "cannot write the moet config"
    rm -rf "$OUT/run-$cfg"
    # the MFU denominator measured beside this run too (just before and just after, the larger
    # kept): on a shared VM the sgemm peak read at the start drifts by up to 10% over the
    # minutes the torch runs take, which would move MFU by as much with moet unchanged
    # (not for the pthread run: its MFU is no target)
    local ct=$ct512 p1='' m1=''
    [ -n "$keep" ] && ct=${OPENBLAS_CORETYPE:-}
    [ "${2:-}" != pthread ] && p1=$(peak_now "$ct") && m1=$(membw_now)
    LD_LIBRARY_PATH=$lib MOET_BLAS=$keep MOET_ISA=$isa "$PY" "$BENCH/run_rss.py" "$res" ./moet train \
        "$OUT/moet-$cfg.yaml" --profile >"$log" 2>&1
    peak_after "$res" "$ct" "$p1"
    membw_after "$res" "$m1"
    grep -E '^(compute|kernels): ' "$log" | sed 's/^/   /'
    if [ "${2:-}" = pthread ] && ! grep -q "^compute: .*pthread build" "$log"; then
        echo "   WARNING: the pthread OpenBLAS was not loaded (apt install libopenblas0-pthread); not counted"
        rm -f "$res"
    fi
    sed 's/^/   /' "$log" | tail -20
    # moet --profile prints one line per step: profile step=N fwd_ms=.. bwd_ms=.. opt_ms=.. step_ms=..
    # (fwd: the forward kernels; lm_head+loss run fused in bwd); steps <= $warm are warm-up.
    # step_ms is the step's whole wall time, so opt here = step - fwd - bwd: the optimizer
    # plus zeroing the gradients, batch fetch and bookkeeping (torch's data are pre-made).
    awk -v warm="$warm" -v tokens="$(bench_tokens "$cfg")" '
        /^profile / { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                      if (v["step"] > warm) {
                          n++; f[n] = v["fwd_ms"]; b[n] = v["bwd_ms"]
                          o[n] = v["step_ms"] - v["fwd_ms"] - v["bwd_ms"] } }
        function median(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
                                             if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                                           return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
        END { if (n == 0) exit 1
              F = median(f, n); B = median(b, n); O = median(o, n)
              printf "fwd_ms=%.1f\nbwd_ms=%.1f\nopt_ms=%.1f\nstep_ms=%.1f\ntok_s=%.1f\n",
                     F, B, O, F + B + O, tokens * 1000 / (F + B + O) }' "$log" >>"$res" ||
        echo "   moet: no 'profile step=' lines in $log"
}

run_ceiling() { # CONFIG N -> $OUT/ceiling-CONFIG.N.result (full fine-tuning presets only)
    # every product of the preset's step alone at OpenBLAS's rate, arranged as moet runs it,
    # and the AdamW pass (tests/bench/step_ceiling.c), with the sgemm peak read beside it as
    # for moet: the ceiling issue 16's MFU targets are set against. Run once before moet and
    # once after (bench_table.py keeps the faster of each time, the larger peak): one reading of
    # a few seconds lands in a slow minute of this shared VM's memory as easily as moet's run
    local cfg=$1 res="$OUT/ceiling-$1.$2.result" dims p1
    rm -f "$res"
    dims=$("$PY" "$BENCH/bench_configs.py" dims "$cfg" 2>/dev/null) || return 0
    echo "== ceiling of a $cfg step ($2 of 2): its products alone at OpenBLAS's rates (OpenBLAS ${ct512:-configured} kernels)"
    p1=$(peak_now "$ct512")
    # shellcheck disable=SC2086 # dims is a list of numbers
    OPENBLAS_CORETYPE=$ct512 build/step_ceiling $dims >"$res.tmp" 2>&1 || {
        sed 's/^/   /' "$res.tmp"; rm -f "$res.tmp"; echo "   step_ceiling failed"; return 0; }
    grep -v '=' "$res.tmp" | sed 's/^/   /'
    grep '=' "$res.tmp" >"$res"
    rm -f "$res.tmp"
    peak_after "$res" "$ct512" "$p1"
}

peak_now() {    # CORETYPE -> the sgemm peak (GFLOP/s) read now, on those kernels
    OPENBLAS_CORETYPE=$1 "$SGEMM_PEAK" 2048 4096 | sed -n 's/^peak_gflops=//p'
}

keep_larger() { # RESULT KEY BEFORE AFTER WHAT UNITS: print both readings, append the larger to
    # RESULT as KEY= (nothing when either is missing)
    echo "   $5 beside this run: $3 before, ${4:-?} after ($6)"
    [ -n "$4" ] && awk -v k="$2" -v a="$3" -v b="$4" 'BEGIN { printf "%s=%s\n", k, (a + 0 > b + 0) ? a : b }' >>"$1"
    return 0
}

peak_after() {  # RESULT CORETYPE PEAK_BEFORE: read the peak again after a run (sgemm_peak=)
    [ -n "$3" ] || return 0
    keep_larger "$1" sgemm_peak "$3" "$(peak_now "$2")" "sgemm peak" "GFLOP/s, OpenBLAS ${2:-configured} kernels"
}

membw_now() { "$MEMBW" | sed -n 's/^membw_gbs=//p'; }   # GB/s now (STREAM triad)

membw_after() { # RESULT BW_BEFORE: read the bandwidth again after a run (membw_gbs=): the step's
    # memory-bound parts, AdamW, SwiGLU, the gathers, feel this VM's slow minutes where the
    # compute-bound sgemm peak does not
    [ -n "$2" ] || return 0
    keep_larger "$1" membw_gbs "$2" "$(membw_now)" "memory bandwidth" "GB/s, STREAM triad"
}

bench_tokens() { "$PY" "$BENCH/bench_configs.py" tokens "$1"; }   # tokens per step

for cfg in $CONFIGS; do
    "$PY" "$BENCH/bench_configs.py" formula "$cfg" >/dev/null || die "unknown config $cfg"
done
for cfg in $CONFIGS; do
    if [ "${BENCH_REUSE_TORCH:-0}" != 1 ]; then
        run_torch "$cfg" plain
        run_torch "$cfg"
        [ $VARIANTS = 1 ] && run_torch "$cfg" avx512
    fi
    run_ceiling "$cfg" 1
    [ $VARIANTS = 1 ] && run_moet "$cfg" keep
    run_moet "$cfg"
    run_ceiling "$cfg" 2
done
# ---- paired rounds. Issue 16's tiny targets sit inside this shared VM's drift from one minute
# to the next (moet's tiny step moved 21% between two runs within an hour), and torch-avx512
# runs tiny at one of two speeds from one process to the next (~5,500 or ~7,100 tok/s on the
# Zen5 VM): one process per engine, minutes apart, decides a target by where each landed.
# Here the engines the targets compare run back to back in short processes, BENCH_ROUNDS
# times, the order reversed every other round (torch-plain, the fastest torch setup, moet-keep,
# moet; then moet first), moet's runs with the sgemm peak read just before and after each.
# bench_table.py prints each round's ratios and MFU and their medians (OUT/rounds/CONFIG.rN/).
run_engine() {  # ENGINE CONFIG: one engine's run by its result name (torch-avx512, moet-keep, ...)
    case $1 in
        torch) run_torch "$2" ;;
        torch-*) run_torch "$2" "${1#torch-}" ;;
        moet) run_moet "$2" ;;
        moet-*) run_moet "$2" "${1#moet-}" ;;
    esac
}
run_round() {   # CONFIG N: one round into OUT/rounds/CONFIG.rN/ (its log: round.log), one line printed
    # (OUT is local here: run_torch and run_moet, called from here, write into the round's folder)
    local cfg=$1 n=$2 OUT="$OUT/rounds/$1.r$2" e v line='' engines="torch-plain torch moet"
    [ $VARIANTS = 1 ] && engines="torch-plain torch-avx512 moet-keep moet"
    [ $((n % 2)) = 0 ] && engines=$(echo "$engines" | tr ' ' '\n' | tac | tr '\n' ' ')
    rm -rf "$OUT"
    mkdir -p "$OUT" || die "cannot create $OUT"
    for e in $engines; do run_engine "$e" "$cfg" >>"$OUT/round.log" 2>&1; done
    for e in $engines; do
        v=$(sed -n 's/^tok_s=//p' "$OUT/$e-$cfg.result" 2>/dev/null || true)
        line="$line, $e ${v:-failed (see round.log)}"
    done
    echo "   round $n: ${line#, } tok/s"
}
for cfg in ${BENCH_PAIRED-tiny}; do
    case " $CONFIGS " in *" $cfg "*) ;; *) continue ;; esac
    echo "== $cfg in ${BENCH_ROUNDS:-5} paired rounds (engines back to back in short runs, order reversed every other round)"
    for n in $(seq 1 "${BENCH_ROUNDS:-5}"); do run_round "$cfg" "$n"; done
done

# the pthread build of OpenBLAS, once (tiny, or the first preset): its threads and
# moet's OpenMP threads oversubscribe the cores
first=${CONFIGS%% *}
[ "${BENCH_PTHREAD:-1}" = 1 ] && [ -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 ] &&
    run_moet "$first" pthread

echo "== results (median step times; tok/s = batch*seq / (fwd + bwd + opt))"
"$PY" "$BENCH/bench_table.py" "$OUT" "$PEAK" "$PEAK512" $CONFIGS | tee "$OUT/table.txt"
