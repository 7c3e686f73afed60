"""GGUF export checked in a real llama.cpp (tests/t_gguf_llama.sh runs this).

usage: compare.py MOET LLAMA_CHECK SHARED WORKDIR

For these models -- A: the golden tiny-mixtral; B: a random one of another shape
(head_dim != hidden/heads, GQA 3:1, 6 experts top-3, 3 layers, tied embeddings);
C: a small random one with the 32000-token Mistral tokenizer and its vocab padded to 32003;
D: a tiny one with the byte-level Qwen3 tokenizer and Qwen3's vocab size 151936;
Q3 / Q2 / OL: random Qwen3-MoE (per-head q/k norm, head_dim != hidden/heads, renormalised
top-3, tied), Qwen2-MoE (q/k/v bias, sigmoid-gated shared expert, raw top-2, tied) and OLMoE
(q/k norm over the whole projection, raw top-2) models with the Mistral tokenizer's vocab,
exported with llama.cpp's qwen3moe / qwen2moe / olmoe architectures; and the golden
tiny-qwen3moe and tiny-qwen2moe (with the golden Mixtral tokenizer) --
`moet export --format gguf` is loaded by llama.cpp (llama_check) and compared with moet:

  logits   every position of each sequence, llama.cpp vs `moet forward`:
           rel = norm(diff) / norm(moet) per position (the max is reported) and overall;
           F32 within 1e-4, F16 within 5e-3, BF16 within 3e-2 (llama.cpp also rounds the
           activations to the weights' type in its matmuls, so 16-bit files differ by more
           than the weight rounding). The F32 logits of A and of the golden Qwen cases are also
           checked against the golden logits_step0 within 1e-4.
           With 16-bit weights a token whose routing is a near tie (in some layer the k-th and
           (k+1)-th router logits of moet differ by less than NEAR_TIE[dtype]) may pick another expert
           in llama.cpp, a jump no tolerance should hide: a position over the bound is excused
           when its routing is such a near tie, or when an earlier position's is in a layer below
           the last (the flipped expert's output reaches later positions through the attention
           above it); they are counted and may be at most a quarter of the positions; every
           other position, and every position before the first near tie, must meet it. F32
           excuses nothing.
  tokens   llama.cpp's tokenization of sample texts (ASCII, accents, CJK, emoji, whitespace
           runs, newlines, tabs, special tokens) equals `moet tokenize`, with and without BOS;
           and llama.cpp reproduces the reference ids Hugging Face gave (tokenizer_golden.json
           for A and B, mistral-tokenizer/reference_ids.json for C and, its first 100, for
           Q3, Q2, OL (the other architectures embed the same tokenizer), qwen3-tokenizer's
           for D, where texts llama.cpp's own byte-level code is known to split otherwise --
           no NFC, combining marks of some scripts -- are counted apart and excused).
The options llama.cpp's architectures lack (dense layers, clip_qkv, ...) are refused by the
export; tests/t_families.sh checks those refusals.
Prints one line per check, OK / NOT OK, and exits 1 if any is NOT OK.
"""
import json
import os
import subprocess
import sys
import unicodedata

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import sttools  # noqa: E402

TOL = {"f32": 1e-4, "f16": 5e-3, "bf16": 3e-2}
NEAR_TIE = {"f16": 0.02, "bf16": 0.1}
TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces",
    "trailing spaces   ",
    "many     spaces   between\twords\t\ttabs",
    "line one\nline two\n\n\nthree newlines\n",
    "        eight spaces, then code:\n    if (x) {\n        return y;\n    }\n",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587 \ud55c\uad6d\uc5b4",
    "emoji \U0001F600\U0001F680 and \U0001F44D\U0001F3FD skin tone, \u2764\ufe0f",
    "numbers 1234567890 3.14159 -42",
    "punctuation!?.,;:'\"()[]{}<>@#$%^&*_+=|\\/~`",
    "<s> special tokens in the text </s>",
    "\u2581already has the meta symbol",
    " ",
    "it's, don't -- WE'LL see; I'M sure they'd've",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n</think>\n",
    "12345 1.5e10 2026-12-02 3,141,592",
]

bad = 0


def report(ok, what):
    global bad
    bad += not ok
    print(f"{'OK    ' if ok else 'NOT OK'}  {what}", flush=True)


def run(cmd, stdin=None):
    r = subprocess.run(cmd, input=stdin, capture_output=True)
    if r.returncode != 0:
        sys.exit(f"compare.py: {' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode(errors='replace').strip()}")
    return r.stdout.decode()


def export(moet, model_dir, work, name, dtype, tokenizer=None):
    out = os.path.join(work, f"{name}-{dtype}")
    run([moet, "export", model_dir, out, "--format", "gguf", "--dtype", dtype] +
        (["--tokenizer", tokenizer] if tokenizer else []))
    return os.path.join(out, f"model-{dtype}.gguf")


def moet_logits(moet, model_dir, work, name, seqs):
    """moet forward on sequences of equal length -> logits [B, T, V] and, per position, the
    smallest gap between the k-th and (k+1)-th largest router logit [B, T] over all MoE
    layers (gap) and over those below the last layer (gap_below: a routing flip there also
    reaches later positions, through the attention of the layers above)."""
    batch, out = os.path.join(work, f"{name}-batch.safetensors"), os.path.join(work, f"{name}-out.safetensors")
    sttools.write(batch, {"input_ids": np.array(seqs, dtype=np.int64)})
    run([moet, "forward", model_dir, "--batch", batch, "--out", out])
    o = sttools.read(out)
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    k, L = cfg["num_experts_per_tok"], cfg["num_hidden_layers"]
    B, T = len(seqs), len(seqs[0])
    gap, gap_below = np.full((B, T), np.inf), np.full((B, T), np.inf)
    for name in (n for n in o if n.startswith("router_logits.layer")):
        s = -np.sort(-o[name].astype(np.float64), axis=1)
        if s.shape[1] > k:
            g = (s[:, k - 1] - s[:, k]).reshape(B, T)
            gap = np.minimum(gap, g)
            if int(name[len("router_logits.layer"):]) < L - 1:
                gap_below = np.minimum(gap_below, g)
    return o["logits"], gap, gap_below


def llama_logits(check, gguf, work, seq):
    ids, out = os.path.join(work, "ids.txt"), os.path.join(work, "llama.f32")
    with open(ids, "w") as f:
        f.write(" ".join(map(str, seq)))
    T, V = map(int, run([check, gguf, "logits", ids, out]).split())
    assert T == len(seq)
    return np.fromfile(out, dtype=np.float32).reshape(T, V)


def compare_logits(what, got, ref, tol, near_tie=None):
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    if got.shape != ref.shape:
        report(False, f"{what}: llama.cpp logits {got.shape} vs {ref.shape}")
        return
    per = np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    excused = np.zeros(len(per), bool) if near_tie is None else (per > tol) & near_tie
    held = per[~excused]
    note = ""
    if excused.any():
        note = (f"; {excused.sum()} over tol with near-tie routing excused (worst {per[excused].max():.2e}), "
                f"the rest")
        overall = np.linalg.norm(got[~excused] - ref[~excused]) / np.linalg.norm(ref[~excused])
    else:
        overall = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    ok = held.max() <= tol and overall <= tol and excused.sum() * 4 <= len(per)
    report(ok, f"{what:44s} {got.shape[0]:3d} positions{note}: max rel/position {held.max():.2e}, "
               f"overall {overall:.2e}  (tol {tol:g})")


def check_model(moet, check, work, name, model_dir, seqs, dtypes, hf_logits=None, tokenizer=None):
    ref, gap, gap_below = moet_logits(moet, model_dir, work, name, seqs)
    for dt in dtypes:
        gguf = export(moet, model_dir, work, name, dt, tokenizer)
        for i, seq in enumerate(seqs):
            got = llama_logits(check, gguf, work, seq)
            near_tie = None
            if dt != "f32":  # a near tie at this position, or below the last layer at an earlier one
                upstream = np.maximum.accumulate(gap_below[i] < NEAR_TIE[dt])
                near_tie = (gap[i] < NEAR_TIE[dt]) | np.concatenate(([False], upstream[:-1]))
            compare_logits(f"{name} {dt} seq {i}: llama.cpp vs moet forward", got, ref[i], TOL[dt], near_tie)
            if dt == "f32" and hf_logits is not None and i < len(hf_logits):
                compare_logits(f"{name} {dt} seq {i}: llama.cpp vs HF golden", got, hf_logits[i], TOL[dt])
    return os.path.join(work, f"{name}-f32", "model-f32.gguf")


def llama_deviates(text):
    """Where llama.cpp's own byte-level tokenizer is known to differ from Hugging Face's
    (model D): it applies no NFC normalizer, and its regex classes split combining marks
    of some scripts (Gurmukhi, Myanmar, Bengali) differently."""
    return unicodedata.normalize("NFC", text) != text or any(unicodedata.category(c).startswith("M") for c in text)


def check_tokens(moet, check, name, tokenizer, gguf, refs, bytelevel=False):
    n_ok = 0
    # llama.cpp makes every token named "</s>" a control token (an end-of-generation
    # guess); Qwen's vocab has "</s>" as plain text, which Hugging Face does not match.
    texts = [t for t in TEXTS if not (bytelevel and "</s>" in t)]
    for text in texts:
        for flag in ([], ["--no-bos"]):
            want = run([moet, "tokenize", tokenizer] + flag, text.encode()).split()
            got = run([check, gguf, "tokenize"] + flag, text.encode()).split()
            if got == want:
                n_ok += 1
            else:
                report(False, f"{name} tokens {text!r} {flag}: llama.cpp {got} vs moet {want}")
    report(n_ok == 2 * len(texts), f"{name}: llama.cpp == moet tokenize on {n_ok}/{2 * len(texts)} sample texts (BOS and --no-bos)")
    records = b"".join(b"%d\n" % len(r["text"].encode()) + r["text"].encode() for r in refs)
    lines = run([check, gguf, "tokenize", "--records"], records).split("\n")
    wrong = [r for r, line in zip(refs, lines) if [int(x) for x in line.split()] != r["ids"]]
    known = [r for r in wrong if bytelevel and llama_deviates(r["text"])]
    for r in [r for r in wrong if r not in known][:5]:
        print(f"        {r['text']!r}: Hugging Face {r['ids']}")
    note = (f" ({len(known)} others differ where llama.cpp is known to: no NFC, combining marks; "
            f"{sum(llama_deviates(r['text']) for r in refs) - len(known)} such texts agree)") if bytelevel else ""
    report(len(lines) == len(refs) + 1 and len(wrong) == len(known),
           f"{name}: llama.cpp == Hugging Face ids on {len(refs) - len(wrong)}/{len(refs)} reference texts{note}")


def main():
    moet, check, shared, work = sys.argv[1:5]
    py = sys.executable
    golden = os.path.join(shared, "golden", "tiny-mixtral")
    gtok = os.path.join(golden, "model", "tokenizer.json")
    grefs = json.load(open(os.path.join(golden, "tokenizer_golden.json")))
    mtok = os.path.join(shared, "data", "mistral-tokenizer", "tokenizer.json")
    mrefs = json.load(open(os.path.join(shared, "data", "mistral-tokenizer", "reference_ids.json")))
    rng = np.random.default_rng(5)

    # A: golden tiny-mixtral (4 heads of 16 = hidden 64, 2 kv heads, 4 experts top-2, untied).
    g = sttools.read(os.path.join(golden, "golden.safetensors"))
    rows = [list(map(int, r)) for r in g["input_ids"][0]]
    long_seq = [1] + rng.integers(3, 512, 199).tolist()
    a = check_model(moet, check, work, "A", os.path.join(golden, "model"), rows, ["f32", "f16", "bf16"],
                    hf_logits=g["logits_step0"])
    check_model(moet, check, work, "A-long", os.path.join(golden, "model"), [long_seq], ["f32"])
    check_tokens(moet, check, "A", gtok, a, grefs)

    # B: head_dim 20 != 48/3, GQA 3 heads : 1 kv head, 6 experts top-3, 3 layers, tied, theta 1e6.
    b_dir = os.path.join(work, "model-B")
    run([py, os.path.join(HERE, "make_model.py"), b_dir, gtok, "hidden_size=48", "intermediate_size=40",
         "num_hidden_layers=3", "num_attention_heads=3", "num_key_value_heads=1", "head_dim=20",
         "num_local_experts=6", "num_experts_per_tok=3", "vocab_size=512", "rope_theta=1000000.0",
         "rms_norm_eps=1e-06", "tie_word_embeddings=true", "max_position_embeddings=128", "seed=1"])
    b_seqs = [[1] + rng.integers(3, 512, 63).tolist() for _ in range(2)]
    b = check_model(moet, check, work, "B", b_dir, b_seqs, ["f32", "f16", "bf16"])
    check_tokens(moet, check, "B", gtok, b, grefs)

    # C: the 32000-token Mistral tokenizer; the model's vocab is padded to 32003.
    c_dir = os.path.join(work, "model-C")
    run([py, os.path.join(HERE, "make_model.py"), c_dir, mtok, "hidden_size=32", "intermediate_size=32",
         "num_hidden_layers=1", "num_attention_heads=2", "num_key_value_heads=2", "num_local_experts=2",
         "num_experts_per_tok=1", "vocab_size=32003", "seed=2"])
    c_seq = [1] + rng.integers(3, 32003, 31).tolist()
    c = check_model(moet, check, work, "C", c_dir, [c_seq], ["f32"])
    check_tokens(moet, check, "C", mtok, c, mrefs)

    # D: the byte-level Qwen3 tokenizer (GGUF "gpt2", pre "qwen2"); the vocab padded to
    # Qwen3's 151936 as its config has it.
    qtok = os.path.join(shared, "data", "qwen3-tokenizer", "tokenizer.json")
    qrefs = json.load(open(os.path.join(shared, "data", "qwen3-tokenizer", "reference_ids.json")))
    d_dir = os.path.join(work, "model-D")
    run([py, os.path.join(HERE, "make_model.py"), d_dir, qtok, "hidden_size=16", "intermediate_size=16",
         "num_hidden_layers=1", "num_attention_heads=2", "num_key_value_heads=1", "num_local_experts=2",
         "num_experts_per_tok=1", "vocab_size=151936", "seed=3"])
    d_seq = rng.integers(0, 151936, 24).tolist()
    d = check_model(moet, check, work, "D", d_dir, [d_seq], ["f32"])
    check_tokens(moet, check, "D", qtok, d, qrefs, bytelevel=True)

    # The other families, each with llama.cpp's own architecture (qwen3moe, qwen2moe, olmoe:
    # NEOX RoPE, q/k rows as HF) and the Mistral tokenizer's vocab.
    fam_models = [
        # Q3: per-head q/k norm, head_dim 16 != 48/4, GQA 2:1, 6 experts top-3 renormalised,
        # tied (qwen3moe falls back to token_embd), 3 layers
        ("Q3", ["model_type=qwen3_moe", "hidden_size=48", "intermediate_size=64", "moe_intermediate_size=24",
                "num_hidden_layers=3", "num_attention_heads=4", "num_key_value_heads=2", "head_dim=16",
                "num_experts=6", "num_experts_per_tok=3", "norm_topk_prob=true", "tie_word_embeddings=true",
                "rms_norm_eps=1e-06", "seed=3"]),
        # Q2: q/k/v bias, sigmoid-gated shared expert of 40, raw top-2 of 6, GQA, tied (written
        # as output too: qwen2moe requires it)
        ("Q2", ["model_type=qwen2_moe", "hidden_size=48", "intermediate_size=64", "moe_intermediate_size=24",
                "shared_expert_intermediate_size=40", "num_attention_heads=4", "num_key_value_heads=2",
                "num_experts=6", "num_experts_per_tok=2", "norm_topk_prob=false", "tie_word_embeddings=true",
                "rope_theta=10000.0", "rms_norm_eps=1e-06", "seed=4"]),
        # OL: q/k RMSNorm over the whole projections, raw top-2 of 8
        ("OL", ["model_type=olmoe", "hidden_size=48", "intermediate_size=32", "num_attention_heads=4",
                "num_key_value_heads=4", "num_experts=8", "num_experts_per_tok=2", "norm_topk_prob=false",
                "rope_theta=10000.0", "seed=5"]),
    ]
    for name, keys in fam_models:
        d = os.path.join(work, f"model-{name}")
        run([py, os.path.join(HERE, "make_model.py"), d, mtok, "vocab_size=32000"] + keys)
        seqs = [[1] + rng.integers(3, 32000, 47).tolist() for _ in range(2)]
        f = check_model(moet, check, work, name, d, seqs, ["f32", "f16", "bf16"])
        check_tokens(moet, check, name, mtok, f, mrefs[:100])

    # The golden Qwen cases (no tokenizer of their own: the golden Mixtral one, vocab padded),
    # also against the golden logits (the float64 port of transformers).
    for case in ("tiny-qwen3moe", "tiny-qwen2moe"):
        gd = os.path.join(shared, "golden", case)
        gg = sttools.read(os.path.join(gd, "golden.safetensors"))
        rows = [list(map(int, r)) for r in gg["input_ids"][0]]
        check_model(moet, check, work, case, os.path.join(gd, "model"), rows, ["f32"],
                    hf_logits=gg["logits_step0"], tokenizer=gtok)

    print(f"llama.cpp vs moet: {'all OK' if not bad else f'{bad} NOT OK'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
