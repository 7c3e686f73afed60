"""Prints the `make bench` table from the per-run result files bench.sh wrote.

    python3 bench_table.py OUT_DIR PEAK_GFLOPS PEAK_AVX512_GFLOPS CONFIG...

Reads OUT_DIR/ENGINE-CONFIG.result (ENGINE = torch-plain, torch, torch-avx512, moet-keep,
moet):
`key=value` lines with
tok_s, fwd_ms, bwd_ms, opt_ms (from the engine) and peak_rss_kib, exit (from
run_rss.py). A missing file, a non-zero exit or no tok_s shows as n/a. MFU uses
bench_configs.flops_per_token for both engines; ratio = moet tok/s / torch tok/s.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_configs as bc  # noqa: E402


def read_result(path):
    r = {}
    try:
        with open(path) as f:
            for line in f:
                k, sep, v = line.strip().partition("=")
                if sep:
                    r[k] = v
    except OSError:
        return None
    if r.get("exit", "0") != "0" or "tok_s" not in r:
        return None
    return r


def fmt(v, spec):
    return "n/a" if v is None else spec % v


ENGINES = (  # name, kernels, same-kernel torch to compare with
    ("torch-plain", "configured", None),  # the setup: glibc malloc defaults
    ("torch", "configured", None),
    ("torch-avx512", "AVX-512", None),
    ("moet-keep", "configured", "torch"),
    ("moet", "AVX-512", "torch-avx512"),
)


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    out, peak, peak512, configs = argv[0], float(argv[1]), float(argv[2]), argv[3:]
    cols = ("config", "engine", "kernels", "tok/s", "fwd ms", "bwd ms", "opt ms", "peak RSS GiB",
            "MFU %", "vs torch same kernels", "vs best torch", "vs torch-plain")
    widths = (11, 12, 10, 7, 8, 8, 7, 12, 6, 21, 13, 14)
    line = "  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))
    print(line)
    print("-" * len(line))
    results = {cfg: {e: read_result(os.path.join(out, "%s-%s.result" % (e, cfg))) for e, _, _ in ENGINES}
               for cfg in configs}
    for cfg in configs:
        res = dict(results[cfg])
        if not res["torch-avx512"] and not res["moet-keep"]:  # no AVX-512 variants: moet ran as configured
            res["torch-avx512"], res["moet-keep"] = None, None
        torch_best = max((float(res[e]["tok_s"]) for e in ("torch-plain", "torch", "torch-avx512") if res[e]),
                         default=None)
        plain = float(res["torch-plain"]["tok_s"]) if res["torch-plain"] else None
        for engine, kernels, same in ENGINES:
            r = res[engine]
            if r is None and engine in ("torch-avx512", "moet-keep"):
                continue
            g = (lambda k: float(r[k]) if r and k in r else None)
            tok = g("tok_s")
            rss = g("peak_rss_kib")
            avx = kernels == "AVX-512" and (res["torch-avx512"] or res["moet-keep"])
            mfu = bc.mfu_pct(cfg, tok, peak512 if avx else peak) if tok is not None else None
            same_ratio = best_ratio = plain_ratio = None
            if engine.startswith("moet") and tok is not None and plain:
                plain_ratio = tok / plain
            if same and tok is not None:
                ref = res[same] or (res["torch"] if engine == "moet" else None)
                same_ratio = tok / float(ref["tok_s"]) if ref else None
                if engine == "moet" and torch_best:
                    best_ratio = tok / torch_best
            cells = (cfg, engine, kernels if avx or kernels == "configured" else "configured", fmt(tok, "%.0f"),
                     fmt(g("fwd_ms"), "%.1f"), fmt(g("bwd_ms"), "%.1f"), fmt(g("opt_ms"), "%.1f"),
                     fmt(rss / 2 ** 20 if rss is not None else None, "%.2f"), fmt(mfu, "%.1f"),
                     fmt(same_ratio, "%.2fx") if same else "", fmt(best_ratio, "%.2fx") if engine == "moet" else "",
                     fmt(plain_ratio, "%.2fx") if engine.startswith("moet") else "")
            print("  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    print("sgemm peak %.1f GFLOP/s with the configured OpenBLAS kernels%s (fp32, 2 threads); MFU uses the peak of "
          "the kernels each engine ran" % (peak, "" if peak512 == peak else ", %.1f with AVX-512 (SkylakeX)" % peak512))
    print(bc.FORMULA)
    for cfg in configs:
        p = bc.param_counts(cfg)
        print("  %-11s N=%.3fM N_lora=%.3fM -> %.4g FLOPs/token"
              % (cfg, p["active"] / 1e6, p["lora"] / 1e6, bc.flops_per_token(cfg)))
    print("moet: fwd = forward kernels; its lm_head + cross-entropy run fused with their backward and count in bwd")
    print("torch-plain: the issue's setup (OpenMP OpenBLAS, configured kernels, glibc malloc defaults); torch: "
          "+ GLIBC_TUNABLES (no mmap/trim per step); torch-avx512: + OPENBLAS_CORETYPE=SkylakeX")
    targets(results, configs)
    return 0


def targets(results, configs):
    """The issue's targets, checked against this run's numbers (results: config -> engine -> result)."""
    tok = {}
    rss = {}
    for cfg in configs:
        for e, r in results[cfg].items():
            if r:
                tok[e, cfg] = float(r["tok_s"])
                rss[e, cfg] = float(r.get("peak_rss_kib", "nan"))
    print("targets (moet as it runs by default):")

    def line(what, got, goal):
        if got is None:
            print("  %-66s n/a" % what)
        else:
            print("  %-66s %5.2fx  %s (>= %.1fx)" % (what, got, "met" if got >= goal else "NOT met", goal))

    def ratio(a, b):
        return tok[a] / tok[b] if a in tok and b in tok else None

    for cfg in configs:
        line("%s tok/s vs torch-plain (the issue's setup)" % cfg, ratio(("moet", cfg), ("torch-plain", cfg)), 1.5)
        if ("moet-keep", cfg) in tok:
            line("%s tok/s vs torch-plain, both on the configured kernels" % cfg,
                 ratio(("moet-keep", cfg), ("torch-plain", cfg)), 1.5)
        best = max((e for e in ("torch-plain", "torch", "torch-avx512") if (e, cfg) in tok),
                   key=lambda e: tok[e, cfg], default=None)
        line("%s tok/s vs the fastest torch (%s)" % (cfg, best), ratio(("moet", cfg), (best, cfg)) if best else None,
             1.5)
    if "small-lora" in configs and "small" in configs:
        line("small-lora tok/s vs moet's own full small step", ratio(("moet", "small-lora"), ("moet", "small")), 2.0)
    for cfg in configs:
        peaks = [rss[e, cfg] for e in ("torch-plain", "torch", "torch-avx512") if (e, cfg) in rss]
        if ("moet", cfg) in rss and peaks:
            r = rss["moet", cfg] / min(peaks)
            print("  %-66s %5.2fx  %s (<= 0.7x)" % ("%s peak RSS vs torch's smallest" % cfg, r,
                                                  "met" if r <= 0.7 else "NOT met"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
