"""Times training steps of the PyTorch reference on one bench preset.

    python3 torch_bench.py CONFIG [--warmup N] [--steps N] [--threads N] [--profile]

fp32, random init (seed 0), random tokens (a new batch each step), torch AdamW
(lr 1e-4, betas .9/.95, eps 1e-8, wd 0.1 on ndim>=2, foreach=False), clip 1.0.
LoRA presets freeze the base and give AdamW only the LoRA weights. Each step is timed in three
parts: fwd = forward + loss, bwd = backward, opt = clip + AdamW step + zero_grad.
Prints the BLAS library torch mapped (from /proc/self/maps) and one result line
(median over the timed steps of each part; step_ms is their sum):
    result tok_s=... fwd_ms=... bwd_ms=... opt_ms=... step_ms=... peak_rss_gib=...
(peak_rss_gib is this process's ru_maxrss; bench.sh runs each preset in its own
process so presets do not share a peak.)
"""
import argparse
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_configs as bc  # noqa: E402
import torch_mixtral as tm  # noqa: E402


def loaded_blas():
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if "blas" in os.path.basename(path) or "lapack" in os.path.basename(path):
                libs.add(path)
    return sorted(libs)


def build(name, foreach=False):
    """Model and optimizer of a preset, as the benchmark trains them."""
    p = bc.PRESETS[name]
    model = tm.random_model(bc.arch(name), seed=0)
    if p["lora"]:
        lo = p["lora"]
        lora = tm.add_lora(model, lo["r"], lo["alpha"], lo["targets"])
        params = list(lora.values())
    else:
        params = list(model.parameters())
    opt = tm.make_adamw(params, lr=1e-4, weight_decay=0.1, foreach=foreach)
    return model, params, opt


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", choices=sorted(bc.PRESETS))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--foreach", type=int, choices=(0, 1), default=0,
                    help="AdamW's foreach implementation (1) or its per-tensor loop (0, "
                         "faster here: 21 vs 30 ms on tiny, 190 vs 350 ms on small)")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's op table")
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    print("torch %s, threads %d, OMP_NUM_THREADS=%s, OPENBLAS_CORETYPE=%s"
          % (torch.__version__, torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"),
             os.environ.get("OPENBLAS_CORETYPE", "-")))
    print("blas: " + " ".join(loaded_blas()))
    p = bc.PRESETS[a.config]
    B, T = p["batch"], p["seq"]
    model, params, opt = build(a.config, bool(a.foreach))
    counts = bc.param_counts(a.config)
    print("%s: batch %d x seq %d, params %.1fM (active %.1fM, lora %.2fM), trainable %.2fM"
          % (a.config, B, T, counts["total"] / 1e6, counts["active"] / 1e6,
             counts["lora"] / 1e6, sum(x.numel() for x in params) / 1e6))
    g = torch.Generator().manual_seed(1)
    V = bc.arch(a.config)["vocab_size"]
    data = torch.randint(0, V, (a.warmup + a.steps, B, T), generator=g)

    times = []
    prof = None
    for s in range(a.warmup + a.steps):
        if a.profile and s == a.warmup:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            prof.__enter__()
        ids = data[s]
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        out = model(ids, ids)
        del out["logits"]             # not needed by backward: free it as training loops do
        t1 = time.perf_counter()
        out["loss"].backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
        loss = out["loss"].item()
        del out
        if not torch.isfinite(torch.tensor(loss)):
            print("torch_bench: loss is %s at step %d" % (loss, s), file=sys.stderr)
            return 1
        tag = "warmup" if s < a.warmup else "step"
        print("%s %d loss %.4f  fwd %.0f ms  bwd %.0f ms  opt %.0f ms  page faults %d"
              % (tag, s, loss, 1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t3 - t2), faults),
              flush=True)
        if s >= a.warmup:
            times.append((t1 - t0, t2 - t1, t3 - t2))
    if prof:
        prof.__exit__(None, None, None)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    fwd, bwd, opt_t = (statistics.median(t[i] for t in times) for i in range(3))
    step = fwd + bwd + opt_t
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print("result tok_s=%.1f fwd_ms=%.1f bwd_ms=%.1f opt_ms=%.1f step_ms=%.1f peak_rss_gib=%.3f"
          % (B * T / step, 1e3 * fwd, 1e3 * bwd, 1e3 * opt_t, 1e3 * step, rss_gib))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
