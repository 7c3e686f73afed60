#!/bin/bash
# Tokenizer throughput (a measurement, not a test): encode / decode MB/s of a
# large English text with the Mistral tokenizer, and the time to train a 4096
# vocab on it.  Text: the King James Bible (Debian's bible-kjv: `bible`), else
# the system's license texts repeated.  Run from anywhere: tests/bench/tok_bench.sh
set -eu
cd "$(dirname "$0")/../.."
SHARED=${SHARED:-$(cd .. && pwd)/shared}
TOKJ=${1:-$SHARED/data/mistral-tokenizer/tokenizer.json}
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
echo "text: $what, $(wc -c < "$tmp/text.txt") bytes; tokenizer: $TOKJ"
CFLAGS="-std=c11 -O3 -march=native -D_GNU_SOURCE -I. $(pkg-config --cflags libcjson)"
# shellcheck disable=SC2086
cc $CFLAGS -o "$tmp/tok_bench" tests/bench/tok_bench.c build/libmoet.a \
    $(pkg-config --libs hdf5 yaml-0.1 libcjson openblas) -fopenmp -lm -lpthread
"$tmp/tok_bench" "$TOKJ" "$tmp/text.txt"
t0=$(date +%s.%N)
./moet tokenizer train --vocab-size 4096 --out "$tmp/trained.json" "$tmp/text.txt" 2> "$tmp/train.log"
t1=$(date +%s.%N)
printf "train 4096 vocab %6.2f s   (%s)\n" "$(awk "BEGIN { print $t1 - $t0 }")" "$(tail -1 "$tmp/train.log" | sed "s/^moet tokenizer: //")"
"$tmp/tok_bench" "$tmp/trained.json" "$tmp/text.txt" | sed 's/^/trained: /'
