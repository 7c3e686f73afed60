"""Checks torch_mixtral.py (fp32) against the Hugging Face golden data.

    python3 torch_ref_check.py GOLDEN_DIR     (GOLDEN_DIR = $SHARED/golden/tiny-mixtral)

Full model: logits, router logits, ce/aux/total loss and every gradient of batch 0,
then 5 AdamW steps (one batch each) against step_stats and after_steps/.
LoRA (lora_init adapter): logits, every LoRA gradient, 5 steps against
lora_golden step_stats and lora_trained/. Prints one line per tensor (max abs diff,
relative diff, OK / NOT OK) like llm.c's test_gpt2; exits 1 if anything is off.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_mixtral as tm  # noqa: E402

REL_TOL = 1e-4        # norm(diff) / norm(ref): logits, grads (README: "about 1e-4 relative")
LOSS_TOL = 1e-4       # |diff| / |ref| for scalar losses and grad norms
PARAM_TOL = 1e-4      # max abs diff of parameters after 5 AdamW steps (float64 run)
PARAM_TOL_F32 = 5e-4  # the same in float32 (see check_full_steps)

failures = []


def check_tensor(name, got, ref, tol=REL_TOL, quiet=False):
    got = got.detach().double()
    ref = ref.double()
    if got.shape != ref.shape:
        failures.append(name)
        print("NOT OK  %-62s shape %s vs %s" % (name, tuple(got.shape), tuple(ref.shape)))
        return
    diff = (got - ref).abs()
    maxabs = diff.max().item() if diff.numel() else 0.0
    rel = (got - ref).norm().item() / max(ref.norm().item(), 1e-30)
    ok = rel <= tol and torch.isfinite(got).all().item()
    if not ok:
        failures.append(name)
    if not ok or not quiet:
        print("%-6s  %-62s maxabs %.3e  rel %.3e" % ("OK" if ok else "NOT OK", name, maxabs, rel))


def check_scalar(name, got, ref, tol=LOSS_TOL):
    got = float(got)
    rel = abs(got - ref) / max(abs(ref), 1e-30)
    ok = rel <= tol
    if not ok:
        failures.append(name)
    print("%-6s  %-62s got %.7f  ref %.7f  rel %.2e" % ("OK" if ok else "NOT OK", name,
                                                       got, ref, rel))


def check_params_maxabs(name, got, ref, tol=PARAM_TOL):
    d = (got.detach().double() - ref.double()).abs().max().item()
    ok = d <= tol
    if not ok:
        failures.append(name)
    print("%-6s  %-62s maxabs %.3e" % ("OK" if ok else "NOT OK", name, d))


def grad_norm(params):
    return torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None))


def check_full(gdir, g):
    print("== full model: batch 0 forward/backward")
    m = tm.load_hf_dir(os.path.join(gdir, "model"))
    ids, labels, stats = g["input_ids"], g["labels"], g["step_stats"].double()
    out = m(ids[0], labels[0])
    check_tensor("logits_step0", out["logits"], g["logits_step0"])
    for li, rl in enumerate(out["router_logits"]):
        check_tensor("router_logits_step0.layer%d" % li, rl, g["router_logits_step0.layer%d" % li])
    check_scalar("loss_total step 0", out["loss"], stats[0, 0].item())
    check_scalar("loss_ce step 0", out["ce"], stats[0, 1].item())
    check_scalar("loss_aux step 0", out["aux"], stats[0, 2].item())
    out["loss"].backward()
    params = dict(m.named_parameters())
    check_scalar("grad_norm_preclip step 0", grad_norm(params.values()), stats[0, 3].item())
    # The README says grad.<name> is "before clipping", but the stored tensors are
    # the clipped ones: exactly ours * 1/grad_norm (2.2185 here); compare after the
    # same clip (torch's clip_grad_norm_, max_norm 1).
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    for name, p in params.items():
        check_tensor("grad." + name + " (clipped)", p.grad, g["grad." + name])

    for dtype in (torch.float64, torch.float32):
        check_full_steps(gdir, ids, labels, stats, dtype)


def check_full_steps(gdir, ids, labels, stats, dtype):
    """5 AdamW steps. float64 (HF's precision) holds every parameter to PARAM_TOL.
    float32 gets PARAM_TOL_F32: Adam divides by sqrt(v)+eps with eps 1e-8, so a
    gradient of ~6e-9 (there is one: layers.1 expert 0 w2) carrying fp32 noise of
    ~3e-10 (1e-7 of the largest gradient) moves its parameter by ~1e-4."""
    tol = PARAM_TOL if dtype == torch.float64 else PARAM_TOL_F32
    print("== full model, %s: 5 AdamW steps (lr 1e-2, betas .9/.95, wd 0.1 on ndim>=2, "
          "clip 1); params max abs <= %g" % (str(dtype)[6:], tol))
    m = tm.load_hf_dir(os.path.join(gdir, "model")).to(dtype)
    opt = tm.make_adamw(m.parameters(), lr=1e-2, weight_decay=0.1)
    for s in range(ids.shape[0]):
        opt.zero_grad(set_to_none=True)
        out = m(ids[s], labels[s])
        out["loss"].backward()
        gn = torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        check_scalar("step %d loss_total" % s, out["loss"], stats[s, 0].item())
        check_scalar("step %d loss_ce" % s, out["ce"], stats[s, 1].item())
        check_scalar("step %d loss_aux" % s, out["aux"], stats[s, 2].item())
        check_scalar("step %d grad_norm_preclip" % s, gn, stats[s, 3].item())
        opt.step()
    after = tm.read_safetensors(os.path.join(gdir, "after_steps", "model.safetensors"))
    for name, p in m.named_parameters():
        check_params_maxabs("after_steps " + name, p, after[name], tol)


def check_lora(gdir, lg):
    print("== LoRA (lora_init: r=4, alpha=8 on q,k,v,o): batch 0 forward/backward")
    g = tm.read_safetensors(os.path.join(gdir, "golden.safetensors"))
    ids, labels, stats = g["input_ids"], g["labels"], lg["step_stats"].double()
    m = tm.load_hf_dir(os.path.join(gdir, "model"))
    lora = tm.load_peft_adapter(m, os.path.join(gdir, "lora_init"))
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    if len(trainable) != len(lora):
        failures.append("lora trainable set")
        print("NOT OK  trainable params %d, LoRA params %d" % (len(trainable), len(lora)))
    out = m(ids[0], labels[0])
    check_tensor("lora logits_step0", out["logits"], lg["logits_step0"])
    check_scalar("lora loss_total step 0", out["loss"], stats[0, 0].item())
    check_scalar("lora loss_aux step 0", out["aux"], stats[0, 1].item())
    out["loss"].backward()
    check_scalar("lora grad_norm_preclip step 0", grad_norm(lora.values()), stats[0, 2].item())
    torch.nn.utils.clip_grad_norm_(list(lora.values()), 1.0)     # a no-op here: norm < 1
    for k, p in lora.items():
        check_tensor("grad." + k, p.grad, lg["grad." + k])

    print("== LoRA: 5 AdamW steps on LoRA params (lr 1e-2, wd 0, clip 1)")
    m = tm.load_hf_dir(os.path.join(gdir, "model"))
    lora = tm.load_peft_adapter(m, os.path.join(gdir, "lora_init"))
    opt = tm.make_adamw(lora.values(), lr=1e-2, weight_decay=0.0)
    for s in range(ids.shape[0]):
        opt.zero_grad(set_to_none=True)
        out = m(ids[s], labels[s])
        out["loss"].backward()
        gn = torch.nn.utils.clip_grad_norm_(list(lora.values()), 1.0)
        check_scalar("lora step %d loss_total" % s, out["loss"], stats[s, 0].item())
        check_scalar("lora step %d loss_aux" % s, out["aux"], stats[s, 1].item())
        check_scalar("lora step %d grad_norm_preclip" % s, gn, stats[s, 2].item())
        opt.step()
    trained = tm.read_safetensors(os.path.join(gdir, "lora_trained", "adapter_model.safetensors"))
    for k, p in lora.items():
        check_params_maxabs("lora_trained " + k, p, trained[k])


def main(argv):
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    gdir = argv[0]
    torch.set_num_threads(2)
    try:
        g = tm.read_safetensors(os.path.join(gdir, "golden.safetensors"))
        lg = tm.read_safetensors(os.path.join(gdir, "lora_golden.safetensors"))
        check_full(gdir, g)
        check_lora(gdir, lg)
    except (OSError, ValueError, KeyError) as e:
        print("torch_ref_check: %s" % e, file=sys.stderr)
        return 1
    print("----")
    if failures:
        print("NOT OK: %d checks failed: %s" % (len(failures), ", ".join(failures[:8])))
        return 1
    print("all checks OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
