"""Prints the `make bench` table from the per-run result files bench.sh wrote.

    python3 bench_table.py OUT_DIR PEAK_GFLOPS CONFIG...

Reads OUT_DIR/ENGINE-CONFIG.result (ENGINE = moet, torch): `key=value` lines with
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


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out, peak, configs = argv[0], float(argv[1]), argv[2:]
    cols = ("config", "engine", "tok/s", "fwd ms", "bwd ms", "opt ms", "peak RSS GiB",
            "MFU %", "moet/torch")
    widths = (11, 6, 8, 8, 8, 8, 12, 6, 10)
    line = "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in
                     enumerate(zip(cols, widths)))
    print(line)
    print("-" * len(line))
    for cfg in configs:
        res = {e: read_result(os.path.join(out, "%s-%s.result" % (e, cfg)))
               for e in ("torch", "moet")}
        for engine in ("torch", "moet"):
            r = res[engine]
            g = (lambda k: float(r[k]) if r and k in r else None)
            tok = g("tok_s")
            rss = g("peak_rss_kib")
            mfu = bc.mfu_pct(cfg, tok, peak) if tok is not None else None
            ratio = None
            if engine == "moet" and tok is not None and res["torch"]:
                ratio = tok / float(res["torch"]["tok_s"])
            cells = (cfg, engine, fmt(tok, "%.0f"), fmt(g("fwd_ms"), "%.1f"),
                     fmt(g("bwd_ms"), "%.1f"), fmt(g("opt_ms"), "%.1f"),
                     fmt(rss / 2 ** 20 if rss is not None else None, "%.2f"),
                     fmt(mfu, "%.1f"), fmt(ratio, "%.2fx") if engine == "moet" else "")
            print("  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in
                            enumerate(zip(cells, widths))))
    print("sgemm peak %.1f GFLOP/s (OpenBLAS, fp32, 2 threads)" % peak)
    print(bc.FORMULA)
    for cfg in configs:
        p = bc.param_counts(cfg)
        print("  %-11s N=%.3fM N_lora=%.3fM -> %.4g FLOPs/token"
              % (cfg, p["active"] / 1e6, p["lora"] / 1e6, bc.flops_per_token(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
