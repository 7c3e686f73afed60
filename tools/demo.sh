#!/bin/bash
# The built-in demo (`make demo`), on a fresh Debian machine:
#   1. installs the Debian packages and builds ./moet
#   2. takes the King James Bible from Debian's bible-kjv package (public domain),
#      one document per chapter
#   3. trains a 4096-token byte-fallback BPE tokenizer on it
#   4. preps HDF5 shards (seq 256, 2% of chapters held out for validation)
#   5. trains configs/tiny.yaml (a 15.5 M-parameter MoE, 8 experts top-2) from scratch, after
#      printing the expected time from a measured tok/s (tools/demo_time.sh)
#   6. evaluates against the unigram baseline, draws the loss curve and expert load,
#      samples text, and exports the model as HF safetensors and GGUF.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/deps.sh
make -s -j2 moet
PY=/usr/bin/python3
mkdir -p demo
if [ ! -s demo/kjv.txt ]; then
    echo "== corpus: King James Bible (bible-kjv), one document per chapter"
    bible -f gen1:1-rev22:21 | awk '{ split($1, a, ":"); if (a[1] != prev && NR > 1) print ""; prev = a[1];
                                      sub(/^[^ ]+ /, ""); print }' > demo/kjv.txt.tmp
    mv demo/kjv.txt.tmp demo/kjv.txt
fi
echo "== tokenizer: 4096-token BPE"
./moet tokenizer train --vocab-size 4096 --out demo/tokenizer.json demo/kjv.txt
echo "== shards"
rm -rf demo/data
./moet prep --tokenizer demo/tokenizer.json --out demo/data --seq-len 256 --val-fraction 0.02 --seed 0 \
    --split-paragraphs demo/kjv.txt
echo "== training configs/tiny.yaml (resumes if interrupted; rm -rf runs/tiny to start over)"
tools/demo_time.sh configs/tiny.yaml "$@"   # measured here: tok/s of a few steps, scaled to the run
./moet train configs/tiny.yaml "$@"
last=$(ls -d runs/tiny/checkpoints/step_* | tail -1)
echo "== evaluation of $last"
./moet eval "$last" --data demo/data/val-*.h5 --batch-size 8
"$PY" - <<'PY'
import glob, math
import h5py, numpy as np
counts = np.zeros(4096)
for f in glob.glob("demo/data/train-*.h5"):
    with h5py.File(f) as h:
        counts += np.bincount(h["tokens"][:].ravel(), minlength=4096)[:4096]
p = (counts + 1) / (counts + 1).sum()
val = np.concatenate([h5py.File(f)["tokens"][:, 1:].ravel() for f in glob.glob("demo/data/val-*.h5")])
h = -np.log(p[val]).mean()
print(f"unigram baseline on the same val tokens: loss {h:.4f} (ppl {math.exp(h):.1f})")
PY
"$PY" tools/report.py runs/tiny
echo "== sample (greedy would repeat itself; temperature 0.8, top-p 0.95)"
./moet generate "$last" --prompt "And God said" --max-new-tokens 80 --temperature 0.8 --top-p 0.95 --seed 1
echo
echo "== export"
./moet export "$last" demo/export-hf --format hf --force
./moet export "$last" demo/export-gguf --format gguf --force
echo "demo done: run dir runs/tiny (metrics.jsonl, report.svg), exports in demo/"
