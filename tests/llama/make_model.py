"""Write a random Mixtral model as a Hugging Face model dir, for the GGUF tests.

usage: make_model.py OUT_DIR TOKENIZER.json key=value ...
Keys are config.json fields (hidden_size, intermediate_size, num_hidden_layers,
num_attention_heads, num_key_value_heads, head_dim, num_local_experts, num_experts_per_tok,
vocab_size, rope_theta, rms_norm_eps, tie_word_embeddings, max_position_embeddings) plus
seed. Weights are normal with std 1/sqrt(fan_in) (so activations neither vanish nor blow up),
the router's 3/sqrt(fan_in) (decisive routing: few near ties for 16-bit rounding to flip),
norms 1 + N(0, 0.1); F32 in model.safetensors with the per-expert
HF names. TOKENIZER.json is copied beside them.
"""
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import sttools  # noqa: E402

DEFAULTS = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=None, num_local_experts=4, num_experts_per_tok=2,
                vocab_size=512, rope_theta=1e6, rms_norm_eps=1e-5, tie_word_embeddings=False,
                max_position_embeddings=256, seed=0)


def main():
    out, tokenizer = sys.argv[1:3]
    c = dict(DEFAULTS)
    for kv in sys.argv[3:]:
        k, v = kv.split("=", 1)
        if k not in c:
            sys.exit(f"make_model.py: unknown key {k}")
        c[k] = json.loads(v.lower() if v in ("True", "False") else v)
    D, F, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    H, KV, E, V = c["num_attention_heads"], c["num_key_value_heads"], c["num_local_experts"], c["vocab_size"]
    hd = c["head_dim"] or D // H
    rng = np.random.default_rng(c.pop("seed"))

    def mat(rows, cols, scale=1.0):
        return (scale * rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm():
        return (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((V, D)).astype(np.float32)}
    for layer in range(L):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = norm()
        w[p + "self_attn.q_proj.weight"] = mat(H * hd, D)
        w[p + "self_attn.k_proj.weight"] = mat(KV * hd, D)
        w[p + "self_attn.v_proj.weight"] = mat(KV * hd, D)
        w[p + "self_attn.o_proj.weight"] = mat(D, H * hd)
        w[p + "post_attention_layernorm.weight"] = norm()
        w[p + "block_sparse_moe.gate.weight"] = mat(E, D, 3.0)
        for e in range(E):
            q = p + f"block_sparse_moe.experts.{e}."
            w[q + "w1.weight"] = mat(F, D)
            w[q + "w2.weight"] = mat(D, F)
            w[q + "w3.weight"] = mat(F, D)
    w["model.norm.weight"] = norm()
    if not c["tie_word_embeddings"]:
        w["lm_head.weight"] = mat(V, D)

    os.makedirs(out, exist_ok=True)
    config = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_act": "silu",
              "bos_token_id": 1, "eos_token_id": 2, "head_dim": hd, "sliding_window": None,
              "router_aux_loss_coef": 0.02, "initializer_range": 0.02, "dtype": "float32"}
    config.update({k: v for k, v in c.items() if k != "head_dim"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    sttools.write(os.path.join(out, "model.safetensors"), w)
    shutil.copy(tokenizer, os.path.join(out, "tokenizer.json"))


if __name__ == "__main__":
    main()
