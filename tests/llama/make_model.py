"""Write a random MoE model of any family moet knows as a Hugging Face model dir, for the
GGUF and family tests.

usage: make_model.py OUT_DIR TOKENIZER.json key=value ...
Keys are config.json fields: model_type (mixtral [default], qwen3_moe, qwen2_moe, olmoe),
hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
head_dim, num_experts_per_tok, vocab_size, rope_theta, rms_norm_eps, tie_word_embeddings,
max_position_embeddings; the expert count as num_experts (written as num_local_experts for
Mixtral; num_local_experts is accepted too); and the families' own keys
moe_intermediate_size, shared_expert_intermediate_size, norm_topk_prob, decoder_sparse_step,
mlp_only_layers (Qwen), qkv_bias (Qwen2-MoE), attention_bias (Qwen3-MoE, OLMoE), clip_qkv
(OLMoE); plus seed. Weights are normal with std 1/sqrt(fan_in) (so activations neither vanish
nor blow up), the router's 3/sqrt(fan_in) (decisive routing: few near ties for 16-bit
rounding to flip), norms 1 + N(0, 0.1), biases N(0, 0.1); F32 in model.safetensors with the
family's per-expert HF names. TOKENIZER.json is copied beside them.
"""
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import sttools  # noqa: E402

DEFAULTS = dict(model_type="mixtral", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=None, num_experts=4,
                num_experts_per_tok=2, vocab_size=512, rope_theta=1e6, rms_norm_eps=1e-5,
                tie_word_embeddings=False, max_position_embeddings=256, seed=0,
                moe_intermediate_size=None, shared_expert_intermediate_size=None, norm_topk_prob=None,
                decoder_sparse_step=None, mlp_only_layers=None, qkv_bias=None, attention_bias=None,
                clip_qkv=None)
ARCH = {"mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
        "qwen2_moe": "Qwen2MoeForCausalLM", "olmoe": "OlmoeForCausalLM"}


def is_moe(c, layer):
    """Qwen's rule: a layer is MoE unless listed in mlp_only_layers, and every
    decoder_sparse_step-th layer (1-based) when the step is > 1."""
    step = c["decoder_sparse_step"] or 1
    return layer not in (c["mlp_only_layers"] or []) and (layer + 1) % step == 0


def main():
    out, tokenizer = sys.argv[1:3]
    c = dict(DEFAULTS)
    for kv in sys.argv[3:]:
        k, v = kv.split("=", 1)
        k = "num_experts" if k == "num_local_experts" else k
        if k not in c:
            sys.exit(f"make_model.py: unknown key {k}")
        c[k] = v if k == "model_type" else json.loads(v.lower() if v in ("True", "False") else v)
    fam = c["model_type"]
    if fam not in ARCH:
        sys.exit(f"make_model.py: unknown model_type {fam}")
    qwen = fam in ("qwen3_moe", "qwen2_moe")
    D, L = c["hidden_size"], c["num_hidden_layers"]
    H, KV, E, V = c["num_attention_heads"], c["num_key_value_heads"], c["num_experts"], c["vocab_size"]
    hd = c["head_dim"] or D // H
    F = c["moe_intermediate_size"] if qwen else c["intermediate_size"]
    Fd, Fs = c["intermediate_size"], c["shared_expert_intermediate_size"] or 0
    qkv_bias = c["qkv_bias"] if fam == "qwen2_moe" and c["qkv_bias"] is not None else (
        fam == "qwen2_moe" or bool(c["attention_bias"]))
    rng = np.random.default_rng(c["seed"])

    def mat(rows, cols, scale=1.0):
        return (scale * rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(n=D):
        return (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    def bias(n):
        return (0.1 * rng.standard_normal(n)).astype(np.float32)

    def mlp(prefix, f):
        w[prefix + "gate_proj.weight"] = mat(f, D)
        w[prefix + "up_proj.weight"] = mat(f, D)
        w[prefix + "down_proj.weight"] = mat(D, f)

    w = {"model.embed_tokens.weight": rng.standard_normal((V, D)).astype(np.float32)}
    for layer in range(L):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = norm()
        for name, rows in (("q", H * hd), ("k", KV * hd), ("v", KV * hd)):
            w[p + f"self_attn.{name}_proj.weight"] = mat(rows, D)
            if qkv_bias:
                w[p + f"self_attn.{name}_proj.bias"] = bias(rows)
        if fam == "qwen3_moe":
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
        if fam == "olmoe":
            w[p + "self_attn.q_norm.weight"] = norm(H * hd)
            w[p + "self_attn.k_norm.weight"] = norm(KV * hd)
        w[p + "self_attn.o_proj.weight"] = mat(D, H * hd)
        if c["attention_bias"] and fam != "qwen2_moe":
            w[p + "self_attn.o_proj.bias"] = bias(D)
        w[p + "post_attention_layernorm.weight"] = norm()
        if fam == "mixtral":
            w[p + "block_sparse_moe.gate.weight"] = mat(E, D, 3.0)
            for e in range(E):
                q = p + f"block_sparse_moe.experts.{e}."
                w[q + "w1.weight"] = mat(F, D)
                w[q + "w2.weight"] = mat(D, F)
                w[q + "w3.weight"] = mat(F, D)
        elif qwen and not is_moe(c, layer):
            mlp(p + "mlp.", Fd)
        else:
            w[p + "mlp.gate.weight"] = mat(E, D, 3.0)
            for e in range(E):
                mlp(p + f"mlp.experts.{e}.", F)
            if fam == "qwen2_moe" and Fs:
                mlp(p + "mlp.shared_expert.", Fs)
                w[p + "mlp.shared_expert_gate.weight"] = mat(1, D)
    w["model.norm.weight"] = norm()
    if not c["tie_word_embeddings"]:
        w["lm_head.weight"] = mat(V, D)

    os.makedirs(out, exist_ok=True)
    config = {"architectures": [ARCH[fam]], "model_type": fam, "hidden_act": "silu", "bos_token_id": 1,
              "eos_token_id": 2, "router_aux_loss_coef": 0.02, "initializer_range": 0.02, "dtype": "float32"}
    skip = {"seed", "head_dim", "num_experts"}
    config.update({k: v for k, v in c.items() if k not in skip and v is not None})
    config["num_local_experts" if fam == "mixtral" else "num_experts"] = E
    if fam != "olmoe":
        config["head_dim"] = hd
    if fam == "mixtral":
        config["sliding_window"] = None
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    sttools.write(os.path.join(out, "model.safetensors"), w)
    shutil.copy(tokenizer, os.path.join(out, "tokenizer.json"))


if __name__ == "__main__":
    main()
