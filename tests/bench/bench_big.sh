#!/bin/bash
# make bench-big: LoRA on a slice of a real big MoE, as stored (bf16) vs widened to fp32.
#
# The slice (tests/bench/make_slice.py, written once into BIG_DIR): 2 layers with the real
# Mixtral-8x7B shapes (hidden 4096, ffn 14336, 8 experts, vocab 32000; 6.3 GB of bf16 in two
# shards + index, Hub names), or with BIG_FAMILY=qwen3_moe the Qwen3-30B-A3B shapes (hidden
# 2048, 128 experts of 768, top-8, vocab 151936). Both runs: LoRA r 16 on q,k,v,o and every
# expert's projections, seq 1024, batch 1, activation checkpointing on; one run keeps the
# base as stored (model.base_dtype: auto: mapped bf16, widened per row block before each
# GEMM), the other widens it once (model.base_dtype: float32). Printed per run: median step
# time over the timed steps, tokens/s, model FLOP/s and its share of the sgemm peak, peak
# RSS (measured) beside the plan, and RSS minus the bf16 weight bytes; then the targets.
#
# env: BIG_DIR (/work/bigslice or build/bigslice), BIG_FAMILY (mixtral), BIG_STEPS (4: the
#      first is warm-up), OMP_NUM_THREADS (2), PY (/usr/bin/python3).
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY="${PY:-/usr/bin/python3}"
FAM="${BIG_FAMILY:-mixtral}"
DIR="${BIG_DIR:-$ROOT/build/bigslice}/$FAM"
STEPS="${BIG_STEPS:-4}"
OUT="$ROOT/build/bench-big"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
die() { echo "bench-big: $*" >&2; exit 1; }
mkdir -p "$OUT" || die "cannot create $OUT"
[ -x "$ROOT/moet" ] || die "build moet first (make)"

echo "== $(date -u +%Y-%m-%d) machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')," \
     "$(grep -o -m1 -w 'avx512f' /proc/cpuinfo || echo AVX2), $(free -g | awk '/Mem:/ {print $2}') GiB RAM," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ ! -e "$DIR/model.safetensors.index.json" ]; then
    echo "== writing the $FAM slice into $DIR (once; several GB)"
    "$PY" tests/bench/make_slice.py "$DIR" --family "$FAM" --rows 16 --seq 1024 || die "make_slice.py failed"
fi
wbytes=$("$PY" -c "import json; print(json.load(open('$DIR/model.safetensors.index.json'))['metadata']['total_size'])")

gcc -O2 -std=c11 -D_GNU_SOURCE -I. $(pkg-config --cflags openblas) -o "$OUT/sgemm_peak" tests/bench/sgemm_peak.c \
    $(pkg-config --libs openblas) -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-openmp \
    -L/usr/lib/x86_64-linux-gnu/openblas-openmp || die "cannot build sgemm_peak"
# the peak of the kernels moet runs: OpenBLAS's AVX-512 ones on an AVX-512 CPU (common/blas.h)
ct=${OPENBLAS_CORETYPE:-}
if [ "${MOET_BLAS:-}" != keep ] && grep -q ' avx512f ' /proc/cpuinfo && grep -q ' avx512bw ' /proc/cpuinfo &&
    grep -q ' avx512vl ' /proc/cpuinfo; then
    case "$ct" in [Ss]kylake[Xx]|[Cc]ooperlake|[Ss]apphire[Rr]apids) ;; *) ct=SkylakeX ;; esac
fi
peak=$(OPENBLAS_CORETYPE=$ct "$OUT/sgemm_peak" 2048 4096 | sed -n 's/^peak_gflops=//p')
echo "== sgemm peak: $peak GFLOP/s ($OMP_NUM_THREADS threads, OpenBLAS ${ct:-default} kernels)"

targets="q_proj, k_proj, v_proj, o_proj, w1, w2, w3"
[ "$FAM" = mixtral ] || targets="q_proj, k_proj, v_proj, o_proj, gate_proj, down_proj, up_proj"
for base in auto float32; do
    cat > "$OUT/$FAM-$base.yaml" <<EOF
run: {name: big-$base, dir: $OUT/run-$FAM-$base, seed: 0}
model: {init_from: $DIR, base_dtype: $base}
data: {train: [$DIR/train.h5], seq_len: 1024, shuffle: false}
train: {batch_size: 1, max_steps: $STEPS, log_every: 1, activation_checkpointing: true, resume: never}
optim: {lr: 1e-4}
lora: {enabled: true, r: 16, alpha: 32, targets: [$targets]}
EOF
    rm -rf "$OUT/run-$FAM-$base"
    echo "== LoRA, base $base"
    "$ROOT/moet" info "$OUT/$FAM-$base.yaml" --json > "$OUT/$FAM-$base.plan.json" || die "moet info failed"
    /usr/bin/time -v "$ROOT/moet" train "$OUT/$FAM-$base.yaml" > "$OUT/$FAM-$base.log" 2> "$OUT/$FAM-$base.time" ||
        { tail -5 "$OUT/$FAM-$base.log" "$OUT/$FAM-$base.time"; die "moet train ($base) failed"; }
    grep -E "^memory plan|^done" "$OUT/$FAM-$base.log" | sed 's/^/   /'
done

"$PY" - "$OUT" "$FAM" "$peak" "$wbytes" "$DIR/config.json" <<'EOF'
import json, re, statistics, sys
out, fam, peak, wbytes = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
G = 2 ** 30
rows = {}
for base in ("auto", "float32"):
    m = [json.loads(l) for l in open(f"{out}/run-{fam}-{base}/metrics.jsonl") if '"loss"' in l]
    plan = json.load(open(f"{out}/{fam}-{base}.plan.json"))
    log = open(f"{out}/{fam}-{base}.log").read()
    rss = float(re.search(r"peak RSS ([0-9.]+) GiB", log).group(1)) * G
    tps = statistics.median(x["tokens_per_s"] for x in m[1:])  # the first step warms up
    # model FLOPs of a LoRA step: the frozen base's forward and input gradients (2 x forward)
    # plus 6 per adapter weight; activation checkpointing runs the layers' forward once more
    # (not the lm_head: 2 V D of the forward's FLOPs per token), counted in "+recompute" only
    model_flops = 2 * plan["flops_per_token"] + 6 * plan["trainable_parameters"]
    cfg = json.load(open(sys.argv[5]))
    recompute = plan["flops_per_token"] - 2 * cfg["vocab_size"] * cfg["hidden_size"]
    rows[base] = dict(tps=tps, step=1024 / tps, rss=rss, planned=plan["memory"]["total"], mf=tps * model_flops / 1e9,
                      hw=tps * (model_flops + recompute) / 1e9)
print(f"\n{fam} slice, {wbytes / 1e9:.2f} GB bf16 weights; LoRA r16 q,k,v,o + experts, seq 1024, batch 1, checkpointing on")
print(f"{'base':9s} {'step s':>8s} {'tok/s':>8s} {'model GF/s':>11s} {'of peak':>8s} {'+recompute':>11s} "
      f"{'peak RSS':>9s} {'planned':>8s} {'RSS-bf16w':>10s}")
for base, r in rows.items():
    print(f"{base:9s} {r['step']:8.2f} {r['tps']:8.1f} {r['mf']:11.1f} {100 * r['mf'] / peak:7.1f}% {r['hw']:11.1f} "
          f"{r['rss'] / G:8.2f}G {r['planned'] / G:7.2f}G {(r['rss'] - wbytes) / G:9.2f}G")
ratio = rows["auto"]["step"] / rows["float32"]["step"]
over = (rows["auto"]["rss"] - wbytes) / G
planerr = max(abs(r["rss"] / r["planned"] - 1) for r in rows.values())
print(f"\ntargets: bf16 step / fp32 step = {ratio:.3f} (<= 1.15: {'met' if ratio <= 1.15 else 'NOT met'}); "
      f"bf16 peak RSS - bf16 weight bytes = {over:.2f} GiB (<= 1.5: {'met' if over <= 1.5 else 'NOT met'}); "
      f"plan vs measured peak: worst {100 * planerr:.1f}% (<= 10%: {'met' if planerr <= 0.10 else 'NOT met'})")
EOF
