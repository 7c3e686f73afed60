#!/bin/bash
# Every family through the CLI (Qwen3-MoE with a dense layer, Qwen2-MoE with a shared expert and
# q/k/v bias, OLMoE with clip_qkv; each with the Mistral tokenizer's vocab):
#   moet info: the family, parameters = the sum of the tensor sizes, active = all but the unused
#     experts; a LoRA YAML's adapter count = the adapters training writes
#   train: full and LoRA (q,k,v,o + gate_proj/up_proj/down_proj: every expert, the dense MLP and
#     the shared expert, + the router), expert-load metrics of the MoE layers only (moe_layers),
#     tools/report.py; resume after kill -9 bit for bit; --profile
#   eval = the run's own val loss; generate: the LoRA checkpoint's greedy ids = its merged export's
#   export: hf re-imports to identical logits (also the golden cases, whose config.json keys and
#     values it reproduces), peft keys, merged logits = the unmerged adapter's, gguf written or
#     refused with the option llama.cpp lacks named (and nothing left behind)
#   bad input: unknown model_type, mixed families (a Qwen key in a Mixtral config.json, Mixtral
#     tensor names in a Qwen model), use_sliding_window, an unimplemented rope_scaling, Mixtral
#     LoRA target names on a Qwen model: one line, exit 1, nothing written
# asan: yes
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
work=$(mktemp -d); trap 'kill -9 $pid 2>/dev/null || true; rm -rf "$work"' EXIT
pid=
cd "$work"
MT=$SHARED/data/mistral-tokenizer/tokenizer.json
V=32000
"$PY" "$here/make_shard.py" train.h5 48 32 $V 1
"$PY" "$here/make_shard.py" val.h5 6 32 $V 2
common="vocab_size=$V hidden_size=32 num_attention_heads=4 num_key_value_heads=2 seed=7"
"$PY" "$here/llama/make_model.py" qwen3_moe $MT $common model_type=qwen3_moe num_hidden_layers=3 head_dim=12 \
    intermediate_size=40 moe_intermediate_size=16 num_experts=4 num_experts_per_tok=2 norm_topk_prob=true \
    'mlp_only_layers=[1]' tie_word_embeddings=true
"$PY" "$here/llama/make_model.py" qwen2_moe $MT $common model_type=qwen2_moe num_hidden_layers=2 \
    intermediate_size=40 moe_intermediate_size=16 shared_expert_intermediate_size=24 num_experts=4 \
    num_experts_per_tok=2 norm_topk_prob=false
"$PY" "$here/llama/make_model.py" olmoe $MT $common model_type=olmoe num_hidden_layers=2 intermediate_size=16 \
    num_experts=6 num_experts_per_tok=2 norm_topk_prob=false clip_qkv=3.0

fail=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }
# expect_error WHAT PATTERN CMD...: exit 1, exactly one stderr line matching PATTERN
expect_error() {
    local what=$1 pat=$2; shift 2
    local rc=0
    "$@" >out.log 2>err.log || rc=$?
    if [ $rc = 1 ] && [ "$(wc -l < err.log)" = 1 ] && grep -qE "$pat" err.log; then ok "$what: $(cat err.log)"
    else bad "$what: rc=$rc: $(cat err.log)"; fi
}
# forward MODEL OUT: moet forward on batch.safetensors
"$PY" -c "
import sys; sys.path.insert(0, '$here'); import sttools, numpy as np
r = np.random.default_rng(3)
sttools.write('batch.safetensors', {'input_ids': np.concatenate([[[1]] * 2, r.integers(3, $V, (2, 23))], 1)})"
forward() { "$MOET" forward "$1" --batch batch.safetensors --out "$2" > /dev/null; }

for fam in qwen3_moe qwen2_moe olmoe; do
    echo "== $fam"
    # --- info: parameters = tensor sizes; active = all but the (E - k) unused experts per MoE layer
    "$MOET" info $fam/config.json > info.txt
    "$PY" - $fam "$here" <<'PY' || fail=1
import json, re, sys
fam, here = sys.argv[1:3]
sys.path.insert(0, here)
import sttools
c = json.load(open(f"{fam}/config.json"))
w = sttools.read(f"{fam}/model.safetensors")
text = open("info.txt").read()
assert text.startswith(fam + ":"), text.splitlines()[0]
total = int(re.search(r"^parameters\s+(\d+)", text, re.M).group(1))
active = int(re.search(r"^active per token\s+(\d+)", text, re.M).group(1))
E, k, D = c["num_experts"], c["num_experts_per_tok"], c["hidden_size"]
F = c.get("moe_intermediate_size", c["intermediate_size"])
moe = sum(1 for n in w if n.endswith(".mlp.gate.weight"))
assert total == sum(v.size for v in w.values()), (total, sum(v.size for v in w.values()))
assert active == total - moe * (E - k) * 3 * D * F, (active, total)
print(f"ok   info: {text.splitlines()[0]}; parameters {total} = tensor sizes, active {active} = all but "
      f"{moe} x {E - k} unused experts")
PY

    # --- train: full, with eval; metrics of the MoE layers only
    cat > $fam.yaml <<YAML
run: {name: $fam, dir: $work/$fam-full, seed: 2}
model: {init_from: $fam}
data: {train: [train.h5], val: [val.h5], seq_len: 32}
train: {batch_size: 2, max_steps: 8, eval_every: 4, save_every: 8, keep_checkpoints: 0}
optim: {lr: 2e-3, weight_decay: 0.01}
YAML
    "$MOET" train $fam.yaml --quiet
    "$PY" "$root/tools/report.py" $fam-full > report.txt
    "$PY" - $fam "$work/$fam-full" <<'PY' || fail=1
import json, sys
fam, run = sys.argv[1:3]
c = json.load(open(f"{fam}/config.json"))
L, step = c["num_hidden_layers"], c.get("decoder_sparse_step", 1)
moe = [l for l in range(L) if l not in c.get("mlp_only_layers", []) and (l + 1) % step == 0]
rows = [json.loads(x) for x in open(f"{run}/metrics.jsonl")]
train = [r for r in rows if "loss" in r]
assert [r["step"] for r in train] == list(range(1, 9))
for r in train:
    assert r["moe_layers"] == moe, (r["moe_layers"], moe)
    assert len(r["expert_load"]) == len(r["load_imbalance"]) == len(moe)
    assert all(abs(sum(x) - 1) < 2e-3 and len(x) == c["num_experts"] for x in r["expert_load"]), r["expert_load"]
    assert all(x >= 1 for x in r["load_imbalance"])
svg = open(f"{run}/report.svg").read()
labels = [f"layer {l}: expert load" for l in moe]
assert all(s in svg for s in labels) and svg.count(": expert load") == len(moe), "one heat map per MoE layer"
assert all(f"  layer {l}: " in open("report.txt").read() for l in moe)
val = [r for r in rows if "val_loss" in r]
assert len(val) == 3 and val[0]["step"] == 0 and train[-1]["ce_loss"] < train[0]["ce_loss"] + 1
print(f"ok   train: 8 steps, expert_load / load_imbalance for MoE layers {moe} of {L} only, report.svg "
      f"{len(moe)} heat maps; loss {train[0]['loss']:.3f} -> {train[-1]['loss']:.3f}")
PY
    # --- eval of the last checkpoint = the run's own eval at that step
    ck=$fam-full/checkpoints/step_00000008
    ev=$("$MOET" eval $ck --data val.h5 | awk '{print $2}')
    want=$("$PY" -c "import json; print([json.loads(x) for x in open('$fam-full/metrics.jsonl') if 'val_loss' in x][-1]['val_loss'])")
    "$PY" -c "import sys; a, b = $ev, $want; sys.exit(abs(a - b) > 1e-5 * abs(b))" && ok "eval $ev = the run's val_loss $want" ||
        bad "eval $ev vs the run's $want"

    # --- resume after kill -9: the killed + resumed run equals the uninterrupted one bit for bit
    "$MOET" train $fam.yaml run.dir=$work/$fam-killed train.save_every=2 --quiet > /dev/null 2>&1 &
    pid=$!
    for i in $(seq 1 3000); do [ -e $fam-killed/checkpoints/step_00000002/trainer_state.json ] && break; sleep 0.01; done
    kill -9 $pid; wait $pid 2>/dev/null || true
    if [ -e $fam-killed/checkpoints/step_00000008 ]; then bad "resume: the run finished before the kill"; fi
    killed_at=$(ls $fam-killed/checkpoints | grep -v tmp | tail -1)
    "$MOET" train $fam.yaml run.dir=$work/$fam-killed train.save_every=2 > resumed.log
    grep -q "resuming from" resumed.log
    if cmp -s $fam-killed/checkpoints/step_00000008/model.safetensors $ck/model.safetensors &&
       cmp -s $fam-killed/checkpoints/step_00000008/optimizer.safetensors $ck/optimizer.safetensors
    then ok "resume after kill -9 (killed after $killed_at): step 8 weights and AdamW state bitwise identical"
    else bad "resume after kill -9 differs"; fi
    expect_error "resume with another norm_topk_prob" "another model" "$MOET" train $fam.yaml run.dir=$work/$fam-full \
        train.max_steps=9 model.arch.norm_topk_prob=$([ $fam = qwen3_moe ] && echo false || echo true)

    # --- export hf of the checkpoint: identical logits after re-import
    "$MOET" export $ck $fam-hf --format hf > /dev/null
    forward $ck a.safetensors; forward $fam-hf b.safetensors
    "$PY" -c "import sys; sys.path.insert(0,'$here'); import sttools, numpy as np
sys.exit(not np.array_equal(sttools.read('a.safetensors')['logits'], sttools.read('b.safetensors')['logits']))" &&
        ok "hf export re-imports to identical logits" || bad "hf export logits differ"

    # --- LoRA on every projection (experts, dense MLP, shared expert) and the router
    cat > $fam-lora.yaml <<YAML
run: {name: $fam-lora, dir: $work/$fam-lora, seed: 2}
model: {init_from: $fam}
data: {train: [train.h5], val: [val.h5], seq_len: 32}
train: {batch_size: 2, max_steps: 4, save_every: 4}
optim: {lr: 5e-3}
lora: {enabled: true, r: 4, alpha: 8, train_router: true,
       targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
YAML
    "$MOET" train $fam-lora.yaml --quiet
    lk=$fam-lora/checkpoints/step_00000004
    "$MOET" info $fam-lora.yaml > info-lora.txt
    "$PY" - $fam $lk "$here" <<'PY' || fail=1
import json, re, sys
fam, ck, here = sys.argv[1:4]
sys.path.insert(0, here)
import sttools
c = json.load(open(f"{fam}/config.json"))
a = sttools.read(f"{ck}/adapter_model.safetensors")
lora = {k: v for k, v in a.items() if ".lora_" in k}
n = int(re.search(r"LoRA r=4 \((\d+) trainable parameters\)", open("info-lora.txt").read()).group(1))
assert n == sum(v.size for v in a.values()), (n, sum(v.size for v in a.values()))
mods = {k.rsplit(".lora_", 1)[0].split(".", 3)[3] for k in lora}   # layers.L.<module>
experts = sum(1 for m in mods if ".experts." in m)
kinds = []
if any(".mlp.shared_expert." in m for m in mods):
    kinds.append("shared expert")
dense = [l for l in c.get("mlp_only_layers", [])]
if dense:
    assert all(f"layers.{l}.mlp.{p}" in mods for l in dense for p in ("gate_proj", "up_proj", "down_proj")), mods
    kinds.append(f"dense MLP of layer {dense}")
assert experts == 3 * c["num_experts"] * (c["num_hidden_layers"] - len(dense))
cfg = json.load(open(f"{ck}/adapter_config.json"))
assert sorted(cfg["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
print(f"ok   LoRA: {len(lora)} adapter tensors on attention, {experts // 3} experts x 3"
      f"{', ' + ', '.join(kinds) if kinds else ''}; moet info counts its {n} parameters")
PY
    # peft export = the checkpoint's adapter; merged export = the unmerged adapter's logits;
    # generate: the LoRA checkpoint's greedy ids = the merged export's
    "$MOET" export $lk $fam-peft --format peft > /dev/null
    "$MOET" export $lk $fam-merged --format merged > /dev/null
    cmp -s $fam-peft/adapter_model.safetensors $lk/adapter_model.safetensors || bad "peft export changed the adapter"
    "$MOET" forward $fam --lora $lk --batch batch.safetensors --out a.safetensors > /dev/null
    forward $fam-merged b.safetensors
    r=$("$PY" -c "import sys; sys.path.insert(0,'$here'); import sttools; print(sttools.rel(sttools.read('b.safetensors')['logits'], sttools.read('a.safetensors')['logits']))")
    "$PY" -c "import sys; sys.exit($r > 1e-5)" && ok "merged export logits = the adapter's (rel $r)" || bad "merged logits rel $r"
    g1=$("$MOET" generate $lk --prompt "The quick brown fox" --temperature 0 --max-new-tokens 12 --ids 2>/dev/null)
    g2=$("$MOET" generate $fam-merged --prompt "The quick brown fox" --temperature 0 --max-new-tokens 12 --ids 2>/dev/null)
    [ -n "$g1" ] && [ "$g1" = "$g2" ] && ok "generate: LoRA checkpoint = merged export, greedy ids $g1" ||
        bad "generate: LoRA checkpoint '$g1' vs merged '$g2'"
    # gguf: written for the architecture llama.cpp has, refused naming what it lacks
    case $fam in
        qwen2_moe)
            "$MOET" export $lk $fam-gguf --format gguf > /dev/null && [ -s $fam-gguf/model-f32.gguf ] &&
                ok "gguf export (llama.cpp qwen2moe)" || bad "gguf export of $fam" ;;
        qwen3_moe) expect_error "gguf refused: dense layer" "^moet export: $lk: GGUF export: llama.cpp's qwen3moe .*1 dense MLP layer" \
            "$MOET" export $lk $fam-gguf --format gguf ;;
        olmoe) expect_error "gguf refused: clip_qkv" "^moet export: $lk: GGUF export: clip_qkv 3: llama.cpp's olmoe" \
            "$MOET" export $lk $fam-gguf --format gguf ;;
    esac
    [ $fam = qwen2_moe ] || [ ! -e $fam-gguf ] || bad "a refused gguf export left $fam-gguf"
    # --profile: the kernel table of a step adds up
    "$MOET" train $fam.yaml run.dir=$work/$fam-prof train.max_steps=3 train.eval_every=0 train.save_every=0 --profile > prof.log
    grep -qE "^PROFILE .*step_ms=[0-9.]+" prof.log && grep -qE "^  experts " prof.log && grep -qE "^  router " prof.log &&
        ! grep -qi nan prof.log && ok "--profile: $(grep ^PROFILE prof.log)" || bad "--profile: $(cat prof.log)"
done

# --- golden cases: hf export keeps names, values, config.json keys and values; identical logits
for case in tiny-qwen3moe tiny-qwen3moe_nonorm tiny-olmoe tiny-qwen2moe; do
    G=$SHARED/golden/$case
    "$MOET" export $G/model $case-hf --format hf > /dev/null
    "$PY" -c "
import sys; sys.path.insert(0, '$here'); import sttools
g = sttools.read('$G/golden.safetensors')
sttools.write('gbatch.safetensors', {'input_ids': g['input_ids'][0], 'labels': g['labels'][0]})"
    "$MOET" forward $G/model --batch gbatch.safetensors --out a.safetensors > /dev/null
    "$MOET" forward $case-hf --batch gbatch.safetensors --out b.safetensors > /dev/null
    "$PY" - $G $case-hf "$here" <<'PY' || fail=1
import json, sys
import numpy as np
g, out, here = sys.argv[1:4]
sys.path.insert(0, here)
import sttools
want, got = sttools.read_dir(g + "/model"), sttools.read_dir(out)
assert {k: v.shape for k, v in want.items()} == {k: v.shape for k, v in got.items()}, "tensor names/shapes differ"
assert all(np.array_equal(want[k], got[k]) for k in want), "values changed"
wc, gc = json.load(open(g + "/model/config.json")), json.load(open(out + "/config.json"))
assert set(gc) - set(wc) == {"rope_theta"} and set(wc) <= set(gc), (set(wc) ^ set(gc))
diff = {k: (wc[k], gc[k]) for k in wc if wc[k] != gc[k]}
assert not diff, diff
assert np.array_equal(sttools.read("a.safetensors")["logits"], sttools.read("b.safetensors")["logits"])
print(f"ok   {g.rsplit('/', 1)[1]}: hf export: tensors identical, config.json = transformers' keys and values "
      f"(+ rope_theta), identical logits")
PY
done

# --- bad input: one line, exit 1, nothing written
mkdir -p badtype mixed swin yarn names
sed 's/"model_type": "qwen3_moe"/"model_type": "deepseek_v3"/' qwen3_moe/config.json > badtype/config.json
expect_error "unsupported model_type" "model_type 'deepseek_v3' is not supported \(moet trains mixtral, qwen3_moe, qwen2_moe, olmoe\)" \
    "$MOET" info badtype/config.json
"$PY" - <<'PY'
import json
c = json.load(open("qwen3_moe/config.json"))
json.dump(dict(c, use_sliding_window=True, sliding_window=16), open("swin/config.json", "w"))
json.dump(dict(c, rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256}),
          open("yarn/config.json", "w"))
m = json.load(open("qwen3_moe/config.json"))
mix = {k: v for k, v in m.items() if k not in ("moe_intermediate_size", "norm_topk_prob", "mlp_only_layers", "head_dim")}
json.dump(dict(mix, model_type="mixtral", architectures=["MixtralForCausalLM"]), open("mixed/config.json", "w"))
PY
expect_error "a Qwen key in a Mixtral config.json" "'num_experts' is a qwen3_moe key, not one of model_type mixtral" \
    "$MOET" info mixed/config.json
expect_error "use_sliding_window" "use_sliding_window true is not supported for qwen3_moe" "$MOET" info swin/config.json
expect_error "rope_scaling yarn" "rope_scaling is not supported" "$MOET" info yarn/config.json
for d in swin yarn; do cp qwen3_moe/model.safetensors $d/; done
expect_error "use_sliding_window (train)" "use_sliding_window" "$MOET" train qwen3_moe.yaml model.init_from=$work/swin run.dir=$work/never1
expect_error "rope_scaling (forward)" "rope_scaling" "$MOET" forward yarn --batch batch.safetensors --out never2.safetensors
# Mixtral tensor names in a Qwen model dir
cp qwen2_moe/config.json names/
"$PY" - "$here" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import sttools
w = sttools.read("qwen2_moe/model.safetensors")
w = {k.replace("mlp.experts.0.gate_proj", "block_sparse_moe.experts.0.w1"): v for k, v in w.items()}
sttools.write("names/model.safetensors", w)
PY
expect_error "Mixtral-named tensor in a Qwen model" "block_sparse_moe.experts.0.w1|mlp.experts.0.gate_proj" \
    "$MOET" forward names --batch batch.safetensors --out never3.safetensors
"$PY" - "$here" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import sttools
w = sttools.read("qwen2_moe/model.safetensors")
w["model.layers.0.block_sparse_moe.experts.0.w1.weight"] = w["model.layers.0.mlp.experts.0.gate_proj.weight"]
sttools.write("names/model.safetensors", w)
PY
expect_error "a Mixtral-named tensor besides a Qwen model's own" \
    "unexpected tensor 'model.layers.0.block_sparse_moe.experts.0.w1.weight' \(not part of this qwen2_moe config\)" \
    "$MOET" forward names --batch batch.safetensors --out never3.safetensors
expect_error "Mixtral-named tensor in a Qwen model (train)" "block_sparse_moe.experts.0.w1|mlp.experts.0.gate_proj" \
    "$MOET" train qwen2_moe.yaml model.init_from=$work/names run.dir=$work/never4
expect_error "lora.targets [w1] on a Qwen model" "w1.*gate_proj" "$MOET" train qwen3_moe-lora.yaml \
    'lora.targets=[q_proj,w1]' run.dir=$work/never5
expect_error "lora.targets [w2] on OLMoE" "w2.*down_proj" "$MOET" train olmoe-lora.yaml 'lora.targets=[w2]' \
    run.dir=$work/never6
expect_error "lora.targets [gate_proj] on Mixtral" "gate_proj.*w1" "$MOET" train qwen3_moe-lora.yaml \
    model.init_from=$SHARED/golden/tiny-mixtral/model 'lora.targets=[gate_proj]' run.dir=$work/never7
for x in never1 never2.safetensors never3.safetensors never4 never5 never6 never7; do
    [ ! -e $x ] || bad "a refused command wrote $x"
done
exit $fail
