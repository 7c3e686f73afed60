"""A LoRA run on a bf16 base equals the fp32 run on the same bf16-rounded weights.

usage: bf16_check.py MOET GOLDEN_DIR WORKDIR
1. The golden model exported as bf16 (`moet export --format hf --dtype bf16`) is run by
   `moet forward --lora lora_init --grads` with the base kept as stored (--base-dtype auto:
   mapped bf16, widened per row block before each GEMM) and widened once (--base-dtype
   float32): logits, losses and every adapter gradient within 1e-6 relative, also with tiny
   widening tiles (MOET_TILE_BYTES) that split every matrix into many blocks.
2. The same against the PyTorch reference (tests/bench/torch_mixtral.py) on those bf16-rounded
   weights widened to fp32: within 1e-4 relative (two fp32 implementations).
3. `--base-dtype bfloat16` on the fp32 golden model (the big matrices converted once, in
   memory; norms and routers stay fp32) gives the numbers of an fp32 copy whose big matrices
   were rounded to bf16 here (round to nearest even, as torch): within 1e-6 relative.
"""
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

bad = 0


def compare(label, got, ref, tol):
    global bad
    worst, wname = 0.0, ""
    for k in ref:
        if k not in got:
            print(f"NOT OK  {label}: {k} missing")
            bad += 1
            continue
        r = sttools.rel(got[k], ref[k])
        if r > worst:
            worst, wname = r, k
    ok = worst <= tol
    bad += not ok
    print(f"{'OK    ' if ok else 'NOT OK'}  {label}: {len(ref)} quantities, worst rel {worst:.2e} ({wname}), "
          f"tolerance {tol:g}")


def forward(moet, model, lora, batch, out, base, tile=None):
    env = dict(os.environ)
    if tile:
        env["MOET_TILE_BYTES"] = str(tile)
    subprocess.run([moet, "forward", model, "--lora", lora, "--batch", batch, "--out", out, "--grads",
                    "--base-dtype", base], check=True, env=env, stdout=subprocess.DEVNULL)
    return sttools.read(out)


def main():
    moet, gdir, work = sys.argv[1:4]
    torch.set_num_threads(2)
    bf16 = os.path.join(work, "bf16")
    subprocess.run([moet, "export", os.path.join(gdir, "model"), bf16, "--format", "hf", "--dtype", "bf16"],
                   check=True, stdout=subprocess.DEVNULL)
    g = sttools.read(os.path.join(gdir, "golden.safetensors"))
    batch = os.path.join(work, "b0.safetensors")
    sttools.write(batch, {"input_ids": g["input_ids"][0], "labels": g["labels"][0]})
    lora = os.path.join(gdir, "lora_init")
    keys = lambda o: {k: v for k, v in o.items() if k.startswith(("grad.", "logits", "loss", "ce_loss", "aux_loss"))}

    ref32 = keys(forward(moet, bf16, lora, batch, os.path.join(work, "f32.safetensors"), "float32"))
    got = keys(forward(moet, bf16, lora, batch, os.path.join(work, "auto.safetensors"), "auto"))
    compare("bf16 store vs fp32 store of the same bf16 weights", got, ref32, 1e-6)
    got = keys(forward(moet, bf16, lora, batch, os.path.join(work, "tiles.safetensors"), "auto", tile=4096))
    compare("the same with 4 KiB widening tiles (many blocks per matrix)", got, ref32, 1e-6)
    rounded = os.path.join(work, "rounded")
    os.makedirs(rounded)
    w = sttools.read_dir(os.path.join(gdir, "model"))
    for k, v in w.items():  # what model.base_dtype: bfloat16 rounds: the 2-D matrices but the router
        if v.ndim == 2 and not k.endswith(".gate.weight"):
            u = v.astype(np.float32).view(np.uint32).astype(np.uint64)
            w[k] = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    sttools.write(os.path.join(rounded, "model.safetensors"), w)
    with open(os.path.join(gdir, "model", "config.json")) as f, open(os.path.join(rounded, "config.json"), "w") as o:
        o.write(f.read())
    ref_r = keys(forward(moet, rounded, lora, batch, os.path.join(work, "r32.safetensors"), "float32"))
    got = keys(forward(moet, os.path.join(gdir, "model"), lora, batch, os.path.join(work, "conv.safetensors"),
                       "bfloat16"))
    compare("fp32 golden converted to bf16 in memory vs its matrices rounded to bf16", got, ref_r, 1e-6)

    # the PyTorch reference on the bf16-rounded weights (widened to fp32)
    def torch_ref(model_dir):
        m = tm.load_hf_dir(model_dir)
        ad = tm.load_peft_adapter(m, lora)
        ids = torch.from_numpy(g["input_ids"][0].astype(np.int64))
        labels = torch.from_numpy(g["labels"][0].astype(np.int64))
        res = m(ids, labels)
        res["loss"].backward()
        ref = {"logits": res["logits"].detach().numpy(), "loss": np.array([res["loss"].item()]),
               "ce_loss": np.array([res["ce"].item()]), "aux_loss": np.array([res["aux"].item()])}
        for name, p in ad.items():
            ref["grad." + name] = p.grad.numpy()
        return ref
    compare("bf16 store vs the PyTorch reference on the bf16 export", keys(sttools.read(os.path.join(work, "auto.safetensors"))),
            torch_ref(bf16), 1e-4)
    compare("model.base_dtype bfloat16 vs the PyTorch reference on the bf16-rounded matrices", got,
            torch_ref(rounded), 1e-4)
    print("all OK" if not bad else f"{bad} NOT OK")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
