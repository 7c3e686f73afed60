"""Data parallelism on paper: step time of moet on 2, 8 and 32 nodes at 25 and 100 Gbit/s.

usage: dist_model.py SMALL_TOK_S SMALL_LORA_TOK_S [THREADS]
  SMALL_TOK_S, SMALL_LORA_TOK_S: measured one-process tok/s of the bench's small and small-lora
  presets on THREADS cores (2), e.g. from `make bench`. They give moet's sustained FLOP rate per
  core (model FLOPs / s, bench_configs.flops_per_token), which the model scales to a node.

The model, per optimizer step and node (one rank per node, all its cores as OpenMP threads):
  compute   = tokens per node per step x FLOPs/token / (cores x measured FLOP rate per core)
  bytes     = 2 (N-1)/N x S sent by each node, S = trainable parameters x 4 bytes (fp32):
              the gradients' reduce-scatter (ring) and the ZeRO-1 parameter all-gather, or the
              all-reduce without ZeRO; the same volume either way
  comm      = bytes / bandwidth + latency: each bucket (dist.bucket_mb) is one ring collective,
              2 (N-1) messages of ALPHA each (TCP over Ethernet)
  exposed   = ZeRO-1: the reduce-scatter hides behind the backward (2/3 of compute) except the
              last bucket; the all-gather after AdamW is not hidden (moet does not overlap it with
              the next forward). Without ZeRO the all-reduce runs entirely during the backward.
  step      = compute + exposed; efficiency = compute / step
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_configs as bc  # noqa: E402

CORES = 32          # cores per node (a 2-socket server), each at the measured per-core rate
ALPHA = 25e-6       # seconds per message on TCP / Ethernet (10-50 us is typical)
NODES = (2, 8, 32)
GBITS = (25, 100)

# Mixtral-8x7B (HF config.json) and configs/mixtral-8x7b-lora.yaml's LoRA: r 16 on q, k, v, o
MIXTRAL = dict(vocab=32000, d=4096, ffn=14336, L=32, heads=32, kv=8, hd=128, E=8, k=2)


def mixtral_counts(r=16):
    m = MIXTRAL
    q, kv = m["heads"] * m["hd"], m["kv"] * m["hd"]
    attn = m["d"] * q + 2 * m["d"] * kv + q * m["d"]
    expert = 3 * m["d"] * m["ffn"]
    active = m["L"] * (attn + m["d"] * m["E"] + m["k"] * expert + 2 * m["d"]) + m["d"] + m["vocab"] * m["d"]
    total = m["vocab"] * m["d"] * 2 + m["L"] * (attn + m["d"] * m["E"] + m["E"] * expert + 2 * m["d"]) + m["d"]
    lora = m["L"] * r * ((m["d"] + q) + 2 * (m["d"] + kv) + (q + m["d"]))
    return active, lora, total


def main():
    small_tok_s, lora_tok_s = float(sys.argv[1]), float(sys.argv[2])
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    rate_full = small_tok_s * bc.flops_per_token("small") / threads       # FLOP/s per core
    rate_lora = lora_tok_s * bc.flops_per_token("small-lora") / threads
    active, lora, total = mixtral_counts()
    T = 4096
    mix_flops = 4 * active + 6 * lora + 12 * MIXTRAL["L"] * T * MIXTRAL["heads"] * MIXTRAL["hd"] / 2
    small = bc.param_counts("small")
    cases = [
        # name, trainable params, tokens per node per step, FLOPs/token, rate per core, bucket MB
        ("Mixtral-8x7B LoRA r16 q,k,v,o (1 x 4096 tokens x grad_accum 16 per node)",
         lora, 16 * T, mix_flops, rate_lora, 4),
        ("small preset, full fine-tune (64 rows x 512 per node)",
         small["total"], 64 * 512, bc.flops_per_token("small"), rate_full, 4),
        ("small preset, full fine-tune, dist.bucket_mb 32",
         small["total"], 64 * 512, bc.flops_per_token("small"), rate_full, 32),
    ]
    print(f"measured here: {rate_full / 1e9:.0f} GFLOP/s per core (small, full), {rate_lora / 1e9:.0f} (small-lora); "
          f"node = {CORES} such cores; latency {ALPHA * 1e6:.0f} us per message")
    print(f"Mixtral-8x7B: {total / 1e9:.1f} B parameters, {active / 1e9:.1f} B active, {lora / 1e6:.1f} M LoRA; "
          f"{mix_flops / 1e9:.0f} GFLOP per trained token at T={T}")
    for name, n_train, tokens, fpt, rate, bucket_mb in cases:
        S = 4.0 * n_train
        compute = tokens * fpt / (CORES * rate)
        nb = max(1, int(S / (bucket_mb * 2**20) + 0.999))
        print(f"\n{name}: {S / 2**20:,.1f} MiB of fp32 gradients, {nb} buckets; compute {compute:.2f} s per step")
        print("| nodes | Gbit/s | sent per node per step | comm (bandwidth + latency) | step, ZeRO-1 | efficiency "
              "| step, no ZeRO | efficiency |")
        print("|---|---|---|---|---|---|---|---|")
        for N in NODES:
            for g in GBITS:
                bw = g * 1e9 / 8
                sent = 2 * (N - 1) / N * S
                half = sent / 2 / bw + nb * (N - 1) * ALPHA       # one reduce-scatter or all-gather
                bwd = 2 / 3 * compute
                last = half / nb
                exposed_z1 = max(last, half - bwd) + half
                exposed_z0 = max(2 * last, 2 * half - bwd)
                s1, s0 = compute + exposed_z1, compute + exposed_z0
                print(f"| {N} | {g} | {sent / 2**20:,.1f} MiB | {2 * half * 1e3:,.1f} ms | {s1:.3f} s | "
                      f"{100 * compute / s1:.1f}% | {s0:.3f} s | {100 * compute / s0:.1f}% |")


if __name__ == "__main__":
    main()
