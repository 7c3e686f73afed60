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
 * All experts of a layer run as grouped products: one parallel loop per product over tasks
 * (expert, block of output columns), largest experts first, every task a single-threaded
 * GEMM on the expert's rows read in place (moet's kernels pack only the weight block; see
 * model/gemm.c). Whatever the routing (8 experts of hundreds of rows, 128 of tens, or one
 * expert holding most rows) the cores share the work in blocks, and the elementwise passes
 * between the products (gather, SwiGLU, row scales) are parallel over rows. A dense MLP is the
 * case E = 1. Adapters on the experts run per expert between the products, each on its
 * expert's scratch rows (lora_scratch_rows). Every output element is computed by one task in
 * a fixed order, so results do not depend on the thread count. */

typedef struct {
    int e, c0, c1;
} block;

/* Experts with rows, largest first, each cut into column blocks (multiples of 32, at least
 * 64): about 8 tasks per thread over the busy experts. blocks: room for 8 T + 2 E. */
static int plan_blocks(block *b, const int *off, int E, int N)
{
    int order[E], busy = 0, T = omp_get_max_threads();
    for (int i = 0; i < E; i++) {
        int ne = off[i + 1] - off[i], j = i;
        for (; j > 0 && off[order[j - 1] + 1] - off[order[j - 1]] < ne; j--) order[j] = order[j - 1];
        order[j] = i;
        busy += ne > 0;
    }
    int per = busy ? (8 * T + busy - 1) / busy : 1, cb = ((N + per - 1) / per + 31) & ~31, n = 0;
    cb = cb < 64 ? 64 : cb;
    for (int i = 0; i < busy; i++)
        for (int c0 = 0; c0 < N; c0 += cb) b[n++] = (block){order[i], c0, c0 + cb < N ? c0 + cb : N};
    return n;
}

enum { XWT, XW, GRAD };
typedef struct { /* one product per expert e over its rows [off[e], off[e+1]) */
    int kind, N;                 /* N: output columns (GRAD: rows of the gradient) */
    const float *A, *B;          /* rows of A (lda); GRAD: dW[e] += A^T B, B rows (ldb) */
    int lda, ldb, ldc, ldg;
    const model_mat *W;          /* [E]: XWT C = A W^T, XW C = A W */
    float beta, *C;              /* rows of C (ldc) */
    float *G;                    /* GRAD: [E] (N x ldg) fp32 */
} product;

static void run_block(const model_tiles *T, const product *p, const int *off, block bk)
{
    int r0 = off[bk.e], ne = off[bk.e + 1] - r0, w = bk.c1 - bk.c0;
    const float *a = p->A + (size_t)r0 * p->lda;
    if (p->kind == XWT)
        model_mm_xwt_rows(T, ne, 1, a, p->lda, &p->W[bk.e], bk.c0, bk.c1, p->beta, p->C + (size_t)r0 * p->ldc + bk.c0,
                          p->ldc);
    else if (p->kind == XW)
        model_mm_xw_cols(T, ne, 1, a, p->lda, &p->W[bk.e], bk.c0, bk.c1, p->beta, p->C + (size_t)r0 * p->ldc + bk.c0,
                         p->ldc);
    else
        model_gemm(1, 0, w, p->ldg, ne, 1, a + bk.c0, p->lda, p->B + (size_t)r0 * p->ldb, p->ldb, 1,
                   p->G + ((size_t)bk.e * p->N + bk.c0) * p->ldg, p->ldg);
}

static void grouped(const model_tiles *T, const product *p, const int *off, int E)
{
    block b[8 * omp_get_max_threads() + 2 * E + 1];
    int n = plan_blocks(b, off, E, p->N);
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n; i++) run_block(T, p, off, b[i]);
}

/* per expert e with rows: f(ctx, e), in parallel */
static void each_expert(void (*f)(const void *, int), const void *ctx, const int *off, int E)
{
#pragma omp parallel for schedule(dynamic, 1)
    for (int e = 0; e < E; e++)
        if (off[e + 1] > off[e]) f(ctx, e);
}

static void gather_rows(float *xs, const float *xn, const int *row_tok, int rows, int D)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) memcpy(xs + (size_t)r * D, xn + (size_t)row_tok[r] * D, (size_t)D * sizeof(float));
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
    float *h13, *xs, *act, *dys, *g, *roww, *rowdw;
    const int *off;
    int D, F, r;
    const moe_lora *ml;
} experts_ctx;

static const lora *scratch_of(const experts_ctx *c, int e, lora *view)
{
    lora_scratch_rows(c->ml->lo, c->off[e], view); /* the adapters' scratch rows of this expert */
    return view;
}

/* forward adapters: w1 and w3 add to h13 (after its product), w2 to ye (after its product) */
static void lora13_forward(const void *p, int e)
{
    const experts_ctx *c = p;
    const moe_lora *ml = c->ml;
    int r0 = c->off[e], ne = c->off[e + 1] - r0, D = c->D, F = c->F, r = c->r;
    float *h = c->h13 + (size_t)r0 * 2 * F, *x = c->xs + (size_t)r0 * D;
    lora lv;
    const lora *lo = scratch_of(c, e, &lv);
    if (ml->w1) lora_forward(lo, ml->w1, e, h, 2 * F, x, D, ne, ml->xa1 + (size_t)r0 * r);
    if (ml->w3) lora_forward(lo, ml->w3, e, h + F, 2 * F, x, D, ne, ml->xa3 + (size_t)r0 * r);
}

static void lora2_forward(const void *p, int e)
{
    const experts_ctx *c = p;
    int r0 = c->off[e], ne = c->off[e + 1] - r0, D = c->D, F = c->F, r = c->r;
    lora lv;
    lora_forward(scratch_of(c, e, &lv), c->ml->w2, e, c->dys + (size_t)r0 * D, D, c->act + (size_t)r0 * F, F, ne,
                 c->ml->xa2 + (size_t)r0 * r);
}

void moe_experts_forward(const model_tiles *T, float *out, float *h13, float *ye, float *xs, float *act,
                         const float *xn, const model_mat *w13, const model_mat *w2, const int *off,
                         const int *row_tok, const int *slot_row, const float *topw, int N, int D, int F, int E, int k,
                         const moe_lora *ml)
{
    int Nk = off[E];
    experts_ctx c = {.h13 = h13, .xs = xs, .act = act, .dys = ye, .off = off, .D = D, .F = F,
                     .r = ml ? ml->lo->lc.r : 0, .ml = ml};
    gather_rows(xs, xn, row_tok, Nk, D);
    grouped(T, &(product){.kind = XWT, .N = 2 * F, .A = xs, .lda = D, .W = w13, .C = h13, .ldc = 2 * F}, off, E);
    if (ml && (ml->w1 || ml->w3)) each_expert(lora13_forward, &c, off, E);
    PAR_FOR(schedule(static), r, 0, Nk, kern_swiglu(act + (size_t)r * F, h13 + (size_t)r * 2 * F, 1, F););
    grouped(T, &(product){.kind = XWT, .N = D, .A = act, .lda = F, .W = w2, .C = ye, .ldc = D}, off, E);
    if (ml && ml->w2) each_expert(lora2_forward, &c, off, E);
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

/* backward with an adapter on w2: its share of ye into dL/dw, then its gradients, and dact
 * gains its input-gradient term before SwiGLU's backward */
static void lora2_output(const void *p, int e)
{
    const experts_ctx *c = p;
    int r0 = c->off[e], ne = c->off[e + 1] - r0, D = c->D, r = c->r;
    lora lv; /* the adapter's part of ye: scale * xa2 B^T, into xs (gathered again below) */
    lora_output(scratch_of(c, e, &lv), c->ml->w2, e, c->xs + (size_t)r0 * D, D, c->ml->xa2 + (size_t)r0 * r, ne);
    row_dots(c->rowdw, c->dys, c->xs, r0, r0 + ne, D, 1);
}

static void lora2_backward(const void *p, int e)
{
    const experts_ctx *c = p;
    int r0 = c->off[e], ne = c->off[e + 1] - r0, D = c->D, F = c->F, r = c->r;
    lora lv;
    const lora *lo = scratch_of(c, e, &lv);
    lora_backward_w(lo, c->ml->w2, e, c->dys + (size_t)r0 * D, D, c->act + (size_t)r0 * F, F, ne,
                    c->ml->xa2 + (size_t)r0 * r);
    scale_rows(c->g, c->roww, r0, r0 + ne, F); /* g := dact = w g, then the adapter's share */
    lora_backward_x(lo, c->ml->w2, e, c->g + (size_t)r0 * F, F, ne);
    for (int q = r0; q < r0 + ne; q++)
        kern_swiglu_backward(NULL, c->h13 + (size_t)q * 2 * F, c->g + (size_t)q * F, NULL, 1, F);
}

static void lora13_backward(const void *p, int e)
{
    const experts_ctx *c = p;
    const moe_lora *ml = c->ml;
    int r0 = c->off[e], ne = c->off[e + 1] - r0, D = c->D, F = c->F, r = c->r;
    float *dh = c->h13 + (size_t)r0 * 2 * F, *x = c->xs + (size_t)r0 * D, *du = c->dys + (size_t)r0 * D;
    lora lv;
    const lora *lo = scratch_of(c, e, &lv);
    if (ml->w1) {
        lora_backward_w(lo, ml->w1, e, dh, 2 * F, x, D, ne, ml->xa1 + (size_t)r0 * r);
        lora_backward_x(lo, ml->w1, e, du, D, ne);
    }
    if (ml->w3) {
        lora_backward_w(lo, ml->w3, e, dh + F, 2 * F, x, D, ne, ml->xa3 + (size_t)r0 * r);
        lora_backward_x(lo, ml->w3, e, du, D, ne);
    }
}

/* The combine out[n] += w ye[r] is not kept (ye is not stored): with du[r] = dL/dout of
 * row r's token, dL/dw = <du, ye> = <du W2, act> (+ the w2 adapter's share), and
 * dL/dact = w (du W2). */
void moe_experts_backward(const model_tiles *T, float *dxn, float *dw13, float *dw2, float *dtopw, const float *dout,
                          float *h13, const float *xn, const model_mat *w13, const model_mat *w2, const int *off,
                          const int *row_tok, const int *slot_row, const float *topw, float *xs, float *act,
                          float *dys, float *g, float *rows, int N, int D, int F, int E, int k, const moe_lora *ml)
{
    int Nk = N * k, lw2 = ml && ml->w2;
    float *roww = rows, *rowdw = rows + Nk;
    /* combine: out[n] = sum_j w[n,j] ye[r] -> each row r gets its token's dout and weight */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        for (int j = 0; j < k; j++) {
            int r = slot_row[n * k + j];
            memcpy(dys + (size_t)r * D, dout + (size_t)n * D, (size_t)D * sizeof(float));
            roww[r] = topw[n * k + j];
        }
    experts_ctx c = {.h13 = h13, .xs = xs, .act = act, .dys = dys, .g = g, .roww = roww, .rowdw = rowdw, .off = off,
                     .D = D, .F = F, .r = ml ? ml->lo->lc.r : 0, .ml = ml};
    grouped(T, &(product){.kind = XW, .N = F, .A = dys, .lda = D, .W = w2, .C = g, .ldc = F}, off, E); /* g = du W2 */
    /* SwiGLU's backward (h13 := dL/dh13) waits for the w2 adapter's dact term; act again */
    if (lw2) PAR_FOR(schedule(static), r, 0, Nk, kern_swiglu(act + (size_t)r * F, h13 + (size_t)r * 2 * F, 1, F););
    else
        PAR_FOR(schedule(static), r, 0, Nk,
                kern_swiglu_backward(act + (size_t)r * F, h13 + (size_t)r * 2 * F, g + (size_t)r * F, roww + r, 1, F););
    row_dots(rowdw, g, act, 0, Nk, F, 0);
    if (lw2) each_expert(lora2_output, &c, off, E);
    scale_rows(dys, roww, 0, Nk, D); /* du := dy = w du */
    /* the expert inputs are needed only for weight gradients (a frozen base with no adapter
     * on these projections skips them) */
    if (dw13 || (ml && (ml->w1 || ml->w3))) gather_rows(xs, xn, row_tok, Nk, D);
    if (dw2) grouped(T, &(product){.kind = GRAD, .N = D, .A = dys, .lda = D, .B = act, .ldb = F, .G = dw2, .ldg = F},
                     off, E);
    if (lw2) each_expert(lora2_backward, &c, off, E);
    if (dw13)
        grouped(T, &(product){.kind = GRAD, .N = 2 * F, .A = h13, .lda = 2 * F, .B = xs, .ldb = D, .G = dw13, .ldg = D},
                off, E);
    /* dxs overwrites dys (not needed after this) */
    grouped(T, &(product){.kind = XW, .N = D, .A = h13, .lda = 2 * F, .W = w13, .C = dys, .ldc = D}, off, E);
    if (ml && (ml->w1 || ml->w3)) each_expert(lora13_backward, &c, off, E);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *dx = dxn + (size_t)n * D;
        for (int j = 0; j < k; j++) {
            int r = slot_row[n * k + j];
            const float *gr = dys + (size_t)r * D;
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
