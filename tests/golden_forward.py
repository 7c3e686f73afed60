"""Golden test of `moet forward` against Hugging Face transformers' numbers.

usage: golden_forward.py MOET GOLDEN_DIR WORKDIR
Runs `moet forward MODEL --grads` on batch 0 of golden.safetensors and checks logits,
loss / ce / aux, router logits, the gradient norm and every gradient to 1e-4 relative
(norm of difference / norm of reference). Prints one line per tensor, OK / NOT OK.

The reference's grad.* tensors of tiny-mixtral are stored AFTER global-norm clipping
(their global norm is 1.0 = meta.json clip_grad_norm, while step_stats' grad_norm_preclip
is 2.2186), although its README says "before clipping". moet forward writes the raw
gradient (what loss.backward() gives) and grad_norm; the test asks moet for clipped
gradients (--clip-grad-norm, torch's formula) exactly when the reference's own norm shows
it was clipped, and checks grad_norm against grad_norm_preclip either way.
"""
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import sttools  # noqa: E402

TOL = 1e-4


def main():
    moet, gdir, work = sys.argv[1:4]
    g = sttools.read(os.path.join(gdir, "golden.safetensors"))
    batch = os.path.join(work, "batch0.safetensors")
    out = os.path.join(work, "out0.safetensors")
    sttools.write(batch, {"input_ids": g["input_ids"][0], "labels": g["labels"][0]})
    stats = g["step_stats"][0]  # loss_total, loss_ce, loss_aux, grad_norm_preclip, ...
    clip = json.load(open(os.path.join(gdir, "meta.json"))).get("clip_grad_norm", 0)
    ref_norm = np.sqrt(sum((v.astype(np.float64) ** 2).sum() for k, v in g.items() if k.startswith("grad.")))
    cmd = [moet, "forward", os.path.join(gdir, "model"), "--batch", batch, "--out", out, "--grads"]
    if clip and abs(ref_norm - clip) < 1e-3 * clip < abs(stats[3] - clip):
        print(f"reference gradients are clipped (global norm {ref_norm:.6f} = clip {clip}; "
              f"pre-clip norm {stats[3]:.6f}): comparing with moet forward --clip-grad-norm {clip}")
        cmd += ["--clip-grad-norm", str(clip)]
    subprocess.run(cmd, check=True)
    o = sttools.read(out)
    bad = 0
    checks = [("logits", o["logits"], g["logits_step0"]),
              ("loss", o["loss"], stats[0:1]), ("ce_loss", o["ce_loss"], stats[1:2]),
              ("aux_loss", o["aux_loss"], stats[2:3]), ("grad_norm (pre-clip)", o["grad_norm"], stats[3:4])]
    L = sum(1 for k in g if k.startswith("router_logits_step0."))
    for layer in range(L):
        checks.append((f"router_logits.layer{layer}", o[f"router_logits.layer{layer}"],
                       g[f"router_logits_step0.layer{layer}"]))
    grads = sorted(k for k in g if k.startswith("grad."))
    missing = [k for k in grads if k not in o]
    extra = [k for k in o if k.startswith("grad.") and k not in g]
    for k in grads:
        if k in o:
            checks.append((k, o[k], g[k]))
    for name, got, ref in checks:
        if got.shape != ref.shape:
            print(f"NOT OK  {name}: shape {got.shape} vs reference {ref.shape}")
            bad += 1
            continue
        r = sttools.rel(got, ref)
        ok = r <= TOL
        bad += not ok
        print(f"{'OK    ' if ok else 'NOT OK'}  {name:60s} rel {r:.2e}  max|d| {np.abs(got - ref).max():.2e}")
    for k in missing:
        print(f"NOT OK  {k}: missing from moet's output")
    for k in extra:
        print(f"NOT OK  {k}: moet has a gradient the reference lacks")
    bad += len(missing) + len(extra)
    print(f"{len(checks)} quantities compared, {len(grads)} gradients, tolerance {TOL:g} relative: "
          f"{'all OK' if not bad else f'{bad} NOT OK'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
