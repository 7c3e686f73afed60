#!/usr/bin/env python3
"""Training report from RUN_DIR/metrics.jsonl: a terminal table and an SVG picture.

usage: tools/report.py RUN_DIR        (writes RUN_DIR/report.svg; stdlib only)

The SVG shows train loss (ce), val loss (from step 0 when train.eval_at_start evaluated the
untrained model), learning rate, and the expert load of every MoE layer over the run as a
heat map (fraction of routed tokens per expert; 1/E is perfect balance; dense MLP layers route
nothing and are not drawn; `moe_layers` in metrics.jsonl names the layers), each with its
axes labelled (step; loss; expert). The legend sits above the loss plot, never over a curve.
The table prints the same at a few points in the run.
"""
import json
import math
import os
import sys


def load(run):
    rows = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl")) if x.strip()]
    # an eval that gave no number (no targets, non-finite) is logged with val_loss null
    return [r for r in rows if "loss" in r], [r for r in rows if r.get("val_loss") is not None]


def polyline(pts, x0, y0, w, h, xmax, ymin, ymax, color, width=1.5):
    if not pts:
        return ""
    sx = lambda x: x0 + w * x / max(xmax, 1)
    sy = lambda y: y0 + h - h * (y - ymin) / max(ymax - ymin, 1e-9)
    d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    return f'<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{d}"/>\n'


def svg(run, train, val):
    W, H = 900, 330 + 130 * len(train[-1]["expert_load"])
    steps = train[-1]["step"]
    losses = [r["ce_loss"] for r in train] + [r["val_loss"] for r in val]
    lo, hi = min(losses), max(losses)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">\n',
           f'<rect width="{W}" height="{H}" fill="white"/>\n',
           f'<text x="20" y="24" font-size="16">{os.path.basename(os.path.abspath(run))}: loss and expert load</text>\n']
    x0, y0, w, h = 70, 60, 770, 200
    # the legend above the plot box: the lr curve (scaled to the box) can reach any corner of it
    out.append(f'<g class="legend"><text x="{x0}" y="{y0 - 10}" fill="#1f77b4">train ce</text>'
               f'<text x="{x0 + 70}" y="{y0 - 10}" fill="#d62728">val loss</text>'
               f'<text x="{x0 + 140}" y="{y0 - 10}" fill="#999">lr (scaled to the box, max {max(r["lr"] for r in train):.2e})</text></g>\n')
    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>\n')
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = y0 + h - h * i / 4
        out.append(f'<text x="{x0 - 8}" y="{y + 4:.0f}" text-anchor="end">{v:.2f}</text>\n')
    out.append(axis_labels(x0, y0, w, h, 0, steps, "loss"))
    out.append(polyline([(r["step"], r["ce_loss"]) for r in train], x0, y0, w, h, steps, lo, hi, "#1f77b4"))
    out.append(polyline([(r["step"], r["val_loss"]) for r in val], x0, y0, w, h, steps, lo, hi, "#d62728", 2.5))
    lrmax = max(r["lr"] for r in train) or 1
    out.append(polyline([(r["step"], r["lr"]) for r in train], x0, y0, w, h, steps, 0, lrmax, "#aaa", 1))
    L, E = len(train[-1]["expert_load"]), len(train[-1]["expert_load"][0])
    names = layer_names(train[-1])
    cols = min(len(train), 120)
    pick = [train[int(i * (len(train) - 1) / max(cols - 1, 1))] for i in range(cols)]
    cw = w / cols
    for l in range(L):
        top = 320 + 130 * l
        out.append(f'<text x="20" y="{top - 6}">layer {names[l]}: expert load over the run (white = 1/E, red = overloaded, blue = starved)</text>\n')
        ch = 90 / E
        for j, r in enumerate(pick):
            for e in range(E):
                f = r["expert_load"][l][e] * E  # 1 = balanced
                t = max(-1.0, min(1.0, math.log2(max(f, 1e-3))))
                rr, gg, bb = (255, int(255 * (1 - t)), int(255 * (1 - t))) if t > 0 else (int(255 * (1 + t)), int(255 * (1 + t)), 255)
                out.append(f'<rect x="{x0 + j * cw:.1f}" y="{top + e * ch:.1f}" width="{cw + 0.5:.1f}" height="{ch + 0.5:.1f}" fill="rgb({rr},{gg},{bb})"/>')
        out.append("\n")
        out.append(f'<text x="{x0 - 6}" y="{top + ch / 2 + 4:.1f}" text-anchor="end">0</text>'
                   f'<text x="{x0 - 6}" y="{top + 90 - ch / 2 + 4:.1f}" text-anchor="end">{E - 1}</text>\n')
        out.append(axis_labels(x0, top, w, 90, pick[0]["step"], pick[-1]["step"], "expert", layer=names[l]))
    out.append("</svg>\n")
    path = os.path.join(run, "report.svg")
    with open(path, "w") as f:
        f.write("".join(out))
    return path


def axis_labels(x0, y0, w, h, first, last, yname, layer=None):
    """The x axis (steps first..last, "step") under a box and its y axis name, turned, left of it."""
    tag = f' data-layer="{layer}"' if layer is not None else ""
    return (f'<g class="axis"{tag}><text x="{x0}" y="{y0 + h + 14}" text-anchor="start">{first}</text>'
            f'<text x="{x0 + w}" y="{y0 + h + 14}" text-anchor="end">{last}</text>'
            f'<text x="{x0 + w / 2:.0f}" y="{y0 + h + 16}" text-anchor="middle">step</text>'
            f'<text transform="translate({x0 - 48},{y0 + h / 2:.0f}) rotate(-90)" text-anchor="middle">{yname}</text></g>\n')


def layer_names(r):
    """The model layer of each expert_load row: moe_layers (dense MLP layers have no row), or
    0..n-1 in metrics of older runs, where every layer was an MoE layer."""
    return r.get("moe_layers") or list(range(len(r["expert_load"])))


def table(train, val):
    vmap = {r["step"]: r for r in val}
    n = len(train)
    idx = sorted(set([0, n // 4, n // 2, 3 * n // 4, n - 1]))
    print(f"{'step':>6} {'loss':>8} {'ce':>8} {'aux':>7} {'lr':>9} {'tok/s':>8} {'val_loss':>9} {'val_ppl':>9}  load imbalance (max/mean) per MoE layer {layer_names(train[-1])}")
    for i in idx:
        r = train[i]
        v = vmap.get(r["step"])
        vl = f"{v['val_loss']:9.4f} {v['val_ppl']:9.2f}" if v else f"{'':9} {'':9}"
        imb = " ".join(f"{x:.2f}" for x in r.get("load_imbalance", []))
        print(f"{r['step']:6d} {r['loss']:8.4f} {r['ce_loss']:8.4f} {r['aux_loss']:7.4f} {r['lr']:9.2e} {r['tokens_per_s']:8.0f} {vl}  {imb}")
    if 0 in vmap:
        print(f"val_loss at step 0 (before training, train.eval_at_start): {vmap[0]['val_loss']:.4f} (ppl {vmap[0]['val_ppl']:.2f})")
    last = train[-1]["expert_load"]
    print("expert load at the last step (fraction of routed tokens; balanced = %.3f):" % (1 / len(last[0])))
    for l, row in zip(layer_names(train[-1]), last):
        print(f"  layer {l}: " + " ".join(f"{x:.3f}" for x in row))


def main():
    run = sys.argv[1]
    train, val = load(run)
    if not train:
        sys.exit(f"{run}: no training steps in metrics.jsonl")
    table(train, val)
    print("picture:", svg(run, train, val))


if __name__ == "__main__":
    main()
