"""A second oracle for other shapes: moet forward vs the PyTorch reference.

usage: torch_vs_moet.py MOET WORKDIR
The PyTorch Mixtral of tests/bench/torch_mixtral.py is checked against Hugging Face's
golden numbers by t_torch_ref.sh; here it checks moet on configurations the golden files
do not cover: head_dim != hidden/heads, one kv head (MQA) and 2 kv heads, 5-6 experts with
top-3, a sliding window shorter than the sequence, rope_theta/eps/aux coefficients of
their own, masked labels. Logits, losses and every gradient within 1e-4 relative (norm of
difference / norm of reference); both sides are fp32, so the differences are rounding.
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
import torch_mixtral as tm  # noqa: E402

CASES = [
    dict(vocab_size=300, hidden_size=48, intermediate_size=40, num_hidden_layers=3, num_attention_heads=6,
         num_key_value_heads=1, head_dim=10, num_local_experts=5, num_experts_per_tok=3, rope_theta=500.0,
         rms_norm_eps=1e-6, router_aux_loss_coef=0.05, sliding_window=9, max_position_embeddings=64),
    dict(vocab_size=257, hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
         num_key_value_heads=2, head_dim=12, num_local_experts=6, num_experts_per_tok=2, rope_theta=10000.0,
         rms_norm_eps=1e-5, router_aux_loss_coef=0.02, max_position_embeddings=64),
]


def main():
    moet, work = sys.argv[1:3]
    torch.set_num_threads(2)
    bad = 0
    for ci, cfg in enumerate(CASES):
        d = os.path.join(work, f"case{ci}")
        os.makedirs(d, exist_ok=True)
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
        subprocess.run([moet, "forward", d, "--batch", os.path.join(d, "batch.safetensors"), "--out",
                        os.path.join(d, "out.safetensors"), "--grads"], check=True, stdout=subprocess.DEVNULL)
        o = sttools.read(os.path.join(d, "out.safetensors"))
        checks = [("logits", o["logits"], res["logits"].detach().numpy()),
                  ("loss", o["loss"], np.array([res["loss"].item()])),
                  ("ce_loss", o["ce_loss"], np.array([res["ce"].item()])),
                  ("aux_loss", o["aux_loss"], np.array([res["aux"].item()]))]
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
        print(f"case {ci} ({json.dumps(cfg)}): {len(checks)} quantities, worst rel {worst:.2e} ({wname})")
    print("all OK" if not bad else f"{bad} NOT OK")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
