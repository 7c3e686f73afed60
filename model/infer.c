/* infer: KV-cache inference. The prefill runs chunks of new tokens (rows) at positions
 * pos..pos+n-1 through the training kernels (GEMMs, sorted experts); the decode step runs
 * one token through matrix-vector products inside a single parallel region (step_one).
 * Keys are cached after RoPE, so a cached position is never touched again. */
#include "model/infer.h"

#include "common/err.h"
#include "model/layers.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define IQ 32 /* query rows per attention block: scores of IQ x ctx per thread */

struct infer {
    const model *m;
    int ctx, pos, R, nthreads; /* R: rows per chunk */
    float *kc, *vc;            /* (L, ctx, KV*hd) keys after RoPE, values */
    float *cos_t, *sin_t;      /* (ctx, hd/2) */
    /* scratch for R rows, k = top_k routed rows each */
    int *pos_r;                /* (R) */
    float *x, *xn, *rstd;      /* (R, D) x2, (R) */
    float *qkv, *att;          /* (R, QKV), (R, H*hd) */
    float *rl, *probs;         /* (R, E) */
    int *topi, *counts;        /* (R, k), (E) */
    float *topw;               /* (R, k) */
    int *off, *row_tok, *slot_row; /* (E+1), (R*k), (R*k) */
    float *h13, *ye, *xs, *act;    /* (R*k, 2F), (R*k, D), (R*k, D), (R*k, F) */
    float *scores;             /* (nthreads, IQ, ctx) */
    /* per-thread scratch of the one-token step (each thread keeps its own normed input and
     * routing, computed redundantly, instead of waiting for one thread to share them) */
    float *t_xn, *t_act, *t_rl, *t_probs, *t_topw, *t_rstd; /* (nt, D), (nt, k*F), (nt, E) x2, (nt, k), (nt) */
    int *t_topi, *t_counts;    /* (nt, k), (nt, E) */
    size_t bytes;
    char *mem;
};

static void *carve(char **p, size_t bytes)
{
    void *r = *p;
    *p += (bytes + 63) & ~(size_t)63;
    return r;
}

/* Assign every pointer of s from base (NULL base: just count bytes). */
static size_t layout(struct infer *s, const model_config *c, int ctx, int R, int nthreads_, char *base)
{
    size_t nthreads = nthreads_, L = c->n_layers, D = c->dim, E = c->n_experts, k = c->top_k, F = c->ffn;
    size_t hd = c->head_dim;
    size_t KVd = (size_t)c->n_kv_heads * hd, Hd = (size_t)c->n_heads * hd, QKV = Hd + 2 * KVd, Rk = (size_t)R * k;
    const size_t f = sizeof(float), i = sizeof(int);
    char *p = base ? base : (char *)64, *p0 = p;
    s->kc = carve(&p, L * ctx * KVd * f);
    s->vc = carve(&p, L * ctx * KVd * f);
    s->cos_t = carve(&p, (size_t)ctx * hd / 2 * f);
    s->sin_t = carve(&p, (size_t)ctx * hd / 2 * f);
    s->pos_r = carve(&p, R * i);
    s->x = carve(&p, R * D * f);
    s->xn = carve(&p, R * D * f);
    s->rstd = carve(&p, R * f);
    s->qkv = carve(&p, R * QKV * f);
    s->att = carve(&p, R * Hd * f);
    s->rl = carve(&p, R * E * f);
    s->probs = carve(&p, R * E * f);
    s->topi = carve(&p, Rk * i);
    s->counts = carve(&p, E * i);
    s->topw = carve(&p, Rk * f);
    s->off = carve(&p, (E + 1) * i);
    s->row_tok = carve(&p, Rk * i);
    s->slot_row = carve(&p, Rk * i);
    s->h13 = carve(&p, Rk * 2 * F * f);
    s->ye = carve(&p, Rk * D * f);
    s->xs = carve(&p, Rk * D * f);
    s->act = carve(&p, Rk * F * f);
    s->scores = carve(&p, (size_t)nthreads * IQ * ctx * f);
    s->t_xn = carve(&p, nthreads * D * f);
    s->t_act = carve(&p, nthreads * k * F * f);
    s->t_rl = carve(&p, nthreads * E * f);
    s->t_probs = carve(&p, nthreads * E * f);
    s->t_topw = carve(&p, nthreads * k * f);
    s->t_rstd = carve(&p, nthreads * f);
    s->t_topi = carve(&p, nthreads * k * i);
    s->t_counts = carve(&p, nthreads * E * i);
    return (size_t)(p - p0);
}

static int chunk_rows(int ctx) { return ctx < INFER_CHUNK ? ctx : INFER_CHUNK; }

size_t infer_bytes(const model_config *c, int ctx)
{
    struct infer s;
    return layout(&s, c, ctx, chunk_rows(ctx), omp_get_max_threads(), NULL);
}

int infer_create(infer **out, const model *m, int ctx, char *err)
{
    *out = NULL;
    if (ctx < 1) return err_set(err, "inference context must hold at least 1 position (got %d)", ctx);
    if (m->lora) return err_set(err, "inference runs on plain weights: merge the LoRA adapters first (lora_merge)");
    struct infer *s = calloc(1, sizeof *s);
    if (!s) return err_set(err, "out of memory");
    s->m = m;
    s->ctx = ctx;
    s->R = chunk_rows(ctx);
    s->nthreads = omp_get_max_threads();
    s->bytes = layout(s, &m->c, ctx, s->R, s->nthreads, NULL);
    if (posix_memalign((void **)&s->mem, 64, s->bytes)) {
        double gib = s->bytes / 1073741824.0;
        free(s);
        return err_set(err, "out of memory allocating %.2f GiB for a KV cache of %d positions", gib, ctx);
    }
    layout(s, &m->c, ctx, s->R, s->nthreads, s->mem);
    /* RoPE tables in double, exactly as model_acts_create builds them. */
    int hd = m->c.head_dim, half = hd / 2;
    for (int t = 0; t < ctx; t++)
        for (int i = 0; i < half; i++) {
            double ang = t * pow(m->c.rope_theta, -2.0 * i / hd);
            s->cos_t[(size_t)t * half + i] = (float)cos(ang);
            s->sin_t[(size_t)t * half + i] = (float)sin(ang);
        }
    *out = s;
    return 0;
}

void infer_free(infer *s)
{
    if (!s) return;
    free(s->mem);
    free(s);
}

void infer_reset(infer *s) { s->pos = 0; }
int infer_pos(const infer *s) { return s->pos; }
int infer_ctx(const infer *s) { return s->ctx; }

/* C (M,N) = alpha * A (M,K) B^T + beta * C where B is (N,K): a GEMM, or a matrix-vector
 * product when there is one row (OpenBLAS's sgemm does not take that shortcut itself). */
static void mm_nt(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                  float *C, int ldc)
{
    if (M == 1) cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, B, ldb, A, 1, beta, C, 1);
    else model_gemm(0, 1, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* Attention of the n new rows (positions p0..p0+n-1, their q in qkv (n, QKV)) over the
 * cached keys/values kc, vc (ctx, KV*hd) of one layer, for head h and query rows
 * [i0, i0+IQ): att (n, H*hd). Row i sees keys [max(0, p0+i-W+1), p0+i] (W = sliding window,
 * 0 = none). Runs on one thread (scores in that thread's scratch). */
static void attend_task(struct infer *s, const float *kc, const float *vc, int p0, int n, int h, int i0)
{
    const model_config *c = &s->m->c;
    int H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, g = h / (H / KV), W = c->sliding_window;
    int QKV = (H + 2 * KV) * hd, ldk = KV * hd, ldo = H * hd, m = n - i0 < IQ ? n - i0 : IQ;
    float scale = 1.0f / sqrtf((float)hd);
    float *S = s->scores + (size_t)omp_get_thread_num() * IQ * s->ctx;
    int jlo = W > 0 && p0 + i0 - W + 1 > 0 ? p0 + i0 - W + 1 : 0; /* the block's first row sees least */
    int nj = p0 + i0 + m - jlo;
    const float *Q = s->qkv + (size_t)i0 * QKV + h * hd;
    const float *K = kc + (size_t)jlo * ldk + g * hd, *V = vc + (size_t)jlo * ldk + g * hd;
    float *O = s->att + (size_t)i0 * ldo + h * hd;
    mm_nt(m, nj, hd, scale, Q, QKV, K, ldk, 0, S, nj); /* S (m, nj) */
    for (int i = 0; i < m; i++) {
        int t = p0 + i0 + i, lo = (W > 0 && t - W + 1 > 0 ? t - W + 1 : 0) - jlo, hi = t - jlo;
        model_softmax_span(S + (size_t)i * nj, nj, lo, hi);
    }
    if (m == 1) cblas_sgemv(CblasRowMajor, CblasTrans, nj, hd, 1, V, ldk, S, 1, 0, O, 1);
    else model_gemm(0, 0, m, hd, nj, 1, S, nj, V, ldk, 0, O, ldo);
}

static void attend(struct infer *s, const float *kc, const float *vc, int p0, int n)
{
    int H = s->m->c.n_heads, nblk = (n + IQ - 1) / IQ;
#pragma omp parallel for schedule(dynamic, 1)
    for (int task = 0; task < H * nblk; task++) attend_task(s, kc, vc, p0, n, task / nblk, (task % nblk) * IQ);
}

/* n (<= R) new tokens through every layer; leaves the last hidden states in s->x (n, D)
 * and their keys/values in the cache. */
static void run_rows(struct infer *s, const int32_t *tokens, int n)
{
    const model *m = s->m;
    const model_config *c = &m->c;
    int D = c->dim, E = c->n_experts, k = c->top_k, F = c->ffn, p0 = s->pos;
    int H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, Hd = H * hd, KVd = KV * hd, QKV = Hd + 2 * KVd;
    for (int i = 0; i < n; i++) {
        memcpy(s->x + (size_t)i * D, m->embed + (size_t)tokens[i] * D, (size_t)D * sizeof(float));
        s->pos_r[i] = p0 + i;
    }
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *Wl = &m->layers[l];
        float *kc = s->kc + (size_t)l * s->ctx * KVd, *vc = s->vc + (size_t)l * s->ctx * KVd;
        model_rmsnorm_forward(s->xn, s->rstd, s->x, Wl->attn_norm, n, D, c->norm_eps);
        mm_nt(n, QKV, D, 1, s->xn, D, Wl->wqkv, D, 0, s->qkv, QKV);
        attn_rope(s->qkv, s->pos_r, s->cos_t, s->sin_t, n, H, KV, hd, 0);
        for (int i = 0; i < n; i++) {
            const float *row = s->qkv + (size_t)i * QKV;
            memcpy(kc + (size_t)(p0 + i) * KVd, row + Hd, (size_t)KVd * sizeof(float));
            memcpy(vc + (size_t)(p0 + i) * KVd, row + Hd + KVd, (size_t)KVd * sizeof(float));
        }
        attend(s, kc, vc, p0, n);
        mm_nt(n, D, Hd, 1, s->att, Hd, Wl->wo, Hd, 1, s->x, D); /* x += att Wo^T */
        model_rmsnorm_forward(s->xn, s->rstd, s->x, Wl->ffn_norm, n, D, c->norm_eps);
        memset(s->counts, 0, (size_t)E * sizeof(int));
        moe_route(s->rl, s->probs, s->topi, s->topw, s->counts, s->xn, Wl->gate, n, D, E, k);
        moe_sort(s->off, s->row_tok, s->slot_row, s->topi, n, E, k);
        moe_experts_forward(s->x, s->h13, s->ye, s->xs, s->act, s->xn, Wl->w13, Wl->w2, s->off, s->row_tok,
                            s->slot_row, s->topw, n, D, F, E, k, NULL);
    }
    s->pos += n;
}

/* logits (rows, V) of the hidden states x (rows, D) after the final norm (into xn). */
static void head(struct infer *s, const float *x, int rows, float *logits)
{
    const model *m = s->m;
    int D = m->c.dim, V = m->c.vocab;
    model_rmsnorm_forward(s->xn, s->rstd, x, m->final_norm, rows, D, m->c.norm_eps);
    mm_nt(rows, V, D, 1, s->xn, D, m->lm_head, D, 0, logits, V);
}

/* ------------------------------------------------------------- the one-token step */

/* This thread's share [r0, r1) of rows, inside a parallel region. */
static inline void my_rows(int rows, int *r0, int *r1)
{
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    *r0 = (int)((long)rows * t / nt);
    *r1 = (int)((long)rows * (t + 1) / nt);
}

/* y[r0..r1) = W[r0..r1) x (+ y when beta = 1), W (rows, K): one single-threaded sgemv on
 * this thread's rows (OpenBLAS does not start threads inside a parallel region). */
static inline void rows_matvec(float *y, const float *W, const float *x, int r0, int r1, int K, float beta)
{
    if (r1 > r0) cblas_sgemv(CblasRowMajor, CblasNoTrans, r1 - r0, K, 1, W + (size_t)r0 * K, K, x, 1, beta, y + r0, 1);
}

/* One token at position p through every layer and the head, in ONE parallel region: a
 * decode step is ~15 small products, and a fork/join for each would cost more than the
 * arithmetic at small sizes (and far more when the cores are shared). Every thread owns a
 * slice of the output rows of each product; the O(D) parts (norms, routing) are computed
 * by every thread on its own copy, so only 5 barriers per layer remain. The arithmetic per
 * value is that of the batched path (same kernels, same order of the expert sum). */
static void step_one(struct infer *s, int32_t token, int p, float *logits)
{
    const model *m = s->m;
    const model_config *c = &m->c;
    int D = c->dim, E = c->n_experts, k = c->top_k, F = c->ffn, V = c->vocab;
    int H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, Hd = H * hd, KVd = KV * hd, QKV = Hd + 2 * KVd;
    memcpy(s->x, m->embed + (size_t)token * D, (size_t)D * sizeof(float));
    s->pos_r[0] = p;
#pragma omp parallel num_threads(s->nthreads)
    {
        int t = omp_get_thread_num(), r0, r1;
        float *xn = s->t_xn + (size_t)t * D, *act = s->t_act + (size_t)t * k * F, *topw = s->t_topw + (size_t)t * k;
        float *rl = s->t_rl + (size_t)t * E, *probs = s->t_probs + (size_t)t * E, *rstd = s->t_rstd + t;
        int *topi = s->t_topi + (size_t)t * k, *counts = s->t_counts + (size_t)t * E;
        for (int l = 0; l < c->n_layers; l++) {
            const model_layer *Wl = &m->layers[l];
            float *kc = s->kc + (size_t)l * s->ctx * KVd, *vc = s->vc + (size_t)l * s->ctx * KVd;
            model_rmsnorm_forward(xn, rstd, s->x, Wl->attn_norm, 1, D, c->norm_eps);
            my_rows(QKV, &r0, &r1);
            rows_matvec(s->qkv, Wl->wqkv, xn, r0, r1, D, 0);
#pragma omp barrier
#pragma omp single
            {
                attn_rope(s->qkv, s->pos_r, s->cos_t, s->sin_t, 1, H, KV, hd, 0);
                memcpy(kc + (size_t)p * KVd, s->qkv + Hd, (size_t)KVd * sizeof(float));
                memcpy(vc + (size_t)p * KVd, s->qkv + Hd + KVd, (size_t)KVd * sizeof(float));
            }
#pragma omp for schedule(static)
            for (int h = 0; h < H; h++) attend_task(s, kc, vc, p, 1, h, 0);
            my_rows(D, &r0, &r1);
            rows_matvec(s->x, Wl->wo, s->att, r0, r1, Hd, 1); /* x += Wo att */
#pragma omp barrier
            model_rmsnorm_forward(xn, rstd, s->x, Wl->ffn_norm, 1, D, c->norm_eps);
            memset(counts, 0, (size_t)E * sizeof *counts);
            moe_route(rl, probs, topi, topw, counts, xn, Wl->gate, 1, D, E, k);
            my_rows(k * 2 * F, &r0, &r1); /* the k experts' w1|w3 rows, as one index space */
            for (int j = 0; j < k; j++) {
                int lo = r0 > j * 2 * F ? r0 - j * 2 * F : 0, hi = r1 - j * 2 * F < 2 * F ? r1 - j * 2 * F : 2 * F;
                rows_matvec(s->h13 + (size_t)j * 2 * F, Wl->w13 + (size_t)topi[j] * 2 * F * D, xn, lo, hi, D, 0);
            }
#pragma omp barrier
            for (int j = 0; j < k; j++) { /* silu(h1) * h3, as moe.c's swiglu */
                const float *h1 = s->h13 + (size_t)j * 2 * F, *h3 = h1 + F;
                for (int f = 0; f < F; f++) act[j * F + f] = h1[f] * (1.0f / (1.0f + model_expf(-h1[f]))) * h3[f];
            }
            my_rows(D, &r0, &r1);
            for (int j = 0; j < k; j++)
                rows_matvec(s->ye + (size_t)j * D, Wl->w2 + (size_t)topi[j] * D * F, act + (size_t)j * F, r0, r1, F, 0);
            for (int d = r0; d < r1; d++)
                for (int j = 0; j < k; j++) s->x[d] += topw[j] * s->ye[(size_t)j * D + d];
#pragma omp barrier
        }
        model_rmsnorm_forward(xn, rstd, s->x, m->final_norm, 1, D, c->norm_eps);
        my_rows(V, &r0, &r1);
        if (logits) rows_matvec(logits, m->lm_head, xn, r0, r1, D, 0);
    }
}

static int check_tokens(const struct infer *s, const int32_t *tokens, int n, char *err)
{
    if (n < 1) return err_set(err, "no tokens to add");
    if (n > s->ctx - s->pos)
        return err_set(err, "context full: %d positions used, %d more do not fit in %d", s->pos, n, s->ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->m->c.vocab)
            return err_set(err, "token id %d is outside the vocabulary (%d)", tokens[i], s->m->c.vocab);
    return 0;
}

int infer_prefill(infer *s, const int32_t *tokens, int n, float *logits_last, float *logits_all, char *err)
{
    if (check_tokens(s, tokens, n, err)) return -1;
    int D = s->m->c.dim, V = s->m->c.vocab;
    for (int i0 = 0; i0 < n; i0 += s->R) {
        int rows = n - i0 < s->R ? n - i0 : s->R;
        run_rows(s, tokens + i0, rows);
        if (logits_all) head(s, s->x, rows, logits_all + (size_t)i0 * V);
        if (logits_last && i0 + rows == n) {
            if (logits_all) memcpy(logits_last, logits_all + (size_t)(n - 1) * V, (size_t)V * sizeof(float));
            else head(s, s->x + (size_t)(rows - 1) * D, 1, logits_last);
        }
    }
    return 0;
}

int infer_step(infer *s, int32_t token, float *logits, char *err)
{
    if (check_tokens(s, &token, 1, err)) return -1;
    step_one(s, token, s->pos, logits);
    s->pos++;
    return 0;
}
