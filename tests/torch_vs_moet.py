"""A second oracle for other shapes: moet forward vs the PyTorch references.

usage: torch_vs_moet.py MOET WORKDIR
The PyTorch models of tests/bench/torch_mixtral.py and torch_families.py are checked against
the golden numbers by t_torch_ref.sh; here they check moet on configurations the golden files
do not cover. Mixtral: head_dim != hidden/heads, one kv head (MQA) and 2 kv heads, 5-6 experts
with top-3, a sliding window shorter than the sequence, rope_theta/eps/aux coefficients of
their own. Qwen3-MoE, Qwen2-MoE, OLMoE: head_dim != hidden/heads, MQA and GQA, top-1 to top-4,
renormalised or raw top-k, dense layers first, in the middle and every other layer
(mlp_only_layers, decoder_sparse_step 2), shared experts smaller and larger than the dense MLP,
with and without q/k/v (and o) biases, a clip_qkv that clips (the fraction of clamped q/k/v
values is printed and must be between 5% and 95%), tied embeddings, a pad_token_id row.
All with masked labels. Logits, every MoE layer's router logits (and no dense layer's),
losses and every gradient within 1e-4 relative (norm of difference / norm of reference); both
sides are fp32, so the differences are rounding.
"""
import json
import os
import subprocess
import sys

import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
sys.path.insert(0, os.path.join(here, "bench"))
import sttools  # noqa: E402
import torch_families as tf  # noqa: E402
import torch_mixtral as tm  # noqa: E402

CASES = [
    dict(vocab_size=300, hidden_size=48, intermediate_size=40, num_hidden_layers=3, num_attention_heads=6,
         num_key_value_heads=1, head_dim=10, num_local_experts=5, num_experts_per_tok=3, rope_theta=500.0,
         rms_norm_eps=1e-6, router_aux_loss_coef=0.05, sliding_window=9, max_position_embeddings=64),
    dict(vocab_size=257, hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
         num_key_value_heads=2, head_dim=12, num_local_experts=6, num_experts_per_tok=2, rope_theta=10000.0,
         rms_norm_eps=1e-5, router_aux_loss_coef=0.02, max_position_embeddings=64),
]


FAMILY_CASES = [
    # Qwen3-MoE: MQA, head_dim 12 != 40/4, renormalised top-3 of 6, layer 0 dense, q/k/v/o
    # biases, tied embeddings, a pad row
    dict(model_type="qwen3_moe", vocab_size=300, hidden_size=40, intermediate_size=56, moe_intermediate_size=20,
         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1, head_dim=12, num_experts=6,
         num_experts_per_tok=3, norm_topk_prob=True, mlp_only_layers=[0], attention_bias=True,
         tie_word_embeddings=True, pad_token_id=0, rope_theta=1e6, rms_norm_eps=1e-6, router_aux_loss_coef=0.03,
         max_position_embeddings=64),
    # Qwen3-MoE: every other layer dense (decoder_sparse_step 2: layers 1 and 3 MoE), raw top-1 of 4
    dict(model_type="qwen3_moe", vocab_size=257, hidden_size=32, intermediate_size=24, moe_intermediate_size=16,
         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4,
         num_experts_per_tok=1, norm_topk_prob=False, decoder_sparse_step=2, rope_theta=10000.0,
         max_position_embeddings=64),
    # Qwen2-MoE: shared expert 20 next to experts of 12, q/k/v bias, renormalised top-2 of 5, the
    # middle layer dense, MQA with head_dim 16 != 48/4
    dict(model_type="qwen2_moe", vocab_size=300, hidden_size=48, intermediate_size=40, moe_intermediate_size=12,
         shared_expert_intermediate_size=20, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
         head_dim=16, num_experts=5, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1],
         qkv_bias=True, rope_theta=5000.0, router_aux_loss_coef=0.01, max_position_embeddings=64),
    # Qwen2-MoE: no q/k/v bias, a shared expert larger than the dense MLP, raw top-4 of 8, tied
    dict(model_type="qwen2_moe", vocab_size=257, hidden_size=32, intermediate_size=24, moe_intermediate_size=8,
         shared_expert_intermediate_size=36, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
         num_experts=8, num_experts_per_tok=4, norm_topk_prob=False, qkv_bias=False, tie_word_embeddings=True,
         max_position_embeddings=64),
    # OLMoE: clip_qkv that clips, renormalised top-2 of 6, GQA, q/k/v/o biases, a pad row
    dict(model_type="olmoe", vocab_size=300, hidden_size=48, intermediate_size=20, num_hidden_layers=3,
         num_attention_heads=6, num_key_value_heads=2, num_experts=6, num_experts_per_tok=2, norm_topk_prob=True,
         clip_qkv=0.6, attention_bias=True, pad_token_id=1, rope_theta=10000.0, rms_norm_eps=1e-5,
         router_aux_loss_coef=0.01, max_position_embeddings=64),
    # OLMoE: raw top-3 of 5, MHA, no clip
    dict(model_type="olmoe", vocab_size=257, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
         num_attention_heads=4, num_key_value_heads=4, num_experts=5, num_experts_per_tok=3, norm_topk_prob=False,
         max_position_embeddings=64),
]


def clipped_fraction(m, ids):
    """Share of q/k/v values OLMoE's clip_qkv clamps in m on ids (the norms' outputs, and v)."""
    c, n, tot = m.cfg.clip_qkv, [0], [0]

    def count(x):
        n[0] += (x.abs() > c).sum().item()
        tot[0] += x.numel()

    hooks = []
    for layer in m.model.layers:
        a = layer.self_attn
        hooks += [a.q_norm.register_forward_hook(lambda mod, i, o: count(o)),
                  a.k_norm.register_forward_hook(lambda mod, i, o: count(o)),
                  a.v_proj.register_forward_hook(lambda mod, i, o: count(o))]
    with torch.no_grad():
        m(ids)
    for h in hooks:
        h.remove()
    return n[0] / tot[0]


def main():
    moet, work = sys.argv[1:3]
    torch.set_num_threads(2)
    bad = 0
    for ci, cfg in enumerate(CASES + FAMILY_CASES):
        d = os.path.join(work, f"case{ci}")
        os.makedirs(d, exist_ok=True)
        family = cfg.get("model_type", "mixtral") != "mixtral"
        if family:
            full = tf.hf_config(cfg)
            m = tf.random_model(full, seed=ci)
        else:
            full = dict(cfg, model_type="mixtral", hidden_act="silu", tie_word_embeddings=False)
            m = tm.random_model(full, seed=ci)
        with torch.no_grad():  # random norms and a larger scale so every path matters
            for name, p in m.named_parameters():
                p.copy_(torch.randn_like(p) * (0.3 if "norm" not in name else 0.2) + (1.0 if "norm" in name else 0))
        sd = {k: v.detach().numpy().astype(np.float32) for k, v in m.named_parameters()}
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(full, f)
        sttools.write(os.path.join(d, "model.safetensors"), sd)
        g = torch.Generator().manual_seed(ci)
        B, T = 2, 20
        ids = torch.randint(0, cfg["vocab_size"], (B, T), generator=g)
        labels = ids.clone()
        labels[0, :5] = -100
        labels[1, 11:13] = -100
        sttools.write(os.path.join(d, "batch.safetensors"), {"input_ids": ids.numpy(), "labels": labels.numpy()})
        res = m(ids, labels)
        res["loss"].backward()
        note = ""
        if family and m.cfg.clip_qkv:
            frac = clipped_fraction(m, ids)
            note = f", clip_qkv clamps {100 * frac:.0f}% of q/k/v"
            if not 0.05 <= frac <= 0.95:
                print(f"NOT OK  case {ci}: clip_qkv clamps {100 * frac:.1f}% of q/k/v, not a test of the clip")
                bad += 1
        subprocess.run([moet, "forward", d, "--batch", os.path.join(d, "batch.safetensors"), "--out",
                        os.path.join(d, "out.safetensors"), "--grads"], check=True, stdout=subprocess.DEVNULL)
        o = sttools.read(os.path.join(d, "out.safetensors"))
        checks = [("logits", o["logits"], res["logits"].detach().numpy()),
                  ("loss", o["loss"], np.array([res["loss"].item()])),
                  ("ce_loss", o["ce_loss"], np.array([res["ce"].item()])),
                  ("aux_loss", o["aux_loss"], np.array([res["aux"].item()]))]
        if family:
            for li, rl in res["router_logits"].items():
                checks.append((f"router_logits.layer{li}", o[f"router_logits.layer{li}"], rl.detach().numpy()))
            got = sorted(int(k[len("router_logits.layer"):]) for k in o if k.startswith("router_logits.layer"))
            if got != sorted(res["router_logits"]):
                print(f"NOT OK  case {ci}: moet has router logits of layers {got}, the MoE layers are "
                      f"{sorted(res['router_logits'])}")
                bad += 1
        for name, p in m.named_parameters():
            checks.append(("grad." + name, o["grad." + name], p.grad.numpy()))
        worst, wname = 0.0, ""
        for name, got, ref in checks:
            r = sttools.rel(got, ref)
            if r > worst:
                worst, wname = r, name
            if r > 1e-4:
                print(f"NOT OK  case {ci} {name}: rel {r:.2e}")
                bad += 1
        print(f"case {ci} ({json.dumps(cfg)}): {len(checks)} quantities, worst rel {worst:.2e} ({wname}){note}")
    print("all OK" if not bad else f"{bad} NOT OK")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
