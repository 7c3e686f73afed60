/* moe: router (softmax, top-k, optionally renormalised weights), dropless experts run as one GEMM per
 * expert on the rows routed to it (sorted by expert), and their backward passes. */
#include "common/par.h"
#include "model/kern.h"
#include "model/layers.h"
#include "model/lora.h"

#include <math.h>
#include <omp.h>
#include <string.h>

void moe_route(float *logits, float *probs, int *topi, float *topw, int *counts, const float *xn, const float *Wg,
               int N, int D, int E, int k, int norm_topk)
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
        if (norm_topk)
            for (int j = 0; j < k; j++) tw[j] /= s;
    }
    if (counts)
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

/* ---- experts
 * An expert's GEMMs are small (tiny: 512 x 1024 x 256; small: 512 x 2816 x 512): splitting
 * each across the cores costs a fork/join per GEMM and packs the same weights on both,
 * while giving whole experts to cores runs single-threaded GEMMs back to back and keeps
 * an expert's elementwise work next to its GEMMs in cache (tiny bench: experts 111 -> 101
 * ms per step with AVX-512 kernels, 136 -> 117 ms backward with AVX2 ones).
 * An expert holding >= 1/threads of the rows (a skewed router) would leave a core idle,
 * so those run first, alone, with threaded GEMMs and loops (every loop here is threaded
 * only outside a parallel region, as OpenBLAS's GEMMs are). Adapters on the experts use
 * the scratch rows of their expert (lora_scratch_rows), so they run side by side too. */

/* order: experts by rows, largest first; returns how many lead it as "run alone". */
static int plan_experts(int *order, const int *off, int E)
{
    for (int i = 0; i < E; i++) {
        int e = i, ne = off[e + 1] - off[e], j = i;
        for (; j > 0 && off[order[j - 1] + 1] - off[order[j - 1]] < ne; j--) order[j] = order[j - 1];
        order[j] = e;
    }
    if (par_inline()) return E; /* one thread, or already inside a parallel region: nothing to split */
    int T = omp_get_max_threads(), total = off[E], alone = 0;
    while (alone < E && (long)(off[order[alone] + 1] - off[order[alone]]) * T >= total) alone++;
    return alone;
}

static void gather_rows(float *xs, const float *xn, const int *row_tok, int r0, int r1, int D)
{
    PAR_FOR(schedule(static), r, r0, r1,
            memcpy(xs + (size_t)r * D, xn + (size_t)row_tok[r] * D, (size_t)D * sizeof(float)););
}

/* act (rows,F) = silu(h1) * h3 where each h13 row is [h1 (F) | h3 (F)]; rows [r0, r1)
 * (vectorised: model/kern.h). */
static void swiglu(float *act, const float *h13, int r0, int r1, int F)
{
    PAR_ROWS(a, b, r0, r1, kern_swiglu(act + (size_t)a * F, h13 + (size_t)a * 2 * F, b - a, F););
}

/* SwiGLU's backward over rows [r0, r1), in place: h13 := dL/dh13 from dact = g, or w[r] g
 * when w is not NULL. With act not NULL it also recomputes act = silu(h1) h3 (the floats
 * swiglu() writes) in the same pass. */
static void swiglu_backward(float *act, float *h13, const float *g, const float *w, int r0, int r1, int F)
{
    PAR_ROWS(a, b, r0, r1,
             kern_swiglu_backward(act ? act + (size_t)a * F : NULL, h13 + (size_t)a * 2 * F, g + (size_t)a * F,
                                  w ? w + a : NULL, b - a, F););
}

/* x rows [r0, r1) (n wide) *= w[r] */
static void scale_rows(float *x, const float *w, int r0, int r1, int n)
{
    PAR_FOR(schedule(static), r, r0, r1, for (int i = 0; i < n; i++) x[(size_t)r * n + i] *= w[r];);
}

/* out[r] (+)= <a[r], b[r]> for rows [r0, r1) of two (., n) matrices, summed in double;
 * add: accumulate instead of overwrite */
static void row_dots(float *out, const float *a, const float *b, int r0, int r1, int n, int add)
{
    PAR_FOR(schedule(static), r, r0, r1,
        const float *x = a + (size_t)r * n, *y = b + (size_t)r * n;
        double acc[MODEL_LANES] = {0}, s = 0;
        int i = 0;
        for (; i + MODEL_LANES <= n; i += MODEL_LANES)
            for (int j = 0; j < MODEL_LANES; j++) acc[j] += (double)x[i + j] * y[i + j];
        for (; i < n; i++) s += (double)x[i] * y[i];
        for (int j = 0; j < MODEL_LANES; j++) s += acc[j];
        out[r] = add ? out[r] + (float)s : (float)s;
    );
}

typedef struct { /* the arguments every expert shares */
    float *h13, *ye, *xs, *act, *dys, *g, *roww, *rowdw, *dw13, *dw2;
    const float *xn;
    const model_mat *w13, *w2;
    const model_tiles *T;
    const int *off, *row_tok;
    int D, F, r, need_x;
    const moe_lora *ml;
} experts_ctx;

static void expert_forward(const experts_ctx *c, int e)
{
    int r0 = c->off[e], r1 = c->off[e + 1], ne = r1 - r0, D = c->D, F = c->F, r = c->r;
    const moe_lora *ml = c->ml;
    float *h = c->h13 + (size_t)r0 * 2 * F, *x = c->xs + (size_t)r0 * D;
    float *y = c->ye + (size_t)r0 * D, *a = c->act + (size_t)r0 * F;
    if (!ne) return;
    lora lv, *lo = ml ? &lv : NULL; /* the adapters' scratch rows of this expert */
    if (ml) lora_scratch_rows(ml->lo, r0, &lv);
    gather_rows(c->xs, c->xn, c->row_tok, r0, r1, D);
    model_mm_xwt(c->T, ne, 1, x, D, &c->w13[e], 0, h, 2 * F);
    if (ml && ml->w1) lora_forward(lo, ml->w1, e, h, 2 * F, x, D, ne, ml->xa1 + (size_t)r0 * r);
    if (ml && ml->w3) lora_forward(lo, ml->w3, e, h + F, 2 * F, x, D, ne, ml->xa3 + (size_t)r0 * r);
    swiglu(c->act, c->h13, r0, r1, F);
    model_mm_xwt(c->T, ne, 1, a, F, &c->w2[e], 0, y, D);
    if (ml && ml->w2) lora_forward(lo, ml->w2, e, y, D, a, F, ne, ml->xa2 + (size_t)r0 * r);
}

/* The combine out[n] += w ye[r] is not kept (ye is not stored): with du[r] = dL/dout of
 * row r's token, dL/dw = <du, ye> = <du W2, act> (+ the w2 adapter's share), and
 * dL/dact = w (du W2). In: dys rows of e = du, roww = w per row. Out: rowdw = dL/dw per
 * row, dys rows of e := dL/dxs, h13 rows := dL/dh13, weight and adapter gradients. */
static void expert_backward(const experts_ctx *c, int e)
{
    int r0 = c->off[e], r1 = c->off[e + 1], ne = r1 - r0, D = c->D, F = c->F, r = c->r;
    const moe_lora *ml = c->ml;
    float *du = c->dys + (size_t)r0 * D, *a = c->act + (size_t)r0 * F, *g = c->g + (size_t)r0 * F;
    float *dh = c->h13 + (size_t)r0 * 2 * F, *x = c->xs + (size_t)r0 * D;
    if (!ne) return;
    lora lv, *lo = ml ? &lv : NULL; /* the adapters' scratch rows of this expert */
    if (ml) lora_scratch_rows(ml->lo, r0, &lv);
    model_mm_xw(c->T, ne, 1, du, D, &c->w2[e], 0, g, F); /* g = du W2 */
    if (ml && ml->w2) /* the adapter adds to dact below: SwiGLU's backward waits for it */
        swiglu(c->act, c->h13, r0, r1, F);
    else
        swiglu_backward(c->act, c->h13, c->g, c->roww, r0, r1, F);
    row_dots(c->rowdw, c->g, c->act, r0, r1, F, 0);
    if (ml && ml->w2) { /* the adapter's part of ye: scale * xa2 B^T, in xs (gathered below) */
        lora_output(lo, ml->w2, e, x, D, ml->xa2 + (size_t)r0 * r, ne);
        row_dots(c->rowdw, c->dys, c->xs, r0, r1, D, 1);
    }
    scale_rows(c->dys, c->roww, r0, r1, D); /* du := dy = w du */
    /* the expert inputs are needed only for weight gradients (a frozen base with no adapter
     * on these projections skips them) */
    if (c->need_x) gather_rows(c->xs, c->xn, c->row_tok, r0, r1, D);
    if (c->dw2) model_gemm(1, 0, D, F, ne, 1, du, D, a, F, 1, c->dw2 + (size_t)e * D * F, F);
    if (ml && ml->w2) {
        lora_backward_w(lo, ml->w2, e, du, D, a, F, ne, ml->xa2 + (size_t)r0 * r);
        scale_rows(c->g, c->roww, r0, r1, F); /* g := dact = w g, then the adapter's share */
        lora_backward_x(lo, ml->w2, e, g, F, ne);
        swiglu_backward(NULL, c->h13, c->g, NULL, r0, r1, F);
    }
    if (c->dw13) model_gemm(1, 0, 2 * F, D, ne, 1, dh, 2 * F, x, D, 1, c->dw13 + (size_t)e * 2 * F * D, D);
    /* dxs overwrites dys (this expert's slice of dys is no longer needed) */
    model_mm_xw(c->T, ne, 1, dh, 2 * F, &c->w13[e], 0, du, D);
    if (ml && ml->w1) {
        lora_backward_w(lo, ml->w1, e, dh, 2 * F, x, D, ne, ml->xa1 + (size_t)r0 * r);
        lora_backward_x(lo, ml->w1, e, du, D, ne);
    }
    if (ml && ml->w3) {
        lora_backward_w(lo, ml->w3, e, dh + F, 2 * F, x, D, ne, ml->xa3 + (size_t)r0 * r);
        lora_backward_x(lo, ml->w3, e, du, D, ne);
    }
}

static void run_experts(const experts_ctx *c, int E, int backward)
{
    int order[E];
    int alone = plan_experts(order, c->off, E);
    for (int i = 0; i < alone; i++)
        backward ? expert_backward(c, order[i]) : expert_forward(c, order[i]);
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = alone; i < E; i++)
        backward ? expert_backward(c, order[i]) : expert_forward(c, order[i]);
}

void moe_experts_forward(const model_tiles *T, float *out, float *h13, float *ye, float *xs, float *act,
                         const float *xn, const model_mat *w13, const model_mat *w2, const int *off,
                         const int *row_tok, const int *slot_row, const float *topw, int N, int D, int F, int E, int k,
                         const moe_lora *ml, const float *res)
{
    experts_ctx c = {.T = T, .h13 = h13, .ye = ye, .xs = xs, .act = act, .xn = xn, .w13 = w13, .w2 = w2, .off = off,
                     .row_tok = row_tok, .D = D, .F = F, .r = ml ? ml->lo->lc.r : 0, .ml = ml};
    run_experts(&c, E, 0);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * D;
        for (int j = 0; j < k; j++) {
            const float *y = ye + (size_t)slot_row[n * k + j] * D, *r = j || !res ? o : res + (size_t)n * D;
            float w = topw[n * k + j];
            for (int d = 0; d < D; d++) o[d] = r[d] + w * y[d];
        }
    }
}

void moe_experts_backward(const model_tiles *T, float *dxn, float *dw13, float *dw2, float *dtopw, const float *dout,
                          float *h13, const float *xn, const model_mat *w13, const model_mat *w2, const int *off,
                          const int *row_tok, const int *slot_row, const float *topw, float *xs, float *act,
                          float *dys, float *g, float *rows, int N, int D, int F, int E, int k, const moe_lora *ml,
                          int set)
{
    int Nk = N * k;
    float *roww = rows, *rowdw = rows + Nk;
    /* combine: out[n] = sum_j w[n,j] ye[r] -> each row r gets its token's dout and weight */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        for (int j = 0; j < k; j++) {
            int r = slot_row[n * k + j];
            memcpy(dys + (size_t)r * D, dout + (size_t)n * D, (size_t)D * sizeof(float));
            roww[r] = topw[n * k + j];
        }
    experts_ctx c = {.T = T, .h13 = h13, .xs = xs, .act = act, .dys = dys, .g = g, .roww = roww, .rowdw = rowdw,
                     .dw13 = dw13, .dw2 = dw2, .xn = xn, .w13 = w13, .w2 = w2, .off = off, .row_tok = row_tok,
                     .D = D, .F = F, .r = ml ? ml->lo->lc.r : 0, .ml = ml,
                     .need_x = dw13 || (ml && (ml->w1 || ml->w3))};
    run_experts(&c, E, 1);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *dx = dxn + (size_t)n * D;
        for (int j = 0; j < k; j++) {
            int r = slot_row[n * k + j];
            const float *gr = dys + (size_t)r * D;
            if (set && !j)
                memcpy(dx, gr, (size_t)D * sizeof(float));
            else
                for (int d = 0; d < D; d++) dx[d] += gr[d];
            dtopw[n * k + j] = rowdw[r];
        }
    }
}

void moe_router_backward(float *dxn, float *dWg, float *dlogits, const float *dtopw, const float *logits,
                         const float *probs, const int *topi, const float *topw, const float *aux_dp, float z_w,
                         const float *xn, const float *Wg, int N, int D, int E, int k, int norm_topk)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * E, *z = logits + (size_t)n * E;
        const float *g = dtopw + (size_t)n * k, *w = topw + (size_t)n * k;
        const int *ti = topi + (size_t)n * k;
        float dp[E];
        for (int e = 0; e < E; e++) dp[e] = aux_dp[e];
        if (norm_topk) { /* w_j = p_j / S over the selected experts */
            float S = 0, gw = 0;
            for (int j = 0; j < k; j++) {
                S += p[ti[j]];
                gw += g[j] * w[j];
            }
            for (int j = 0; j < k; j++) dp[ti[j]] += (g[j] - gw) / S;
        } else { /* w_j = p_j */
            for (int j = 0; j < k; j++) dp[ti[j]] += g[j];
        }
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
