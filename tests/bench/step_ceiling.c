/* step_ceiling: how fast one full fine-tuning step of a preset could be on this machine if
 * every product ran at the rate OpenBLAS reaches on that product alone, arranged as moet runs
 * it, and nothing but the products and the optimizer took time. It is the yardstick for
 * issue 16's MFU targets: a target above this ceiling is one no implementation built on
 * these products can meet, and moet's MFU over the ceiling's says how much of what is
 * reachable moet reaches.
 *
 * Timed (fp32, all threads, best of ROUNDS whole passes over the step's products, in a step's
 * order: every layer's forward, the head, every layer's backward from the last, with what the
 * forward keeps for the backward kept per layer, so it comes back from memory as in a step):
 *   attention projections  q|k|v and o: forward X W^T, backward dY W and dY^T X, top level
 *                          (OpenBLAS threaded), every layer with its own weights
 *   router                 X Wg^T, dZ Wg, dZ^T X, top level
 *   experts                N*k/E rows each (an even router), whole experts side by side in one
 *                          parallel region (single-threaded OpenBLAS inside, as moet/moe.c),
 *                          forward x W13^T, act W2^T; backward dY W2, dY^T act, dH^T x, dH W13;
 *                          L*E distinct weight sets (they come from memory, as in a step)
 *   lm_head                logits X W^T, dW += dZ^T X, dX = dZ W over chunks of 1024 rows
 *   AdamW                  moet's own pass (optim/adamw.c, clip scale fused, gradient zeroed
 *                          as it is read) over every parameter
 * Not timed, counted free: the attention core (QK^T, PV and their backward: bench_table.py
 * counts its FLOPs at the sgemm peak), norms, RoPE, softmax and SwiGLU, routing, gathers,
 * the cross-entropy, the embedding. So the ceiling is generous: an upper bound.
 *
 * Each family's best round is an optimistic reading: the rounds of one run differ by 5-10% on a
 * shared VM (small, 2026-12-03: 1742-1819 ms a round after the first), while moet's step time
 * is a median. So every round's whole time (its products and its AdamW pass) is printed too,
 * and bench_table.py takes the median round over the readings (each reading's first round, a
 * warm-up, left out) beside the best-of sum.
 *
 * usage: step_ceiling D L H KV HD F E K V B T   (the preset's dims: bench_configs.py dims)
 * stdout: one line per family (ms, GFLOP/s), then key=value lines: products_ms, adamw_ms,
 *         round_ms (every round's products + AdamW, comma-separated, in order), core_gflop
 *         (the attention core's FLOPs of a step, at (T+1)/2 keys per query), params.
 *         Exit 1 with one line on stderr on bad arguments or no memory. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "optim/adamw.h"

enum { ROUNDS = 5, HEAD_CHUNK = 1024, NFAM = 5 };
static const char *fam_name[NFAM] = {"attention projections", "router", "experts", "lm_head", "AdamW"};

static float *buf(size_t n)
{
    float *p = malloc(n * sizeof(float));
    if (!p) {
        fprintf(stderr, "step_ceiling: out of memory (%zu floats)\n", n);
        exit(1);
    }
    for (size_t i = 0; i < n; i++) p[i] = (float)((i * 2654435761u) % 1000) * 1e-4f - 0.05f;
    return p;
}

/* C (M,N) = op(A) op(B) (+ C with acc), row-major, as model_gemm sees it */
static void mm(int ta, int tb, int M, int N, int K, const float *A, const float *B, float *C, int acc)
{
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1, A,
                ta ? M : K, B, tb ? K : N, acc ? 1 : 0, C, N);
}

int main(int argc, char **argv)
{
    if (argc != 12) {
        fprintf(stderr, "usage: step_ceiling D L H KV HD F E K V B T\n");
        return 1;
    }
    long a[11];
    for (int i = 0; i < 11; i++) {
        char *end;
        a[i] = strtol(argv[i + 1], &end, 10);
        if (*end || a[i] < 1 || a[i] > 1 << 20) {
            fprintf(stderr, "step_ceiling: bad argument '%s' (positive integers: D L H KV HD F E K V B T)\n",
                    argv[i + 1]);
            return 1;
        }
    }
    int D = a[0], L = a[1], H = a[2], KV = a[3], hd = a[4], F = a[5], E = a[6], k = a[7], V = a[8];
    int N = a[9] * a[10], T = a[10], QKV = (H + 2 * KV) * hd, Hd = H * hd, ne = N * k / E;
    if (k > E || ne < 1) {
        fprintf(stderr, "step_ceiling: top_k %d of %d experts leaves no rows per expert\n", k, E);
        return 1;
    }
    /* Weights and gradients per layer. What a step's forward keeps for its backward is kept per
     * layer too (each layer's input, q|k|v, the attention output, the experts' h1|h3), so the
     * backward reads it after the other layers ran, as in a step (it came from memory, not from
     * the cache the layer's own forward just filled); the rest is scratch that one layer
     * writes and reads at once, shared as in moet (the gathered rows, act, the experts'
     * outputs and every gradient of an activation). */
    size_t attn_w = (size_t)QKV * D + (size_t)D * Hd, exp_w = (size_t)3 * F * D;
    size_t Nk = (size_t)N * k, saved = (size_t)N * (D + QKV + Hd) + Nk * 2 * F;
    float *wa = buf(L * attn_w), *ga = buf(L * attn_w), *wg = buf((size_t)L * E * D), *gg = buf((size_t)L * E * D);
    float *we = buf((size_t)L * E * exp_w), *ge = buf((size_t)L * E * exp_w);
    float *wh = buf((size_t)V * D), *gh = buf((size_t)V * D), *keep = buf(L * saved);
    float *dx = buf((size_t)N * D), *dqkv = buf((size_t)N * QKV), *datt = buf((size_t)N * Hd);
    float *z = buf((size_t)N * E), *xs = buf(Nk * D), *ys = buf(Nk * D), *act = buf(Nk * F), *dact = buf(Nk * F);
    int hc = N < HEAD_CHUNK ? N : HEAD_CHUNK;
    float *lg = buf((size_t)hc * V);
    size_t P = (size_t)V * D * 2 + (size_t)L * (attn_w + (size_t)E * D + (size_t)E * exp_w + 2 * (size_t)D) + D;
    float *p = buf(P), *g = buf(P), *m = buf(P), *v = buf(P);
    memset(m, 0, P * sizeof(float));
    memset(v, 0, P * sizeof(float));
    adamw_cfg oc = {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1};
    adamw_seg seg = {0, P, 1};

    double best[NFAM], flops[NFAM] = {0}, round_s[ROUNDS];
    for (int f = 0; f < NFAM; f++) best[f] = 1e30;
    for (int r = 0; r < ROUNDS; r++) {
        double t[NFAM] = {0}, t0;
        /* a step's order: every layer's forward, the head, every layer's backward from the last */
        for (int pass = 0; pass < 2; pass++) {
            if (pass) { /* the head, between the two passes, on the last layer's rows */
                const float *xf = keep + (size_t)(L - 1) * saved;
                t0 = clock_seconds();
                for (int n0 = 0; n0 < N; n0 += hc) {
                    int rows = N - n0 < hc ? N - n0 : hc;
                    mm(0, 1, rows, V, D, xf + (size_t)n0 * D, wh, lg, 0);
                    mm(1, 0, V, D, rows, lg, xf + (size_t)n0 * D, gh, 1);
                    mm(0, 0, rows, D, V, lg, wh, dx + (size_t)n0 * D, 0);
                }
                t[3] = clock_seconds() - t0;
            }
            for (int i = 0; i < L; i++) {
                int l = pass ? L - 1 - i : i;
                float *wqkv = wa + l * attn_w, *wo = wqkv + (size_t)QKV * D;
                float *gqkv = ga + l * attn_w, *go = gqkv + (size_t)QKV * D;
                float *x = keep + l * saved, *qkv = x + (size_t)N * D, *att = qkv + (size_t)N * QKV;
                float *h13 = att + (size_t)N * Hd;
                if (!pass) { /* attention and router before the experts (the backward runs them after) */
                    t0 = clock_seconds();
                    mm(0, 1, N, QKV, D, x, wqkv, qkv, 0);
                    mm(0, 1, N, D, Hd, att, wo, dx, 0);
                    t[0] += clock_seconds() - t0;
                    t0 = clock_seconds();
                    mm(0, 1, N, E, D, x, wg + (size_t)l * E * D, z, 0);
                    t[1] += clock_seconds() - t0;
                }
                t0 = clock_seconds();
#pragma omp parallel for schedule(dynamic, 1)
                for (int e = 0; e < E; e++) {
                    const float *w13 = we + ((size_t)l * E + e) * exp_w, *w2 = w13 + (size_t)2 * F * D;
                    float *g13 = ge + ((size_t)l * E + e) * exp_w, *g2 = g13 + (size_t)2 * F * D;
                    float *xe = xs + (size_t)e * ne * D, *ye = ys + (size_t)e * ne * D;
                    float *he = h13 + (size_t)e * ne * 2 * F, *ae = act + (size_t)e * ne * F;
                    if (!pass) {
                        mm(0, 1, ne, 2 * F, D, xe, w13, he, 0);
                        mm(0, 1, ne, D, F, ae, w2, ye, 0);
                    } else {
                        mm(0, 0, ne, F, D, ye, w2, dact + (size_t)e * ne * F, 0); /* dact = dY W2 */
                        mm(1, 0, D, F, ne, ye, ae, g2, 1);                        /* dW2 += dY^T act */
                        mm(1, 0, 2 * F, D, ne, he, xe, g13, 1);                   /* dW13 += dH^T x */
                        mm(0, 0, ne, D, 2 * F, he, w13, ye, 0);                   /* dX = dH W13 */
                    }
                }
                t[2] += clock_seconds() - t0;
                if (!pass) continue;
                t0 = clock_seconds();
                mm(0, 0, N, D, E, z, wg + (size_t)l * E * D, dx, 1);
                mm(1, 0, E, D, N, z, x, gg + (size_t)l * E * D, 1);
                t[1] += clock_seconds() - t0;
                t0 = clock_seconds();
                mm(0, 0, N, Hd, D, dx, wo, datt, 0);    /* d att = dY Wo */
                mm(1, 0, D, Hd, N, dx, att, go, 1);     /* dWo += dY^T att */
                mm(0, 0, N, D, QKV, dqkv, wqkv, dx, 0); /* dX = dQKV Wqkv */
                mm(1, 0, QKV, D, N, dqkv, x, gqkv, 1);  /* dWqkv += dQKV^T x */
                t[0] += clock_seconds() - t0;
            }
        }
        t0 = clock_seconds();
        adamw_step_consume(&oc, p, g, m, v, &seg, 1, r + 1, 1e-4f, 0.5f);
        t[4] = clock_seconds() - t0;
        round_s[r] = 0;
        for (int f = 0; f < NFAM; f++) {
            if (t[f] < best[f]) best[f] = t[f];
            round_s[r] += t[f];
        }
    }
    flops[0] = 6.0 * N * L * ((double)QKV * D + (double)D * Hd);
    flops[1] = 6.0 * N * L * (double)E * D;
    flops[2] = 6.0 * N * k * L * (double)exp_w;
    flops[3] = 6.0 * N * (double)V * D;
    double products = 0, prod_flops = 0;
    for (int f = 0; f < NFAM; f++) {
        if (f < 4) {
            products += best[f], prod_flops += flops[f];
            printf("%-22s %9.1f ms %7.1f GFLOP/s\n", fam_name[f], best[f] * 1e3, flops[f] / best[f] / 1e9);
        } else
            printf("%-22s %9.1f ms (%zu parameters, memory-bound)\n", fam_name[f], best[f] * 1e3, P);
    }
    printf("products %.1f ms at %.1f GFLOP/s (best of %d rounds, %d threads)\n", products * 1e3,
           prod_flops / products / 1e9, ROUNDS, omp_get_max_threads());
    double ctx = (T + 1) / 2.0;
    printf("products_ms=%.2f\nadamw_ms=%.2f\nround_ms=", products * 1e3, best[4] * 1e3);
    for (int r = 0; r < ROUNDS; r++) printf("%s%.2f", r ? "," : "", round_s[r] * 1e3);
    printf("\ncore_gflop=%.6g\nparams=%zu\n", 3.0 * N * 2.0 * 2.0 * L * ctx * H * hd / 1e9, P);
    float *bufs[] = {wa, ga, wg, gg, we, ge, wh, gh, keep, dx, dqkv, datt, z, xs, ys, act, dact, lg, p, g, m, v};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    return 0;
}
