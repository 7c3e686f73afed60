#!/bin/bash
# Run every C test binary given on the command line, then every script test
# tests/t_*.sh (each gets MOET=path to the moet binary and SHARED=../shared).
# Prints one PASS/FAIL line per test and a summary; exits 1 if anything failed.
set -u
cd "$(dirname "$0")/.."
asan=0
if [ "${1:-}" = "--asan" ]; then asan=1; shift; fi
export MOET="${MOET_BIN:-$PWD/moet}"
case "$MOET" in /*) ;; *) MOET="$PWD/$MOET" ;; esac
export SHARED="${SHARED:-$(cd .. && pwd)/shared}"
export PY=/usr/bin/python3           # Debian's python3 has numpy, h5py, torch
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
fail=0; n=0; failed=()
run_one() {
    local name=$1; shift
    local log; log=$(mktemp)
    local t0=$SECONDS
    if "$@" >"$log" 2>&1; then
        printf 'PASS  %-40s %3ss\n' "$name" $((SECONDS - t0))
    else
        printf 'FAIL  %-40s %3ss\n' "$name" $((SECONDS - t0))
        sed 's/^/      /' "$log" | tail -40
        fail=1; failed+=("$name")
    fi
    n=$((n + 1))
    rm -f "$log"
}
for bin in "$@"; do run_one "$(basename "$bin")" "$bin"; done
if [ $asan = 0 ]; then
    for t in tests/t_*.sh; do
        [ -e "$t" ] || continue
        run_one "$(basename "$t")" bash "$t"
    done
else
    for t in tests/t_*.sh; do   # script tests marked "asan: yes" also run against the ASan binary
        [ -e "$t" ] && grep -q '^# asan: yes' "$t" && run_one "asan:$(basename "$t")" bash "$t"
    done
fi
echo "----"
if [ $fail = 0 ]; then echo "all $n tests passed"; else echo "FAILED: ${failed[*]}"; fi
exit $fail
