/* moe: router (softmax, top-k, renormalised weights), dropless experts run as one GEMM per
 * expert on the rows routed to it (sorted by expert), and their backward passes. */
#include "model/layers.h"
#include "model/lora.h"

#include <math.h>
#include <string.h>

static inline float sigmoidf(float x) { return 1.0f / (1.0f + model_expf(-x)); }

void moe_route(float *logits, float *probs, int *topi, float *topw, int *counts, const float *xn, const float *Wg,
               int N, int D, int E, int k)
{
    model_gemm(0, 1, N, E, D, 1, xn, D, Wg, D, 0, logits, E);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * E;
        float *p = probs + (size_t)n * E;
        float mx = z[0], sum = 0;
        for (int e = 1; e < E; e++) mx = z[e] > mx ? z[e] : mx;
        for (int e = 0; e < E; e++) sum += p[e] = model_expf(z[e] - mx);
        for (int e = 0; e < E; e++) p[e] /= sum;
        /* top-k by repeated max; ties go to the lower index, as torch.topk does on CPU */
        int *ti = topi + (size_t)n * k;
        float *tw = topw + (size_t)n * k, s = 0;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int i = 0; i < j; i++) taken |= ti[i] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            ti[j] = best;
            s += tw[j] = p[best];
        }
        for (int j = 0; j < k; j++) tw[j] /= s;
    }
    for (int i = 0; i < N * k; i++) counts[topi[i]]++;
}

void moe_sort(int *off, int *row_tok, int *slot_row, const int *topi, int N, int E, int k)
{
    memset(off, 0, (size_t)(E + 1) * sizeof *off);
    for (int i = 0; i < N * k; i++) off[topi[i] + 1]++;
    for (int e = 0; e < E; e++) off[e + 1] += off[e];
    int cur[E];
    memcpy(cur, off, (size_t)E * sizeof *cur);
    for (int i = 0; i < N * k; i++) { /* token order within each expert: deterministic */
        int r = cur[topi[i]]++;
        row_tok[r] = i / k;
        slot_row[i] = r;
    }
}

static void gather_rows(float *xs, const float *xn, const int *row_tok, int Nk, int D)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < Nk; r++) memcpy(xs + (size_t)r * D, xn + (size_t)row_tok[r] * D, (size_t)D * sizeof(float));
}

/* act (rows,F) = silu(h1) * h3 where each h13 row is [h1 (F) | h3 (F)]. */
static void swiglu(float *act, const float *h13, int rows, int F)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *h1 = h13 + (size_t)r * 2 * F, *h3 = h1 + F;
        float *a = act + (size_t)r * F;
        for (int f = 0; f < F; f++) a[f] = h1[f] * sigmoidf(h1[f]) * h3[f];
    }
}

void moe_experts_forward(float *out, float *h13, float *ye, float *xs, float *act, const float *xn,
                         const float *w13, const float *w2, const int *off, const int *row_tok,
                         const int *slot_row, const float *topw, int N, int D, int F, int E, int k,
                         const moe_lora *ml)
{
    int Nk = N * k, r = ml ? ml->lo->lc.r : 0;
    gather_rows(xs, xn, row_tok, Nk, D);
    for (int e = 0; e < E; e++) {
        int r0 = off[e], ne = off[e + 1] - r0;
        float *h = h13 + (size_t)r0 * 2 * F, *x = xs + (size_t)r0 * D;
        model_gemm(0, 1, ne, 2 * F, D, 1, x, D, w13 + (size_t)e * 2 * F * D, D, 0, h, 2 * F);
        if (ml && ml->w1) lora_forward(ml->lo, ml->w1, e, h, 2 * F, x, D, ne, ml->xa1 + (size_t)r0 * r);
        if (ml && ml->w3) lora_forward(ml->lo, ml->w3, e, h + F, 2 * F, x, D, ne, ml->xa3 + (size_t)r0 * r);
    }
    swiglu(act, h13, Nk, F);
    for (int e = 0; e < E; e++) {
        int r0 = off[e], ne = off[e + 1] - r0;
        float *y = ye + (size_t)r0 * D, *a = act + (size_t)r0 * F;
        model_gemm(0, 1, ne, D, F, 1, a, F, w2 + (size_t)e * D * F, F, 0, y, D);
        if (ml && ml->w2) lora_forward(ml->lo, ml->w2, e, y, D, a, F, ne, ml->xa2 + (size_t)r0 * r);
    }
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * D;
        for (int j = 0; j < k; j++) {
            const float *y = ye + (size_t)slot_row[n * k + j] * D;
            float w = topw[n * k + j];
            for (int d = 0; d < D; d++) o[d] += w * y[d];
        }
    }
}

void moe_experts_backward(float *dxn, float *dw13, float *dw2, float *dtopw, const float *dout, const float *h13,
                          const float *ye, const float *xn, const float *w13, const float *w2, const int *off,
                          const int *row_tok, const int *slot_row, const float *topw, float *xs, float *act,
                          float *dys, float *dh13, int N, int D, int F, int E, int k, const moe_lora *ml)
{
    int Nk = N * k, r = ml ? ml->lo->lc.r : 0;
    /* combine: out[n] = sum_j w[n,j] ye[r]  ->  dye[r] = w dout[n], dw[n,j] = <dout[n], ye[r]> */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *g = dout + (size_t)n * D;
        for (int j = 0; j < k; j++) {
            int r = slot_row[n * k + j];
            const float *y = ye + (size_t)r * D;
            float *dy = dys + (size_t)r * D, w = topw[n * k + j], dot = 0;
            for (int d = 0; d < D; d++) {
                dot += g[d] * y[d];
                dy[d] = w * g[d];
            }
            dtopw[n * k + j] = dot;
        }
    }
    /* the expert inputs and activations are needed only for weight gradients (a frozen
     * base with no adapter on these projections skips them) */
    int need_x = dw13 || (ml && (ml->w1 || ml->w3)), need_act = dw2 || (ml && ml->w2);
    if (need_x) gather_rows(xs, xn, row_tok, Nk, D);
    if (need_act) swiglu(act, h13, Nk, F);
    for (int e = 0; e < E; e++) {
        int r0 = off[e], ne = off[e + 1] - r0;
        if (!ne) continue;
        float *dy = dys + (size_t)r0 * D, *a = act + (size_t)r0 * F;
        if (dw2) model_gemm(1, 0, D, F, ne, 1, dy, D, a, F, 1, dw2 + (size_t)e * D * F, F);
        if (ml && ml->w2) lora_backward_w(ml->lo, ml->w2, e, dy, D, a, F, ne, ml->xa2 + (size_t)r0 * r);
        model_gemm(0, 0, ne, F, D, 1, dy, D, w2 + (size_t)e * D * F, F, 0, a, F); /* act := dact */
        if (ml && ml->w2) lora_backward_x(ml->lo, ml->w2, e, a, F, ne);
    }
#pragma omp parallel for schedule(static)
    for (int r = 0; r < Nk; r++) {
        const float *h1 = h13 + (size_t)r * 2 * F, *h3 = h1 + F, *da = act + (size_t)r * F;
        float *d1 = dh13 + (size_t)r * 2 * F, *d3 = d1 + F;
        for (int f = 0; f < F; f++) {
            float s = sigmoidf(h1[f]), silu = h1[f] * s;
            d1[f] = da[f] * h3[f] * s * (1.0f + h1[f] * (1.0f - s));
            d3[f] = da[f] * silu;
        }
    }
    for (int e = 0; e < E; e++) {
        int r0 = off[e], ne = off[e + 1] - r0;
        if (!ne) continue;
        float *dh = dh13 + (size_t)r0 * 2 * F, *x = xs + (size_t)r0 * D, *dx = dys + (size_t)r0 * D;
        if (dw13) model_gemm(1, 0, 2 * F, D, ne, 1, dh, 2 * F, x, D, 1, dw13 + (size_t)e * 2 * F * D, D);
        /* dxs overwrites dys (this expert's slice of dys is no longer needed) */
        model_gemm(0, 0, ne, D, 2 * F, 1, dh, 2 * F, w13 + (size_t)e * 2 * F * D, D, 0, dx, D);
        if (ml && ml->w1) {
            lora_backward_w(ml->lo, ml->w1, e, dh, 2 * F, x, D, ne, ml->xa1 + (size_t)r0 * r);
            lora_backward_x(ml->lo, ml->w1, e, dx, D, ne);
        }
        if (ml && ml->w3) {
            lora_backward_w(ml->lo, ml->w3, e, dh + F, 2 * F, x, D, ne, ml->xa3 + (size_t)r0 * r);
            lora_backward_x(ml->lo, ml->w3, e, dx, D, ne);
        }
    }
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *dx = dxn + (size_t)n * D;
        for (int j = 0; j < k; j++) {
            const float *g = dys + (size_t)slot_row[n * k + j] * D;
            for (int d = 0; d < D; d++) dx[d] += g[d];
        }
    }
}

void moe_router_backward(float *dxn, float *dWg, float *dlogits, const float *dtopw, const float *logits,
                         const float *probs, const int *topi, const float *topw, const float *aux_dp, float z_w,
                         const float *xn, const float *Wg, int N, int D, int E, int k)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * E, *z = logits + (size_t)n * E;
        const float *g = dtopw + (size_t)n * k, *w = topw + (size_t)n * k;
        const int *ti = topi + (size_t)n * k;
        float dp[E];
        for (int e = 0; e < E; e++) dp[e] = aux_dp[e];
        /* w_j = p_j / S over the selected experts */
        float S = 0, gw = 0;
        for (int j = 0; j < k; j++) {
            S += p[ti[j]];
            gw += g[j] * w[j];
        }
        for (int j = 0; j < k; j++) dp[ti[j]] += (g[j] - gw) / S;
        float pdp = 0;
        for (int e = 0; e < E; e++) pdp += p[e] * dp[e];
        float zterm = 0;
        if (z_w != 0) { /* d(lse^2) = 2 lse p */
            float mx = z[0], sum = 0;
            for (int e = 1; e < E; e++) mx = z[e] > mx ? z[e] : mx;
            for (int e = 0; e < E; e++) sum += model_expf(z[e] - mx);
            zterm = 2.0f * z_w * (mx + logf(sum));
        }
        float *dz = dlogits + (size_t)n * E;
        for (int e = 0; e < E; e++) dz[e] = p[e] * (dp[e] - pdp) + zterm * p[e];
    }
    if (dWg) model_gemm(1, 0, E, D, N, 1, dlogits, E, xn, D, 1, dWg, D);
    model_gemm(0, 0, N, D, E, 1, dlogits, E, Wg, D, 1, dxn, D);
}
