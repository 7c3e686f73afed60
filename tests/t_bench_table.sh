#!/bin/bash
# make bench's table computes MFU from each engine's own result: tok/s x model FLOPs per token
# over the sgemm peak, where a moet result that carries the peak read beside its own run
# (sgemm_peak=) uses that peak instead of the one read at the start of the bench; the
# "1.5x the fastest torch would take" line is the same arithmetic. Synthetic result files,
# numbers checked to the table's rounding (0.05) against the formula (tests/bench/bench_configs.py).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
res() { printf 'tok_s=%s\nfwd_ms=100\nbwd_ms=200\nopt_ms=10\npeak_rss_kib=400000\nexit=0\n%s' "$2" "${3:-}" > "$work/$1"; }
res torch-plain-tiny.result 2000
res torch-tiny.result 3000
res torch-avx512-tiny.result 4000
res moet-keep-tiny.result 5000
res moet-tiny.result 9000 "sgemm_peak=400.0
"
out=$("$PY" "$here/bench/bench_table.py" "$work" 200 380 tiny)
echo "$out"
fpt=$("$PY" -c "import sys; sys.path.insert(0, '$here/bench'); import bench_configs as bc; print(bc.flops_per_token('tiny'))")
check() {  # WHAT GOT WANT
    "$PY" -c "import sys; sys.exit(abs(float('$2') - float('$3')) > 0.051)" || fail "$1: got $2, want $3"
    echo "ok: $1 = $2"
}
want() { "$PY" -c "print('%.2f' % ($1))"; }
# moet: its own peak (400), not the start's AVX-512 peak (380)
got=$(echo "$out" | sed -n "s/.*tiny model FLOP\/s of moet over its kernels' sgemm peak (400 GFLOP\/s, read beside) *\([0-9.]*\)%.*/\1/p")
[ -n "$got" ] || fail "no moet MFU line over the peak read beside the run"
check "moet MFU" "$got" "$(want "100 * 9000 * $fpt / 400e9")"
# moet-keep has no peak of its own: the configured kernels' peak read at the start (200)
got=$(echo "$out" | sed -n 's/.*tiny model FLOP\/s of moet-keep (AVX2) over the AVX2 sgemm peak (200 GFLOP\/s) *\([0-9.]*\)%.*/\1/p')
[ -n "$got" ] || fail "no moet-keep MFU line over the start's peak"
check "moet-keep MFU" "$got" "$(want "100 * 5000 * $fpt / 200e9")"
got=$(echo "$out" | sed -n 's/.*1.5x of torch-avx512.s 4000 tok\/s would take \([0-9.]*\)% of the sgemm peak (400 GFLOP\/s).*/\1/p')
[ -n "$got" ] || fail "no '1.5x would take' line"
check "1.5x of the fastest torch, as MFU" "$got" "$(want "100 * 1.5 * 4000 * $fpt / 400e9")"
got=$(echo "$out" | sed -n 's/.*tiny AVX-512: moet vs the fastest torch (torch-avx512) *\([0-9.]*\)x.*/\1/p')
check "moet vs the fastest torch" "$got" 2.25
