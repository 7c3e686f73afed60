"""Checks for tests/t_dist.sh: a data-parallel run against a one-process run.

usage:
  dist_check.py shards GOLDEN_DIR OUT_DIR          golden.h5 (10 rows) and val7.h5 (its first 7)
  dist_check.py compare REF RUN INIT [TOL] [WTOL]   every step's loss, ce, aux, grad_norm and
        val_loss within TOL relative (1e-5); the final weights (checkpoint of the last step) within
        WTOL (1e-4) of the distance REF moved from INIT: |w_run - w_ref| <= WTOL * |w_ref - w_init|
        (L2 over all trainable tensors). INIT: the model or adapter dir the runs started from.
  dist_check.py same A B                            per-step metrics bit-identical (resume)
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import sttools  # noqa: E402
from make_shard import write_shard  # noqa: E402


def metrics(run):
    train, val = {}, {}
    for line in open(os.path.join(run, "metrics.jsonl")):
        x = json.loads(line)
        if "loss" in x:
            train[x["step"]] = x
        elif x.get("val_loss") is not None:
            val[x["step"]] = x["val_loss"]
    return train, val


def last_ckpt(run):
    root = os.path.join(run, "checkpoints")
    return os.path.join(root, sorted(d for d in os.listdir(root) if d.startswith("step_"))[-1])


def weights(d):
    """A model dir's or checkpoint's weights, or a PEFT adapter's."""
    a = os.path.join(d, "adapter_model.safetensors")
    t = sttools.read(a) if os.path.exists(a) else sttools.read_dir(d)
    return {k: v.astype(np.float64) for k, v in t.items()}


def compare(ref, run, init, tol=1e-5, wtol=1e-4):
    (a, av), (b, bv) = metrics(ref), metrics(run)
    bad = 0
    if sorted(a) != sorted(b) or sorted(av) != sorted(bv):
        print(f"NOT OK  steps differ: {sorted(a)} vs {sorted(b)}, evals {sorted(av)} vs {sorted(bv)}")
        return 1
    worst = {}
    for s in sorted(a):
        for k in ("loss", "ce_loss", "aux_loss", "grad_norm"):
            r = abs(a[s][k] - b[s][k]) / max(abs(a[s][k]), 1e-30)
            worst[k] = max(worst.get(k, 0), r)
            if r > tol:
                print(f"NOT OK  step {s} {k}: {a[s][k]:.9g} vs {b[s][k]:.9g} (rel {r:.2e} > {tol:g})")
                bad += 1
    for s in sorted(av):
        r = abs(av[s] - bv[s]) / abs(av[s])
        worst["val_loss"] = max(worst.get("val_loss", 0), r)
        if r > tol:
            print(f"NOT OK  step {s} val_loss: {av[s]:.9g} vs {bv[s]:.9g} (rel {r:.2e})")
            bad += 1
    wa, wb, w0 = weights(last_ckpt(ref)), weights(last_ckpt(run)), weights(init)
    diff = np.sqrt(sum(((wa[k] - wb[k]) ** 2).sum() for k in wa))
    moved = np.sqrt(sum(((wa[k] - w0[k]) ** 2).sum() for k in wa))
    mx = max(np.abs(wa[k] - wb[k]).max() for k in wa)
    ratio = diff / moved
    if not ratio <= wtol:
        bad += 1
    print(f"{'OK    ' if not bad else 'NOT OK'}  {len(a)} steps: worst rel " +
          ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) +
          f"; final weights |diff| / |moved| = {ratio:.1e} (max abs diff {mx:.1e}, tolerance {wtol:g})")
    return bad


def same(a_run, b_run):
    (a, av), (b, bv) = metrics(a_run), metrics(b_run)
    keys = ("loss", "ce_loss", "aux_loss", "z_loss", "lr", "grad_norm", "expert_load")
    if sorted(a) != sorted(b) or av != bv:
        print(f"NOT OK  steps {sorted(a)} vs {sorted(b)}")
        return 1
    for s in a:
        if any(a[s][k] != b[s][k] for k in keys):
            print(f"NOT OK  step {s} differs: {[(k, a[s][k], b[s][k]) for k in keys if a[s][k] != b[s][k]]}")
            return 1
    print(f"OK      per-step metrics bit-identical over steps {min(a)}-{max(a)}")
    return 0


def shards(gdir, out):
    g = sttools.read(os.path.join(gdir, "golden.safetensors"))
    seq = g["input_ids"].shape[-1]
    ids, labels = g["input_ids"].reshape(-1, seq), g["labels"].reshape(-1, seq)
    vocab = json.load(open(os.path.join(gdir, "meta.json")))["config_kwargs"]["vocab_size"]
    write_shard(os.path.join(out, "golden.h5"), ids, vocab, labels != -100)
    write_shard(os.path.join(out, "val7.h5"), ids[:7], vocab, labels[:7] != -100)
    return 0


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "shards":
        rc = shards(*args)
    elif cmd == "compare":
        rc = compare(args[0], args[1], args[2], *(float(x) for x in args[3:]))
    elif cmd == "same":
        rc = same(*args)
    else:
        sys.exit(__doc__)
    sys.exit(1 if rc else 0)


if __name__ == "__main__":
    main()
