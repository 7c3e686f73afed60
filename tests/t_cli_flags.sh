#!/bin/bash
# asan: yes
# Number flags of every command are parsed strictly: trailing junk, out-of-range, NaN/inf and
# negative values are a usage error (exit 2) with one line naming the flag, never a silent
# default or a wrapped-around value.
set -uo pipefail
cd "$(dirname "$0")/.."
fail=0
while IFS='|' read -r args want; do
    [ -z "$args" ] && continue
    # shellcheck disable=SC2086
    "$MOET" $args >/dev/null 2>err.$$; rc=$?
    if [ $rc = 2 ] && [ "$(wc -l < err.$$)" = 1 ] && grep -qF -- "$want" err.$$; then
        echo "ok   moet $args: $(cat err.$$)"
    else
        echo "FAIL moet $args: rc=$rc: $(cat err.$$)"; fail=1
    fi
done <<'CASES'
eval M --data D --batch-size 3x|--batch-size needs an integer >= 1, not '3x'
eval M --data D --batch-size 0|--batch-size needs an integer >= 1
eval M --data D --batch-size 99999999999|--batch-size needs an integer >= 1, not '99999999999'
eval M --data D --max-batches 2junk|--max-batches needs an integer >= 0
info configs/tiny.yaml --batch 0|--batch needs an integer in [1, 16777216], not '0'
info configs/tiny.yaml --seq-len 2147483647|--seq-len needs an integer in [1, 16777216]
forward M --batch B --out O --clip-grad-norm nan|--clip-grad-norm needs a number >= 0, not 'nan'
forward M --batch B --out O --z-loss -5|--z-loss needs a number >= 0, not '-5'
generate M --prompt hi --seed -1|--seed needs a number in [0, 2^64), not '-1'
generate M --prompt hi --seed 1e24|--seed needs a number in [0, 2^64), not '1e24'
generate M --prompt hi --top-p 2|top-p must be in (0, 1]
generate M --prompt hi --temperature -1|temperature must be >= 0
generate M --prompt hi --max-new-tokens 5x|--max-new-tokens needs a number, not '5x'
prep --tokenizer T --out O --seq-len 1 F|--seq-len wants an integer in [2, 16777216]
prep --tokenizer T --out O --threads 100000 F|--threads wants an integer in [1, 1024]
export M O --format hf --max-shard-size nanGB|--max-shard-size 'nanGB' is not a size
export M O --format hf --max-shard-size infGB|--max-shard-size 'infGB' is not a size
tokenizer train --vocab-size 12x --out O F|12x
CASES
# what a command echoes back from its arguments is quoted: ESC, controls, invalid UTF-8 as \xHH
while IFS='|' read -r cmd arg want; do
    "$MOET" $cmd "$(printf -- "$arg")" >/dev/null 2>err.$$; rc=$?
    if [ $rc -ge 1 ] && grep -qF -- "$want" err.$$ && ! grep -q $'[\x01-\x1f\x7f]' err.$$; then
        echo "ok   moet $cmd <$arg>: $(cat err.$$)"
    else
        echo "FAIL moet $cmd <$arg>: rc=$rc: $(cat -v err.$$)"; fail=1
    fi
done <<'CASES'
|fo\033[31mo|unknown command 'fo\x1B[31mo'
eval M --data D --batch-size|3\001|not '3\x01'
train cfg.yaml|a\001b|'a\x01b' is not a key.path=value override
export M O --format|h\377f|--format must be hf, peft, merged or gguf, not 'h\xFFf'
generate M --prompt hi|--bo\033gus|unknown option or missing value '--bo\x1Bgus'
CASES
rm -f err.$$
exit $fail
