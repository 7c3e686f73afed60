"""Write an HF model directory with a real model's shapes: a few layers of Mixtral-8x7B or
Qwen3-30B-A3B (or any size given), bf16 weights N(0, 0.02) rounded to bf16 (norms 1), the
Hub's per-expert tensor names, split into shards with model.safetensors.index.json as
save_pretrained writes them, plus a shard of random tokens to train on.

usage: make_slice.py OUT_DIR [--family mixtral|qwen3_moe] [--layers N] [--shards K]
                     [--hidden D --ffn F --vocab V --heads H --kv-heads KV --head-dim HD
                      --experts E --top-k K] [--rows R --seq T]
Defaults: Mixtral-8x7B (hidden 4096, ffn 14336, 8 experts top-2, vocab 32000, 32/8 heads of
128), 2 layers, 2 shards: 6.3 GB of bf16. --family qwen3_moe defaults to Qwen3-30B-A3B
(hidden 2048, moe ffn 768, 128 experts top-8, vocab 151936, 32/4 heads of 128, q/k norms).
Tensors are generated and written one at a time (memory: the largest tensor, in fp32).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from make_shard import write_shard  # noqa: E402

PRESETS = {
    "mixtral": dict(hidden=4096, ffn=14336, vocab=32000, heads=32, kv_heads=8, head_dim=128, experts=8, top_k=2),
    "qwen3_moe": dict(hidden=2048, ffn=768, vocab=151936, heads=32, kv_heads=4, head_dim=128, experts=128, top_k=8),
}


def config(a):
    if a.family == "mixtral":
        return dict(architectures=["MixtralForCausalLM"], model_type="mixtral", vocab_size=a.vocab,
                    hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
                    num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, head_dim=a.head_dim,
                    num_local_experts=a.experts, num_experts_per_tok=a.top_k, max_position_embeddings=32768,
                    rms_norm_eps=1e-5, rope_theta=1e6, router_aux_loss_coef=0.02, sliding_window=None,
                    tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2,
                    hidden_act="silu")
    return dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", vocab_size=a.vocab,
                hidden_size=a.hidden, intermediate_size=6144, moe_intermediate_size=a.ffn,
                num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                head_dim=a.head_dim, num_experts=a.experts, num_experts_per_tok=a.top_k, norm_topk_prob=True,
                decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=40960, rms_norm_eps=1e-6,
                rope_theta=1e6, router_aux_loss_coef=0.001, attention_bias=False, use_sliding_window=False,
                tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=151643, eos_token_id=151645,
                hidden_act="silu")


def tensors(a):
    """(name, shape) in the order save_pretrained would shard them."""
    D, F, H, KV, hd, E = a.hidden, a.ffn, a.heads, a.kv_heads, a.head_dim, a.experts
    out = [("model.embed_tokens.weight", (a.vocab, D))]
    moe, names = ("block_sparse_moe", ("w1", "w2", "w3")) if a.family == "mixtral" else \
        ("mlp", ("gate_proj", "down_proj", "up_proj"))
    for l in range(a.layers):
        p = f"model.layers.{l}."
        out += [(p + "input_layernorm.weight", (D,)), (p + "post_attention_layernorm.weight", (D,)),
                (p + "self_attn.q_proj.weight", (H * hd, D)), (p + "self_attn.k_proj.weight", (KV * hd, D)),
                (p + "self_attn.v_proj.weight", (KV * hd, D)), (p + "self_attn.o_proj.weight", (D, H * hd)),
                (p + f"{moe}.gate.weight", (E, D))]
        if a.family != "mixtral":
            out += [(p + "self_attn.q_norm.weight", (hd,)), (p + "self_attn.k_norm.weight", (hd,))]
        for e in range(E):
            q = p + f"{moe}.experts.{e}."
            out += [(q + names[0] + ".weight", (F, D)), (q + names[1] + ".weight", (D, F)),
                    (q + names[2] + ".weight", (F, D))]
    out += [("model.norm.weight", (D,)), ("lm_head.weight", (a.vocab, D))]
    return out


def bf16_bytes(x):
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).tobytes()


def write_shard_file(path, items, rng):
    hdr, off = {}, 0
    for name, shape in items:
        n = int(np.prod(shape)) * 2
        hdr[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, shape in items:
            if len(shape) == 1:
                f.write(bf16_bytes(np.ones(shape, np.float32)))
                continue
            rows = shape[0]
            step = max(1, (1 << 24) // shape[1])  # 16M values at a time
            for r0 in range(0, rows, step):
                f.write(bf16_bytes(rng.standard_normal((min(step, rows - r0), shape[1]), dtype=np.float32) * 0.02))
    return off


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--family", default="mixtral", choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--shards", type=int, default=2)
    for k in ("hidden", "ffn", "vocab", "heads", "kv-heads", "head-dim", "experts", "top-k"):
        ap.add_argument("--" + k, type=int)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--seq", type=int, default=1024)
    a = ap.parse_args()
    for k, v in PRESETS[a.family].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config(a), f, indent=2)
    items = tensors(a)
    total = sum(int(np.prod(s)) * 2 for _, s in items)
    per, shards, cur, size = total / a.shards, [], [], 0
    for it in items:
        cur.append(it)
        size += int(np.prod(it[1])) * 2
        if size >= per and len(shards) < a.shards - 1:
            shards.append(cur)
            cur, size = [], 0
    shards.append(cur)
    rng = np.random.default_rng(0)
    wmap = {}
    for i, items_i in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_shard_file(os.path.join(a.out, fn), items_i, rng)
        for name, _ in items_i:
            wmap[name] = fn
        print(f"wrote {fn}: {len(items_i)} tensors", flush=True)
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=2)
    toks = rng.integers(3, min(a.vocab, 30000), size=(a.rows, a.seq))
    write_shard(os.path.join(a.out, "train.h5"), toks, a.vocab, np.ones_like(toks, dtype=bool), bos=1, eos=2)
    print(f"{a.out}: {a.family}, {a.layers} layers, {total / 1e9:.2f} GB of bf16 in {len(shards)} shards")


if __name__ == "__main__":
    main()
