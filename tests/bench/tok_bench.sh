#!/bin/bash
# Tokenizer throughput (a measurement, not a test), every tokenizer in one run, side by
# side: load time (best of 3 in-process loads, and the whole `moet tokenize` process on an
# empty text, best of 3), encode MB/s of a large English text on one thread (cold: a fresh
# word cache; warm: again), as documents of 1000 lines, on 2 threads, decode MB/s; then the
# time to train a 4096 vocab on it.  Text: the King James Bible (Debian's bible-kjv:
# `bible`), else the system's license texts repeated.  Tokenizers: the Mistral (SentencePiece
# style), Qwen3 and gpt-oss (byte-level) ones of ../shared/data, or the files given.
# Run from anywhere: tests/bench/tok_bench.sh [TOKENIZER.json ...]
set -eu
cd "$(dirname "$0")/../.."
SHARED=${SHARED:-$(cd .. && pwd)/shared}
if [ $# -gt 0 ]; then toks=("$@"); else
    toks=("$SHARED/data/mistral-tokenizer/tokenizer.json" "$SHARED/data/qwen3-tokenizer/tokenizer.json"
          "$SHARED/data/gptoss-tokenizer/tokenizer.json")
fi
make -s moet build/libmoet.a
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if command -v bible > /dev/null; then
    bible gen1:1-rev22:21 > "$tmp/text.txt"
    what="King James Bible"
else
    for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14; do cat /usr/share/common-licenses/*; done > "$tmp/text.txt" 2> /dev/null
    what="license texts x14"
fi
echo "text: $what, $(wc -c < "$tmp/text.txt") bytes; $(nproc) cores; load average $(cut -d' ' -f1 /proc/loadavg)"
CFLAGS="-std=c11 -O3 -march=native -D_GNU_SOURCE -I. $(pkg-config --cflags libcjson)"
# shellcheck disable=SC2086
cc $CFLAGS -o "$tmp/tok_bench" tests/bench/tok_bench.c build/libmoet.a \
    $(pkg-config --libs hdf5 yaml-0.1 libcjson openblas libpcre2-8 libutf8proc) -fopenmp -lm -lpthread
# Wall seconds of `moet tokenize T < /dev/null` (load, encode nothing, exit), best of 3.
cli_load() {
    local best=999 t0 t1 d
    for _ in 1 2 3; do
        t0=$(date +%s.%N); ./moet tokenize "$1" < /dev/null > /dev/null; t1=$(date +%s.%N)
        d=$(awk "BEGIN { print $t1 - $t0 }"); best=$(awk "BEGIN { print ($d < $best) ? $d : $best }")
    done
    echo "$best"
}
printf "%-22s %8s %8s | %7s %7s %7s %7s %7s | %7s | %s\n" tokenizer "load ms" "CLI s" cold warm docs "2t cold" "2t warm" decode "tokens (check)"
for tk in "${toks[@]}"; do
    name=$(basename "$(dirname "$tk")")
    read -r _ load c w d c2 w2 dec ntok ok < <("$tmp/tok_bench" "$tk" "$tmp/text.txt" --table "$name")
    printf "%-22s %8s %8.2f | %7s %7s %7s %7s %7s | %7s | %s (%s)\n" "$name" "$load" "$(cli_load "$tk")" \
        "$c" "$w" "$d" "$c2" "$w2" "$dec" "$ntok" "$ok"
done
echo "(encode and decode in MB/s of text; 'ok': 2 threads give the 1-thread token count and decode gives the text back)"
t0=$(date +%s.%N)
./moet tokenizer train --vocab-size 4096 --out "$tmp/trained.json" "$tmp/text.txt" 2> "$tmp/train.log"
t1=$(date +%s.%N)
printf "train 4096 vocab %6.2f s   (%s)\n" "$(awk "BEGIN { print $t1 - $t0 }")" "$(tail -1 "$tmp/train.log" | sed "s/^moet tokenizer: //")"
