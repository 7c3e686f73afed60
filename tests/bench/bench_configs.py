"""Bench presets and the FLOP model shared by both engines of `make bench`.

No torch here: the driver (bench.sh) uses this to compute MFU for moet and for
PyTorch from tokens/s with one formula, so the two numbers are comparable.

    python3 bench_configs.py flops CONFIG TOK_PER_S PEAK_GFLOPS  -> "mfu_pct=..."
    python3 bench_configs.py formula CONFIG                      -> the formula, in words
    python3 bench_configs.py tokens CONFIG                       -> tokens per step
    python3 bench_configs.py dims CONFIG                         -> step_ceiling's arguments (exit 3: LoRA)
    python3 bench_configs.py yaml CONFIG RUN_DIR STEPS SHARD      -> moet train YAML on stdout
    python3 bench_configs.py shard CONFIG PATH BATCHES            -> random-token HDF5 shard
    python3 bench_configs.py list                                 -> param counts, FLOPs/token
"""
import json
import os
import sys

# HF config.json keys, plus the batch shape and LoRA settings of the run.
PRESETS = {
    "tiny": dict(
        arch=dict(vocab_size=4096, hidden_size=256, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4, intermediate_size=512,
                  num_local_experts=8, num_experts_per_tok=2),
        batch=8, seq=256, lora=None),
    "small": dict(
        arch=dict(vocab_size=32000, hidden_size=512, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=8, intermediate_size=1408,
                  num_local_experts=8, num_experts_per_tok=2),
        batch=4, seq=512, lora=None),
    "small-lora": dict(
        arch=dict(vocab_size=32000, hidden_size=512, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=8, intermediate_size=1408,
                  num_local_experts=8, num_experts_per_tok=2),
        batch=4, seq=512,
        lora=dict(r=16, alpha=32, targets=["q_proj", "k_proj", "v_proj", "o_proj"])),
}

ARCH_DEFAULTS = dict(rms_norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=4096,
                     router_aux_loss_coef=0.02, tie_word_embeddings=False,
                     sliding_window=None, hidden_act="silu")


def arch(name):
    """Full HF-style config dict of a preset (defaults filled, head_dim explicit)."""
    a = dict(ARCH_DEFAULTS)
    a.update(PRESETS[name]["arch"])
    a.setdefault("head_dim", a["hidden_size"] // a["num_attention_heads"])
    return a


def lora_shapes(a, lora):
    """[(in, out)] of every LoRA-wrapped projection in one layer."""
    d, hd = a["hidden_size"], a["head_dim"]
    q, kv = a["num_attention_heads"] * hd, a["num_key_value_heads"] * hd
    io = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d)}
    return [io[t] for t in lora["targets"]]


def param_counts(name):
    """Parameter counts of a preset.

    active: weights one token's forward multiplies by (q,k,v,o, router, top_k
            experts, the norms, final norm, lm_head); the embedding lookup is excluded.
    lora:   LoRA A and B weights (all active), 0 without LoRA.
    total:  every base parameter (embedding and all experts included).
    """
    a = arch(name)
    d, hd, f = a["hidden_size"], a["head_dim"], a["intermediate_size"]
    L, E, k, V = (a["num_hidden_layers"], a["num_local_experts"],
                  a["num_experts_per_tok"], a["vocab_size"])
    q, kv = a["num_attention_heads"] * hd, a["num_key_value_heads"] * hd
    attn = d * q + 2 * d * kv + q * d
    expert = 3 * d * f
    norms = 2 * d
    active = L * (attn + d * E + k * expert + norms) + d + V * d
    total = V * d + L * (attn + d * E + E * expert + norms) + d + V * d
    lora = 0
    lo = PRESETS[name]["lora"]
    if lo:
        lora = L * sum(lo["r"] * (i + o) for i, o in lora_shapes(a, lo))
    return dict(active=active, lora=lora, total=total)


def flops_per_token(name):
    """Model FLOPs per trained token (forward + backward), causal attention.

    full:  6*N + 12*L*T*d_attn/2
    LoRA:  4*N + 6*N_lora + 12*L*T*d_attn/2   (frozen base: forward 2N and input
           gradients 2N, but no weight gradients; LoRA weights get all three)
    N = active params (see param_counts), T = seq_len, d_attn = heads*head_dim.
    """
    a = arch(name)
    p = param_counts(name)
    L, T = a["num_hidden_layers"], PRESETS[name]["seq"]
    d_attn = a["num_attention_heads"] * a["head_dim"]
    attn = 12 * L * T * d_attn / 2
    if PRESETS[name]["lora"]:
        return 4 * p["active"] + 6 * p["lora"] + attn
    return 6 * p["active"] + attn


FORMULA = ("model FLOPs/token = 6*N + 12*L*T*d_attn/2 (full); "
           "4*N + 6*N_lora + 12*L*T*d_attn/2 (LoRA, base frozen); "
           "N = active params excl. embedding lookup (attn q,k,v,o + router + top_k experts "
           "+ norms + lm_head), T = seq_len, d_attn = heads*head_dim; "
           "MFU = tok/s * FLOPs/token / sgemm peak")


def mfu_pct(name, tok_per_s, peak_gflops):
    return 100.0 * tok_per_s * flops_per_token(name) / (peak_gflops * 1e9)


def moet_yaml(name, out_dir, steps, shard):
    """A `moet train` config for a preset (keys as DESIGN.md), the same optimizer
    settings as torch_bench.py."""
    p = PRESETS[name]
    a = arch(name)
    lines = [
        "run: {name: bench-%s, dir: %s, seed: 0}" % (name, out_dir),
        "model:",
        "  arch: " + json.dumps(a),
        "data: {train: [%s], seq_len: %d, shuffle: false}" % (shard, p["seq"]),
        "train: {batch_size: %d, max_steps: %d, log_every: 1}" % (p["batch"], steps),
        "optim: {lr: 1.0e-4, betas: [0.9, 0.95], eps: 1.0e-8, weight_decay: 0.1, "
        "grad_clip: 1.0}",
    ]
    if p["lora"]:
        lo = p["lora"]
        lines.append("lora: {enabled: true, r: %d, alpha: %d, targets: [%s]}"
                     % (lo["r"], lo["alpha"], ", ".join(lo["targets"])))
    return "\n".join(lines) + "\n"


def write_shard(name, path, batches):
    """Random tokens (seed 1) for `batches` batches as a moet-shard-1 HDF5 file."""
    import numpy as np
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from make_shard import write_shard
    p, a = PRESETS[name], arch(name)
    rng = np.random.default_rng(1)
    dtype = np.uint16 if a["vocab_size"] <= 65536 else np.uint32
    tokens = rng.integers(0, a["vocab_size"], (batches * p["batch"], p["seq"]), dtype=dtype)
    tmp = path + ".tmp"
    write_shard(tmp, tokens, a["vocab_size"], tokenizer_sha256="")  # random tokens: no tokenizer
    os.replace(tmp, path)


def main(argv):
    if len(argv) >= 2 and argv[0] in ("flops", "formula", "yaml", "shard", "tokens", "dims") \
            and argv[1] not in PRESETS:
        print("bench_configs: unknown config '%s' (have %s)" % (argv[1], ", ".join(PRESETS)),
              file=sys.stderr)
        return 1
    if len(argv) == 4 and argv[0] == "flops":
        print("mfu_pct=%.2f" % mfu_pct(argv[1], float(argv[2]), float(argv[3])))
        print("flops_per_token=%.6g" % flops_per_token(argv[1]))
        return 0
    if len(argv) == 2 and argv[0] == "tokens":
        print(PRESETS[argv[1]]["batch"] * PRESETS[argv[1]]["seq"])
        return 0
    if len(argv) == 2 and argv[0] == "dims":  # step_ceiling's arguments (full fine-tuning presets)
        a, p = arch(argv[1]), PRESETS[argv[1]]
        if p["lora"]:
            print("bench_configs: %s is a LoRA preset; step_ceiling models full fine-tuning" % argv[1],
                  file=sys.stderr)
            return 3
        print(" ".join(str(x) for x in (
            a["hidden_size"], a["num_hidden_layers"], a["num_attention_heads"], a["num_key_value_heads"],
            a["head_dim"], a["intermediate_size"], a["num_local_experts"], a["num_experts_per_tok"],
            a["vocab_size"], p["batch"], p["seq"])))
        return 0
    if len(argv) == 2 and argv[0] == "formula":
        print(FORMULA)
        return 0
    if len(argv) == 5 and argv[0] == "yaml":
        sys.stdout.write(moet_yaml(argv[1], argv[2], int(argv[3]), argv[4]))
        return 0
    if len(argv) == 4 and argv[0] == "shard":
        write_shard(argv[1], argv[2], int(argv[3]))
        return 0
    if len(argv) == 1 and argv[0] == "list":
        for n in PRESETS:
            p = param_counts(n)
            print("%-11s active=%.2fM lora=%.2fM total=%.2fM flops/token=%.4g"
                  % (n, p["active"] / 1e6, p["lora"] / 1e6, p["total"] / 1e6,
                     flops_per_token(n)))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
