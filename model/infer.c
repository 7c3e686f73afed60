/* infer: KV-cache inference. The prefill runs chunks of new tokens (rows) at positions
 * pos..pos+n-1 through the training kernels (GEMMs, sorted experts); the decode step runs
 * one token through matrix-vector products inside a single parallel region (step_one).
 * Keys are cached after RoPE, so a cached position is never touched again. Every family's
 * layer parts (biases, q/k norms, clip, dense MLP, shared expert) and LoRA adapters left
 * unmerged (a 16-bit base cannot take them in place) run on both paths. */
#include "model/infer.h"

#include "common/err.h"
#include "common/half.h"
#include "model/kern.h"
#include "model/layers.h"
#include "model/lora.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define IQ 32 /* query rows per attention block: scores of IQ x ctx per thread */

struct infer {
    const model *m;
    int ctx, pos, R, nthreads, Fs, r; /* R: rows per chunk; Fs: largest dense MLP; r: LoRA rank */
    float *kc, *vc;            /* (L, ctx, KV*hd) keys after RoPE, values */
    float *cos_t, *sin_t;      /* (ctx, hd/2) */
    /* scratch for R rows, k = top_k routed rows each */
    int *pos_r;                /* (R) */
    float *x, *xn, *rstd;      /* (R, D) x2, (R) */
    float *qkv, *qkr, *att;    /* (R, QKV), (R, H+KV), (R, H*hd) */
    float *rl, *probs;         /* (R, E) */
    int *topi, *counts;        /* (R, k), (E) */
    float *topw;               /* (R, k) */
    int *off, *row_tok, *slot_row, *ident, dense_off[2]; /* (E+1), (R*k), (R*k), (R) */
    float *h13, *ye, *xs, *act;    /* (Rk, 2F | R 2Fs), (Rk, D), (Rk, D), (Rk, F | R Fs) */
    float *sw;                 /* (R) dense MLP row weights */
    float *lxa;                /* (3 R*k + R, r) adapters' xa */
    float *scores;             /* (nthreads, IQ, ctx) */
    /* per-thread scratch of the one-token step (each thread keeps its own normed input and
     * routing, computed redundantly, instead of waiting for one thread to share them) */
    float *t_xn, *t_act, *t_rl, *t_probs, *t_topw, *t_rstd, *t_xa; /* (nt, D), (nt, kF+Fs), (nt, E) x2, (nt, k), (nt), (nt, r) */
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

static int max_dense(const model_config *c)
{
    int m = 0;
    for (int l = 0; l < c->n_layers; l++)
        if (model_layer_dense_ffn(c, l) > m) m = model_layer_dense_ffn(c, l);
    return m;
}

/* Assign every pointer of s from base (NULL base: just count bytes). */
static size_t layout(struct infer *s, const model_config *c, int ctx, int R, int nthreads_, int lr, char *base)
{
    size_t nthreads = nthreads_, L = c->n_layers, D = c->dim, E = c->n_experts, k = c->top_k, F = c->ffn;
    size_t hd = c->head_dim, Fs = max_dense(c), r = lr;
    size_t KVd = (size_t)c->n_kv_heads * hd, Hd = (size_t)c->n_heads * hd, QKV = Hd + 2 * KVd, Rk = (size_t)R * k;
    size_t h = Rk * 2 * F + (size_t)R * 2 * Fs; /* the step puts a dense MLP's h after k experts' */
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
    s->qkr = carve(&p, R * (c->n_heads + c->n_kv_heads) * f);
    s->att = carve(&p, R * Hd * f);
    s->rl = carve(&p, R * E * f);
    s->probs = carve(&p, R * E * f);
    s->topi = carve(&p, Rk * i);
    s->counts = carve(&p, E * i);
    s->topw = carve(&p, Rk * f);
    s->off = carve(&p, (E + 1) * i);
    s->row_tok = carve(&p, Rk * i);
    s->slot_row = carve(&p, Rk * i);
    s->ident = carve(&p, R * i);
    s->h13 = carve(&p, h * f);
    s->ye = carve(&p, (Rk + R) * D * f);
    s->xs = carve(&p, Rk * D * f);
    s->act = carve(&p, h / 2 * f);
    s->sw = carve(&p, R * f);
    s->lxa = r ? carve(&p, (3 * Rk + R) * r * f) : NULL;
    s->scores = carve(&p, (size_t)nthreads * IQ * ctx * f);
    s->t_xn = carve(&p, nthreads * D * f);
    s->t_act = carve(&p, nthreads * (k * F + Fs) * f);
    s->t_rl = carve(&p, nthreads * E * f);
    s->t_probs = carve(&p, nthreads * E * f);
    s->t_topw = carve(&p, nthreads * k * f);
    s->t_rstd = carve(&p, nthreads * f);
    s->t_xa = carve(&p, nthreads * (r + 1) * f);
    s->t_topi = carve(&p, nthreads * k * i);
    s->t_counts = carve(&p, nthreads * E * i);
    return (size_t)(p - p0);
}

static int chunk_rows(int ctx) { return ctx < INFER_CHUNK ? ctx : INFER_CHUNK; }

size_t infer_bytes(const model_config *c, int ctx)
{
    struct infer s;
    return layout(&s, c, ctx, chunk_rows(ctx), omp_get_max_threads(), 0, NULL);
}

int infer_create(infer **out, const model *m, int ctx, char *err)
{
    *out = NULL;
    if (ctx < 1) return err_set(err, "inference context must hold at least 1 position (got %d)", ctx);
    struct infer *s = calloc(1, sizeof *s);
    if (!s) return err_set(err, "out of memory");
    s->m = m;
    s->ctx = ctx;
    s->R = chunk_rows(ctx);
    s->nthreads = omp_get_max_threads();
    s->Fs = max_dense(&m->c);
    s->r = m->lora ? m->lora->lc.r : 0;
    s->bytes = layout(s, &m->c, ctx, s->R, s->nthreads, s->r, NULL);
    if (posix_memalign((void **)&s->mem, 64, s->bytes)) {
        double gib = s->bytes / 1073741824.0;
        free(s);
        return err_set(err, "out of memory allocating %.2f GiB for a KV cache of %d positions", gib, ctx);
    }
    layout(s, &m->c, ctx, s->R, s->nthreads, s->r, s->mem);
    if (model_gemm_reserve(err)) {
        infer_free(s);
        return -1;
    }
    if (m->lora) {
        const model_config *c = &m->c;
        size_t cols = c->dim;
        if ((size_t)c->n_heads * c->head_dim > cols) cols = (size_t)c->n_heads * c->head_dim;
        if ((size_t)c->ffn > cols) cols = c->ffn;
        if ((size_t)s->Fs > cols) cols = s->Fs;
        m->lora->training = 0;
        if (lora_reserve(m->lora, (size_t)s->R * c->top_k, cols, err)) {
            infer_free(s);
            return -1;
        }
    }
    for (int i = 0; i < s->R; i++) s->ident[i] = i;
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

/* ------------------------------------------------------------- layer parts both paths share */

static int qk_groups(const model_config *c, int k_part)
{
    if (c->qk_norm == QK_NORM_HEAD) return k_part ? c->n_kv_heads : c->n_heads;
    return c->qk_norm == QK_NORM_FULL ? 1 : 0;
}

/* q/k norms, clip and RoPE of n rows of qkv (in place), positions pos. */
static void qkv_finish(const model *m, const model_layer *W, struct infer *s, float *qkv, const int *pos, int n)
{
    const model_config *c = &m->c;
    int H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, QKV = (H + 2 * KV) * hd;
    if (c->qk_norm) {
        int gq = qk_groups(c, 0), gk = qk_groups(c, 1);
        model_groupnorm_forward(qkv, s->qkr, qkv, QKV, 0, gq, H * hd / gq, W->q_norm, n, c->norm_eps);
        model_groupnorm_forward(qkv, s->qkr + (size_t)n * gq, qkv, QKV, H * hd, gk, KV * hd / gk, W->k_norm, n,
                                c->norm_eps);
    }
    if (c->clip_qkv > 0) {
        float cl = (float)c->clip_qkv;
        for (size_t j = 0; j < (size_t)n * QKV; j++) qkv[j] = qkv[j] < -cl ? -cl : qkv[j] > cl ? cl : qkv[j];
    }
    attn_rope(qkv, pos, s->cos_t, s->sin_t, n, H, KV, hd, 0);
}

/* ------------------------------------------------------------- the batched (prefill) path */

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
    if (m == 1) cblas_sgemv(CblasRowMajor, CblasNoTrans, nj, hd, scale, K, ldk, Q, 1, 0, S, 1);
    else model_gemm(0, 1, m, nj, hd, scale, Q, QKV, K, ldk, 0, S, nj); /* S (m, nj) */
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

/* The adapters of layer l's experts (w = LORA_W1) or dense MLP (w = LORA_S1), or NULL. */
static moe_lora *mlp_lora(struct infer *s, int l, int w, int rows, moe_lora *ml)
{
    lora *lo = s->m->lora;
    ml->lo = lo;
    ml->w1 = lora_site_at(lo, l, w);
    ml->w2 = lora_site_at(lo, l, w + 1);
    ml->w3 = lora_site_at(lo, l, w + 2);
    if (!ml->w1 && !ml->w2 && !ml->w3) return NULL;
    size_t blk = (size_t)rows * s->r;
    ml->xa1 = s->lxa, ml->xa2 = s->lxa + blk, ml->xa3 = s->lxa + 2 * blk;
    return ml;
}

/* n (<= R) new tokens through every layer; leaves the last hidden states in s->x (n, D)
 * and their keys/values in the cache. */
static void run_rows(struct infer *s, const int32_t *tokens, int n)
{
    const model *m = s->m;
    const model_config *c = &m->c;
    const model_tiles *T = &m->tiles;
    lora *lo = m->lora;
    int D = c->dim, E = c->n_experts, k = c->top_k, F = c->ffn, p0 = s->pos;
    int H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, Hd = H * hd, KVd = KV * hd, QKV = Hd + 2 * KVd;
    float *xa = s->lxa ? s->lxa + (size_t)3 * s->R * k * s->r : NULL; /* attention adapters' xa (n, r) */
    for (int i = 0; i < n; i++) {
        model_mat_row(&m->embed, tokens[i], s->x + (size_t)i * D);
        s->pos_r[i] = p0 + i;
    }
    s->dense_off[0] = 0;
    s->dense_off[1] = n;
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *Wl = &m->layers[l];
        float *kc = s->kc + (size_t)l * s->ctx * KVd, *vc = s->vc + (size_t)l * s->ctx * KVd;
        model_rmsnorm_forward(s->xn, s->rstd, s->x, Wl->attn_norm, n, D, c->norm_eps);
        model_mm_xwt(T, n, 1, s->xn, D, &Wl->wqkv, 0, s->qkv, QKV);
        if (Wl->bqkv) model_bias_add(s->qkv, QKV, Wl->bqkv, QKV, n);
        for (int t = LORA_Q; t <= LORA_V; t++) {
            const lora_site *st = lora_site_at(lo, l, t);
            int col = t == LORA_Q ? 0 : t == LORA_K ? Hd : Hd + KVd;
            if (st) lora_forward(lo, st, 0, s->qkv + col, QKV, s->xn, D, n, xa);
        }
        qkv_finish(m, Wl, s, s->qkv, s->pos_r, n);
        for (int i = 0; i < n; i++) {
            const float *row = s->qkv + (size_t)i * QKV;
            memcpy(kc + (size_t)(p0 + i) * KVd, row + Hd, (size_t)KVd * sizeof(float));
            memcpy(vc + (size_t)(p0 + i) * KVd, row + Hd + KVd, (size_t)KVd * sizeof(float));
        }
        attend(s, kc, vc, p0, n);
        model_mm_xwt(T, n, 1, s->att, Hd, &Wl->wo, 1, s->x, D); /* x += att Wo^T */
        if (Wl->bo) model_bias_add(s->x, D, Wl->bo, D, n);
        const lora_site *so = lora_site_at(lo, l, LORA_O);
        if (so) lora_forward(lo, so, 0, s->x, D, s->att, Hd, n, xa);
        model_rmsnorm_forward(s->xn, s->rstd, s->x, Wl->ffn_norm, n, D, c->norm_eps);
        if (model_layer_is_moe(c, l)) {
            moe_lora ml, *mlp = mlp_lora(s, l, LORA_W1, n * k, &ml);
            moe_route(s->rl, s->probs, s->topi, s->topw, NULL, s->xn, Wl->gate, n, D, E, k, !c->topk_raw);
            moe_sort(s->off, s->row_tok, s->slot_row, s->topi, n, E, k);
            moe_experts_forward(T, s->x, s->h13, s->ye, s->xs, s->act, s->xn, Wl->w13, Wl->w2, s->off, s->row_tok,
                                s->slot_row, s->topw, n, D, F, E, k, mlp, NULL);
        }
        int Fs = model_layer_dense_ffn(c, l);
        if (Fs) {
            moe_lora ml, *mlp = mlp_lora(s, l, LORA_S1, n, &ml);
            if (Wl->sgate) {
                model_gemm(0, 1, n, 1, D, 1, s->xn, D, Wl->sgate, D, 0, s->sw, 1);
                for (int i = 0; i < n; i++) s->sw[i] = 1.0f / (1.0f + expf(-s->sw[i]));
            } else {
                for (int i = 0; i < n; i++) s->sw[i] = 1.0f;
            }
            moe_experts_forward(T, s->x, s->h13, s->ye, s->xs, s->act, s->xn, &Wl->sw13, &Wl->sw2, s->dense_off,
                                s->ident, s->ident, s->sw, n, D, Fs, 1, 1, mlp, NULL);
        }
    }
    s->pos += n;
}

/* logits (rows, V) of the hidden states x (rows, D) after the final norm (into xn). */
static void head(struct infer *s, const float *x, int rows, float *logits)
{
    const model *m = s->m;
    int D = m->c.dim, V = m->c.vocab;
    model_rmsnorm_forward(s->xn, s->rstd, x, m->final_norm, rows, D, m->c.norm_eps);
    model_mm_xwt(&m->tiles, rows, 1, s->xn, D, &m->lm_head, 0, logits, V);
}

/* ------------------------------------------------------------- the one-token step */

/* This thread's share [r0, r1) of rows, inside a parallel region. */
static inline void my_rows(int rows, int *r0, int *r1)
{
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    *r0 = (int)((long)rows * t / nt);
    *r1 = (int)((long)rows * (t + 1) / nt);
}

/* <row r of W, x>: fp32 rows are read as they are, 16-bit ones widened on the fly (the
 * sums run in 16 lanes, combined in a fixed order). */
static inline float low_row_dot(const model_mat *W, int r, const float *x)
{
    int j = 0, K = W->cols;
    while (r >= W->rows[j]) r -= W->rows[j++];
    const uint16_t *p = (const uint16_t *)W->p[j] + (size_t)r * K;
    float acc[16] = {0}, t[16];
    int i = 0;
    for (; i + 16 <= K; i += 16) {
        if (W->dtype == MODEL_BF16) half_widen_bf16(t, p + i, 16);
        else half_widen_f16(t, p + i, 16);
        for (int q = 0; q < 16; q++) acc[q] += t[q] * x[i + q];
    }
    float sum = 0;
    for (int q = 0; q < 16; q++) sum += acc[q];
    for (; i < K; i++) {
        float v;
        if (W->dtype == MODEL_BF16) half_widen_bf16(&v, p + i, 1);
        else half_widen_f16(&v, p + i, 1);
        sum += v * x[i];
    }
    return sum;
}

/* y[r0..r1) = W[r0..r1) x (+ y when beta = 1): one single-threaded sgemv on this thread's
 * rows (OpenBLAS does not start threads inside a parallel region), or widened dots. */
static void rows_matvec(float *y, const model_mat *W, const float *x, int r0, int r1, float beta)
{
    if (r1 <= r0) return;
    if (W->dtype == MODEL_F32) {
        const float *p = W->p[0];
        cblas_sgemv(CblasRowMajor, CblasNoTrans, r1 - r0, W->cols, 1, p + (size_t)r0 * W->cols, W->cols, x, 1, beta,
                    y + r0, 1);
        return;
    }
    for (int r = r0; r < r1; r++) y[r] = low_row_dot(W, r, x) + (beta != 0 ? y[r] : 0);
}

/* y[r0..r1) += s B_e[r0..r1) (A_e x) for adapter site st (expert e) on input x; xa: this
 * thread's (r) scratch. */
static void lora_rows(const lora *lo, const lora_site *st, int e, float *y, const float *x, int r0, int r1, float *xa)
{
    if (!st || r1 <= r0) return;
    int r = lo->lc.r;
    cblas_sgemv(CblasRowMajor, CblasNoTrans, r, st->in, 1, st->A + (size_t)e * r * st->in, st->in, x, 1, 0, xa, 1);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, r1 - r0, r, lo->scale, st->B + ((size_t)e * st->out + r0) * r, r, xa, 1,
                1, y + r0, 1);
}

/* One dense MLP or expert on one token inside the step's parallel region: h (2F) =
 * W13 xn; act (F) = silu(h1) h3 (every thread); x[D rows of this thread] += w * W2 act.
 * The h rows of this thread are written first; the caller's barrier sits in between. */
static void mlp_rows_up(const lora *lo, const lora_site *a1, const lora_site *a3, int e, float *h, const model_mat *W13,
                        const float *xn, int F, float *xa)
{
    int r0, r1;
    my_rows(2 * F, &r0, &r1);
    rows_matvec(h, W13, xn, r0, r1, 0);
    int lo1 = r0 < F ? r0 : F, hi1 = r1 < F ? r1 : F, lo3 = r0 > F ? r0 - F : 0, hi3 = r1 > F ? r1 - F : 0;
    lora_rows(lo, a1, e, h, xn, lo1, hi1, xa);
    lora_rows(lo, a3, e, h + F, xn, lo3, hi3, xa);
}

/* One token at position p through every layer and the head, in ONE parallel region: a
 * decode step is ~15 small products, and a fork/join for each would cost more than the
 * arithmetic at small sizes (and far more when the cores are shared). Every thread owns a
 * slice of the output rows of each product; the O(D) parts (norms, routing) are computed
 * by every thread on its own copy, so only a few barriers per layer remain. The arithmetic per
 * value is that of the batched path (same kernels, same order of the expert sum). */
static void step_one(struct infer *s, int32_t token, int p, float *logits)
{
    const model *m = s->m;
    const model_config *c = &m->c;
    const lora *lo = m->lora;
    int D = c->dim, E = c->n_experts, k = c->top_k, F = c->ffn, V = c->vocab;
    int H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, Hd = H * hd, KVd = KV * hd, QKV = Hd + 2 * KVd;
    model_mat_row(&m->embed, token, s->x);
    s->pos_r[0] = p;
#pragma omp parallel num_threads(s->nthreads)
    {
        int t = omp_get_thread_num(), r0, r1;
        float *xn = s->t_xn + (size_t)t * D, *act = s->t_act + (size_t)t * (k * F + s->Fs);
        float *topw = s->t_topw + (size_t)t * k, *xa = s->t_xa + (size_t)t * (s->r + 1);
        float *rl = s->t_rl + (size_t)t * E, *probs = s->t_probs + (size_t)t * E, *rstd = s->t_rstd + t;
        int *topi = s->t_topi + (size_t)t * k, *counts = s->t_counts + (size_t)t * E;
        for (int l = 0; l < c->n_layers; l++) {
            const model_layer *Wl = &m->layers[l];
            float *kc = s->kc + (size_t)l * s->ctx * KVd, *vc = s->vc + (size_t)l * s->ctx * KVd;
            model_rmsnorm_forward(xn, rstd, s->x, Wl->attn_norm, 1, D, c->norm_eps);
            my_rows(QKV, &r0, &r1);
            rows_matvec(s->qkv, &Wl->wqkv, xn, r0, r1, 0);
            if (Wl->bqkv)
                for (int r = r0; r < r1; r++) s->qkv[r] += Wl->bqkv[r];
            for (int q = LORA_Q; q <= LORA_V; q++) {
                int col = q == LORA_Q ? 0 : q == LORA_K ? Hd : Hd + KVd, w = q == LORA_Q ? Hd : KVd;
                int a = r0 - col > 0 ? r0 - col : 0, b = r1 - col < w ? r1 - col : w;
                lora_rows(lo, lora_site_at(lo, l, q), 0, s->qkv + col, xn, a, b, xa);
            }
#pragma omp barrier
#pragma omp single
            {
                qkv_finish(m, Wl, s, s->qkv, s->pos_r, 1);
                memcpy(kc + (size_t)p * KVd, s->qkv + Hd, (size_t)KVd * sizeof(float));
                memcpy(vc + (size_t)p * KVd, s->qkv + Hd + KVd, (size_t)KVd * sizeof(float));
            }
#pragma omp for schedule(static)
            for (int h = 0; h < H; h++) attend_task(s, kc, vc, p, 1, h, 0);
            my_rows(D, &r0, &r1);
            rows_matvec(s->x, &Wl->wo, s->att, r0, r1, 1); /* x += Wo att */
            if (Wl->bo)
                for (int r = r0; r < r1; r++) s->x[r] += Wl->bo[r];
            lora_rows(lo, lora_site_at(lo, l, LORA_O), 0, s->x, s->att, r0, r1, xa);
#pragma omp barrier
            model_rmsnorm_forward(xn, rstd, s->x, Wl->ffn_norm, 1, D, c->norm_eps);
            int moe = model_layer_is_moe(c, l), Fs = model_layer_dense_ffn(c, l);
            float *hd_ = s->h13 + (size_t)k * 2 * F; /* the dense MLP's h after the experts' */
            if (moe) {
                memset(counts, 0, (size_t)E * sizeof *counts);
                moe_route(rl, probs, topi, topw, counts, xn, Wl->gate, 1, D, E, k, !c->topk_raw);
                for (int j = 0; j < k; j++)
                    mlp_rows_up(lo, lora_site_at(lo, l, LORA_W1), lora_site_at(lo, l, LORA_W3), topi[j],
                                s->h13 + (size_t)j * 2 * F, &Wl->w13[topi[j]], xn, F, xa);
            }
            if (Fs)
                mlp_rows_up(lo, lora_site_at(lo, l, LORA_S1), lora_site_at(lo, l, LORA_S3), 0, hd_, &Wl->sw13, xn, Fs,
                            xa);
#pragma omp barrier
            my_rows(D, &r0, &r1);
            if (moe) {
                kern_swiglu(act, s->h13, k, F); /* silu(h1) * h3, as moe.c's swiglu */
                for (int j = 0; j < k; j++) {
                    rows_matvec(s->ye + (size_t)j * D, &Wl->w2[topi[j]], act + (size_t)j * F, r0, r1, 0);
                    lora_rows(lo, lora_site_at(lo, l, LORA_W2), topi[j], s->ye + (size_t)j * D, act + (size_t)j * F,
                              r0, r1, xa);
                }
                for (int d = r0; d < r1; d++)
                    for (int j = 0; j < k; j++) s->x[d] += topw[j] * s->ye[(size_t)j * D + d];
            }
            if (Fs) {
                float w = 1.0f, *a = act + (size_t)k * F;
                if (Wl->sgate) {
                    float g = 0;
                    for (int d = 0; d < D; d++) g += xn[d] * Wl->sgate[d];
                    w = 1.0f / (1.0f + expf(-g));
                }
                kern_swiglu(a, hd_, 1, Fs);
                float *y = s->ye + (size_t)k * D; /* k experts' rows come first: ye holds k+1 rows */
                rows_matvec(y, &Wl->sw2, a, r0, r1, 0);
                lora_rows(lo, lora_site_at(lo, l, LORA_S2), 0, y, a, r0, r1, xa);
                for (int d = r0; d < r1; d++) s->x[d] += w * y[d];
            }
#pragma omp barrier
        }
        model_rmsnorm_forward(xn, rstd, s->x, m->final_norm, 1, D, c->norm_eps);
        my_rows(V, &r0, &r1);
        if (logits) rows_matvec(logits, &m->lm_head, xn, r0, r1, 0);
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
