#!/bin/bash
# tests/fuzz/run.sh SECONDS TARGET...: run each fuzz target (build-fuzz/fuzz/TARGET) for
# SECONDS on its corpus (build-fuzz/corpus/TARGET, grown from the seeds in
# tests/fuzz/corpus/TARGET), niced, one at a time; findings go to build-fuzz/findings/.
# Prints one line per target (executions, coverage, corpus, findings); exits 1 if any target
# found a crash, a hang (FUZZ_TIMEOUT, 30 s: wall clock, generous because the runs are niced on
# shared machines), a leak, a sanitizer report or a broken moet rule. FUZZ_BIN: where the
# binaries are (default build-fuzz/fuzz; a copy keeps a long campaign apart from rebuilds).
set -u
cd "$(dirname "$0")/../.."
secs=$1; shift
export SHARED="${SHARED:-$(cd .. && pwd)/shared}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$PWD/tests/fuzz/lsan.supp:print_suppressions=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
export OMP_NUM_THREADS=1
mkdir -p build-fuzz/findings build-fuzz/logs
fail=0
for t in "$@"; do
    mkdir -p "build-fuzz/corpus/$t"
    log="build-fuzz/logs/$t.log"
    nice -n 19 "${FUZZ_BIN:-build-fuzz/fuzz}/$t" -max_total_time="$secs" -timeout="${FUZZ_TIMEOUT:-30}" -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="build-fuzz/findings/$t-" \
        "build-fuzz/corpus/$t" "tests/fuzz/corpus/$t" > "$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(echo "$last" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$last" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
    corp=$(echo "$last" | sed -n 's/.*corp: \([0-9]*\).*/\1/p')
    if [ $rc = 0 ]; then status=ok; else status="FINDING (exit $rc, see $log)"; fail=1; fi
    printf 'fuzz %-18s %4ss  %9s execs  cov %5s  ft %6s  corpus %5s  %s\n' "$t" "$secs" "${execs:-?}" "${cov:-?}" \
        "${ft:-?}" "${corp:-?}" "$status"
    [ $rc = 0 ] || grep -E "ERROR|moet fuzz|SUMMARY|Test unit written" "$log" | head -5 | sed 's/^/      /'
done
exit $fail
