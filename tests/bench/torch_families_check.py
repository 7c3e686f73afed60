"""Checks torch_families.py against the golden cases of the other families.

    python3 torch_families_check.py GOLDEN_DIR...   (tiny-qwen3moe, tiny-qwen3moe_nonorm, tiny-olmoe,
                                                     tiny-qwen2moe under $SHARED/golden)

Per case (meta.json says its batch, steps and optimizer): float32 forward of batch 0 --
logits, every MoE layer's router logits, loss / ce / aux, and every RAW gradient ("grads_are_raw")
with the pre-clip global norm -- within 1e-4 relative (norm of the difference / norm of the
reference; scalars |diff| / |ref|); then the AdamW trajectory in float64 and in float32: the
losses and pre-clip norms of every step against step_stats (1e-4), and every tensor after the
last step against after_steps/ as |ours - golden| / |golden - initial| (the distance it moved),
within 1e-3. With a LoRA sub-case (lora_golden.safetensors): logits, router logits and every
adapter gradient of lora_init, the LoRA trajectory (loss, aux, norm per step; lora_trained/ as
above) and the merged weights against lora_merged/. Prints one line per check and the worst
relative error of each kind; exits 1 if anything is off.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_families as tf  # noqa: E402
import torch_mixtral as tm  # noqa: E402

REL_TOL, LOSS_TOL, MOVE_TOL = 1e-4, 1e-4, 1e-3
failures = []
worst = {}


def note(kind, name, rel, tol, line):
    ok = rel <= tol
    if not ok:
        failures.append(name)
    if rel > worst.get(kind, (0, ""))[0]:
        worst[kind] = (rel, name)
    print("%-6s  %s" % ("OK" if ok else "NOT OK", line))


def check_tensor(kind, name, got, ref, tol=REL_TOL):
    got, ref = got.detach().double(), ref.double()
    if got.shape != ref.shape:
        note(kind, name, float("inf"), tol, "%-66s shape %s vs %s" % (name, tuple(got.shape), tuple(ref.shape)))
        return
    rel = (got - ref).norm().item() / max(ref.norm().item(), 1e-30)
    if not torch.isfinite(got).all():
        rel = float("inf")
    note(kind, name, rel, tol, "%-66s maxabs %.3e  rel %.3e" % (name, (got - ref).abs().max().item(), rel))


def check_scalar(kind, name, got, ref, tol=LOSS_TOL):
    got = float(got)
    rel = abs(got - ref) / max(abs(ref), 1e-30)
    note(kind, name, rel, tol, "%-66s got %.7f  ref %.7f  rel %.2e" % (name, got, ref, rel))


def check_moved(kind, name, got, ref, init, tol=MOVE_TOL):
    """|got - ref| relative to how far the tensor moved (|ref - init|)."""
    got, ref, init = got.detach().double(), ref.double(), init.double()
    moved = (ref - init).norm().item()
    rel = (got - ref).norm().item() / max(moved, 1e-30) if moved > 0 else (0.0 if torch.equal(got, ref) else 1.0)
    note(kind, name, rel, tol, "%-66s moved %.3e  |diff|/moved %.2e" % (name, moved, rel))


def grad_norm(params):
    return torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None))


def forward_checks(tag, out, g, stats, lora=False):
    check_tensor("logits", tag + " logits_step0", out["logits"], g["logits_step0"])
    for li, rl in out["router_logits"].items():
        check_tensor("router logits", "%s router_logits_step0.layer%d" % (tag, li), rl,
                     g["router_logits_step0.layer%d" % li])
    extra = sorted(k for k in g if k.startswith("router_logits_step0.") and
                   int(k.rsplit("layer", 1)[1]) not in out["router_logits"])
    if extra:
        note("router logits", tag + " router layers", 1.0, REL_TOL, "%s: golden has %s, a dense layer here" % (tag, extra))
    check_scalar("losses", tag + " loss_total step 0", out["loss"], stats[0, 0].item())
    if lora:
        check_scalar("losses", tag + " loss_aux step 0", out["aux"], stats[0, 1].item())
    else:
        check_scalar("losses", tag + " loss_ce step 0", out["ce"], stats[0, 1].item())
        check_scalar("losses", tag + " loss_aux step 0", out["aux"], stats[0, 2].item())


def check_full(gdir, meta, g):
    print("== %s: batch 0 forward/backward (float32)" % os.path.basename(gdir))
    m = tf.load_hf_dir(os.path.join(gdir, "model"))
    ids, labels, stats = g["input_ids"], g["labels"], g["step_stats"].double()
    out = m(ids[0], labels[0])
    forward_checks("", out, g, stats)
    out["loss"].backward()
    params = dict(m.named_parameters())
    check_scalar("losses", "grad_norm_preclip step 0", grad_norm(params.values()), stats[0, 3].item())
    for name, p in params.items():
        check_tensor("gradients", "grad." + name, p.grad, g["grad." + name])
    missing = sorted(k[5:] for k in g if k.startswith("grad.") and k[5:] not in params)
    if missing:
        note("gradients", "grad names", 1.0, REL_TOL, "golden gradients of tensors the model lacks: %s" % missing[:3])
    for dtype in (torch.float64, torch.float32):
        check_steps(gdir, meta, ids, labels, stats, dtype)


def check_steps(gdir, meta, ids, labels, stats, dtype):
    steps, lr, wd, clip = meta["steps"], meta["lr"], meta["weight_decay"], meta["clip_grad_norm"]
    tag = str(dtype)[6:]
    print("== %s, %s: %d AdamW steps (lr %g, betas %s, wd %g on ndim>=2, clip %g)"
          % (os.path.basename(gdir), tag, steps, lr, meta["betas"], wd, clip))
    m = tf.load_hf_dir(os.path.join(gdir, "model")).to(dtype)
    init = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = tm.make_adamw(m.parameters(), lr=lr, betas=tuple(meta["betas"]), eps=meta["eps"], weight_decay=wd)
    for s in range(steps):
        opt.zero_grad(set_to_none=True)
        out = m(ids[s], labels[s])
        out["loss"].backward()
        gn = torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
        for c, name in enumerate(("loss_total", "loss_ce", "loss_aux")):
            check_scalar("trajectory losses", "%s step %d %s" % (tag, s, name), out[("loss", "ce", "aux")[c]],
                         stats[s, c].item())
        check_scalar("trajectory losses", "%s step %d grad_norm_preclip" % (tag, s), gn, stats[s, 3].item())
        opt.step()
    after = tm.read_safetensors(os.path.join(gdir, "after_steps", "model.safetensors"))
    for name, p in m.named_parameters():
        check_moved("weights after steps (%s)" % tag, "%s after_steps %s" % (tag, name), p, after[name], init[name])


def check_lora(gdir, meta, g, lg):
    case = os.path.basename(gdir)
    print("== %s LoRA (lora_init: r=%d, alpha=%g on %s): batch 0" % (case, meta["lora_r"], meta["lora_alpha"],
                                                                    ",".join(meta["lora_targets"])))
    ids, labels, stats = g["input_ids"], g["labels"], lg["step_stats"].double()
    m = tf.load_hf_dir(os.path.join(gdir, "model"))
    lora = tf.load_peft_adapter(m, os.path.join(gdir, "lora_init"))
    out = m(ids[0], labels[0])
    forward_checks("lora", out, lg, stats, lora=True)
    out["loss"].backward()
    check_scalar("losses", "lora grad_norm_preclip step 0", grad_norm(lora.values()), stats[0, 2].item())
    for k, p in lora.items():
        check_tensor("LoRA gradients", "grad." + k, p.grad, lg["grad." + k])
    if len(lora) != sum(k.startswith("grad.") for k in lg):
        note("LoRA gradients", "lora set", 1.0, REL_TOL, "%d LoRA tensors, golden has %d gradients"
             % (len(lora), sum(k.startswith("grad.") for k in lg)))

    steps = meta["lora_steps"]
    print("== %s LoRA: %d AdamW steps on the adapters (lr %g, wd %g, clip %g), float64"
          % (case, steps, meta["lora_lr"], meta["lora_weight_decay"], meta["lora_clip_grad_norm"]))
    m = tf.load_hf_dir(os.path.join(gdir, "model"))
    lora = tf.load_peft_adapter(m, os.path.join(gdir, "lora_init"))
    m.double()  # in place: the parameters in lora are the model's
    init = {k: p.detach().clone() for k, p in lora.items()}
    opt = tm.make_adamw(lora.values(), lr=meta["lora_lr"], betas=tuple(meta["betas"]), eps=meta["eps"],
                        weight_decay=meta["lora_weight_decay"])
    for s in range(steps):
        opt.zero_grad(set_to_none=True)
        out = m(ids[s], labels[s])
        out["loss"].backward()
        gn = torch.nn.utils.clip_grad_norm_(list(lora.values()), meta["lora_clip_grad_norm"])
        check_scalar("trajectory losses", "lora step %d loss_total" % s, out["loss"], stats[s, 0].item())
        check_scalar("trajectory losses", "lora step %d loss_aux" % s, out["aux"], stats[s, 1].item())
        check_scalar("trajectory losses", "lora step %d grad_norm_preclip" % s, gn, stats[s, 2].item())
        opt.step()
    trained = tm.read_safetensors(os.path.join(gdir, "lora_trained", "adapter_model.safetensors"))
    for k, p in lora.items():
        check_moved("LoRA adapter after steps", "lora_trained " + k, p, trained[k], init[k])
    # the merged model: base + (alpha/r) B A of lora_trained, against lora_merged/
    m = tf.load_hf_dir(os.path.join(gdir, "model"))
    lora = tf.load_peft_adapter(m, os.path.join(gdir, "lora_trained"))
    merged = tf.merged_state(m, lora, meta["lora_scaling"])
    ref = tm.read_safetensors(os.path.join(gdir, "lora_merged", "model.safetensors"))
    if set(merged) != set(ref):
        note("merged weights", "merged names", 1.0, REL_TOL, "merged names differ: %s" % sorted(set(merged) ^ set(ref))[:3])
    for name in sorted(set(merged) & set(ref)):
        check_tensor("merged weights", "lora_merged " + name, merged[name], ref[name], 1e-6)


def main(argv):
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    for gdir in argv:
        try:
            meta = json.load(open(os.path.join(gdir, "meta.json")))
            g = tm.read_safetensors(os.path.join(gdir, "golden.safetensors"))
            check_full(gdir, meta, g)
            lg_path = os.path.join(gdir, "lora_golden.safetensors")
            if os.path.exists(lg_path):
                check_lora(gdir, meta, g, tm.read_safetensors(lg_path))
        except (OSError, ValueError, KeyError) as e:
            print("torch_families_check: %s: %s" % (gdir, e), file=sys.stderr)
            return 1
    print("----")
    for kind, (rel, name) in sorted(worst.items()):
        print("worst %-34s %.2e  (%s)" % (kind, rel, name))
    if failures:
        print("NOT OK: %d checks failed: %s" % (len(failures), ", ".join(failures[:8])))
        return 1
    print("all checks OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
