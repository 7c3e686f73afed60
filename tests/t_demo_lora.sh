#!/bin/bash
# t_demo_lora: `make demo-lora` in its quick form (DEMO_LORA_QUICK=1, in a temp dir): a base
# trained 20 steps on Genesis, the KJV chat set, LoRA with a baseline eval at step 0, PEFT /
# merged / GGUF exports verified with sha256sum -c (the demo stops otherwise), generate --chat on
# the checkpoint and the merged export, llama.cpp on the GGUF. Checks: the expected-time line,
# the baseline and a lower val loss after training, the greedy answers of the LoRA checkpoint,
# the merged export and llama.cpp (f32 GGUF, from moet's prompt ids) are the same ids, and the
# exports carry the mistral chat template moet renders with.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
DEMO_LORA_QUICK=1 DEMO_LORA_DIR=$work "$root/tools/demo_lora.sh" > "$work/demo.log" 2>&1 ||
    { tail -30 "$work/demo.log"; echo "t_demo_lora: the demo failed"; exit 1; }
grep -E "^expected: about [0-9]+ (s|min [0-9]+ s) of training \(8 steps of 2048 tokens at [0-9,]+ tok/s" "$work/demo.log" ||
    { echo "t_demo_lora: no expected-time line"; exit 1; }
[ "$(grep -c 'sha256sum -c SHA256SUMS: OK' "$work/demo.log")" = 3 ] || { echo "t_demo_lora: exports not verified"; exit 1; }
"$MOET" tokenize "$work/tokenizer.json" --chat-jinja mistral > "$work/jinja.txt"
"$PY" - "$work" <<'PY'
import json, sys
w = sys.argv[1]
rows = [json.loads(l) for l in open(f"{w}/runs/tiny-lora/metrics.jsonl")]
val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
assert sorted(val) == [0, 4, 8], val                   # the baseline at step 0, then every 4 steps
assert val[8] < val[0] - 0.01, val                     # the adapter learned something of the Q/A format
ids = {k: open(f"{w}/answers/{k}.ids").read().split() for k in ("checkpoint", "merged", "llama")}
assert len(ids["checkpoint"]) > 0, ids
assert ids["checkpoint"] == ids["merged"] == ids["llama"], ids
jinja = open(f"{w}/jinja.txt").read()
for f in ("peft", "merged"):
    assert json.load(open(f"{w}/lora-{f}/tokenizer_config.json"))["chat_template"] == jinja, f
st = json.load(open(sorted(__import__("glob").glob(f"{w}/runs/tiny-lora/checkpoints/step_*"))[-1] + "/trainer_state.json"))
assert st["chat_template"] == "mistral", st.get("chat_template")
print(f"ok   demo-lora quick: val_loss {val[0]:.4f} at step 0 -> {val[8]:.4f} at step 8; greedy answer of the "
      f"checkpoint = merged export = llama.cpp on the GGUF ({len(ids['merged'])} ids); exports carry the mistral template")
PY
