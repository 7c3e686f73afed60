/* forward: the whole-model passes. One arena (model_acts) holds every activation kept for
 * backward plus the scratch of one layer, sized from the config before the first step.
 *
 * A layer: x -> RMSNorm -> q|k|v projection (+ bias, + adapters) -> q/k norms -> clip ->
 * RoPE -> attention -> o_proj (+ bias) -> residual -> RMSNorm -> router + experts and/or a
 * dense MLP (a dense layer's MLP, or Qwen2-MoE's sigmoid-gated shared expert) -> residual.
 * What a family has is in model_config (model/family.h); absent parts are skipped.
 *
 * Activation checkpointing (model_acts_create_ckpt): every per-layer array below has one
 * slot instead of L; the forward keeps only x (each layer's input) and the routing
 * statistics, and the backward re-runs a layer's forward into the slot right before that
 * layer's backward. The same kernels in the same order: results are bit-identical. */
#include "common/err.h"
#include "common/par.h"
#include "model/kern.h"
#include "model/layers.h"
#include "model/lora.h"
#include "model/model.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Rows of logits alive at once in the fused lm_head + cross-entropy. Each chunk's dW GEMM
 * reads and writes all of dW (V x D: 64 MB at 32k x 512), so few large chunks matter: on
 * the small bench 256-row chunks cost 530 ms of lm_head+loss per step, 1024-row ones
 * 470 ms. The chunk lives in the layers' scratch region (never alive at the same time),
 * so it takes that region's size: at least 32 MB and at most 128 MB, 64..2048 rows. */
static int head_rows(size_t V, size_t region_bytes)
{
    const size_t lo = (size_t)32 << 20, hi = (size_t)128 << 20;
    size_t b = region_bytes < lo ? lo : region_bytes > hi ? hi : region_bytes;
    size_t r = b / (V * sizeof(float));
    return r < 64 ? 64 : r > 2048 ? 2048 : (int)r;
}

/* A frozen lm_head (LoRA runs, and every forward-only pass without logits to return) needs
 * no logits beyond one block of the vocabulary: the cross-entropy, and in training its
 * backward dxn = ce_scale (sum_v p_v W_v - W_y), come from one pass over blocks of VB lm_head
 * rows with an online softmax (as fused attention does over keys): per row the running max m,
 * the sum S of exp(z - m) and acc = sum exp(z - m) W_v (in dxn), rescaled by exp(m_old - m_new)
 * when a block raises the max (head_frozen). Each block of W is read (widened, for a 16-bit
 * store) once per step instead of twice per chunk of rows; same products as the two-pass
 * form, summed in another order (fp32 rounding). A LoRA run's arena holds one block's logits
 * for the whole batch plus S, m and the target logit per row and one row of W. */
enum { VB = MODEL_HEAD_VB };

/* MOET_HEAD_VB (tests only) shrinks the blocks, so small vocabularies take the rescaling */
static size_t head_vb(size_t V)
{
    const char *e = getenv("MOET_HEAD_VB");
    long v = e ? atol(e) : 0;
    size_t w = v > 0 ? (size_t)v : VB;
    return w < V ? w : V;
}

/* floats of head_frozen's buffer for rows rows and blocks of vb: a block of logits, S
 * (doubles, from an even offset), m, z_y, W_y; and the rows a buffer of floats holds */
static size_t head_frozen_floats(size_t rows, size_t vb, size_t D) { return rows * (vb + 4) + D + 2; }
static size_t head_frozen_rows(size_t floats, size_t vb, size_t D) { return (floats - D - 1) / (vb + 4); }

/* Time stmt into family fam of direction dir (fwd/bwd) when profiling is on. */
#define PROF(fam, dir, ...)                                                                                           \
    do {                                                                                                              \
        double t0_ = m->prof ? omp_get_wtime() : 0;                                                                   \
        __VA_ARGS__;                                                                                                  \
        if (m->prof) m->prof->dir[fam] += omp_get_wtime() - t0_;                                                      \
    } while (0)

struct model_acts {
    int B, T, N, L, k, E, nthreads, ckpt, S; /* S: slots of the per-layer arrays (L, or 1 with ckpt) */
    int Fs;                      /* largest dense MLP / shared expert */
    /* kept per layer: */
    float *x;                    /* (L+1, N, D) residual stream entering layer l; x[L] leaves the last */
    int *counts;                 /* (L, E) */
    double *Psum, *zsum;         /* (L, E), (L): router probability and lse^2 sums of the forward */
    /* per slot s (stride N rows): */
    float *rstd1;                /* (S, N): norms keep rstd; backward recomputes their outputs */
    float *qkv;                  /* (S, N, QKV) after norms, clip and RoPE */
    float *qkv0, *qkr;           /* (S, N, QKV) projection output (q/k norm or clip), (S, N, nq+nk) norm rstd */
    float *att, *lse;            /* (S, N, H*hd), (S, B, H, T) */
    float *xmid, *rstd2;         /* (S, N, D), (S, N) */
    float *rlogits, *probs;      /* (S, N, E) */
    int *topi;                   /* (S, N, k) */
    float *topw;                 /* (S, N, k) */
    int *off, *row_tok, *slot_row; /* (S, E+1), (S, Nk), (S, Nk) */
    float *h13;                  /* (S, Nk, 2F) expert hidden pre-activations [h1 | h3] */
    float *sh13, *sw;            /* (S, N, 2Fs) the dense MLP's [h1 | h3], (S, N) its per-row weight */
    float *xnf, *rstdf;          /* (N, D), (N) */
    /* per batch */
    int *pos, *kv_start;         /* (N) */
    int *ident, dense_off[2];    /* (N) identity rows, {0, N}: the dense MLP as one "expert" */
    float *cos_t, *sin_t;        /* (T, hd/2) */
    /* scratch */
    float *xn;                   /* (N, D) the current norm's output, forward and backward */
    float *dx, *dxn, *dqkv, *datt, *attn_scr, *xs, *act, *dys, *eg, *erows, *dtopw, *drl, *dsw, *qkvn, *head;
    double *row_ce;              /* (head_rows) */
    double *zrow;                /* (N) the router's lse^2 per row */
    int head_rows;               /* logit rows per lm_head chunk */
    size_t head_floats;          /* floats of head */
    size_t head_vb;              /* head_frozen's block of lm_head rows (head_vb()) */
    float *lxa;                  /* LoRA: (S, 7N + 3Nk, r) inputs times A, kept for backward */
    int lora_r;
    double *f, *P;               /* (E) aux-loss statistics of the last forward */
    double rows;                 /* router rows behind f and P (all ranks' with m->dp) */
    size_t bytes;
    char *mem;
};

static void *carve(char **p, size_t bytes)
{
    void *r = *p;
    *p += (bytes + 63) & ~(size_t)63;
    return r;
}

static int max_dense_ffn(const model_config *c)
{
    int m = 0;
    for (int l = 0; l < c->n_layers; l++)
        if (model_layer_dense_ffn(c, l) > m) m = model_layer_dense_ffn(c, l);
    return m;
}

/* q/k norm groups: per head (Qwen3-MoE) or one over the whole projection (OLMoE). */
static int qk_groups(const model_config *c, int k_part)
{
    if (c->qk_norm == QK_NORM_HEAD) return k_part ? c->n_kv_heads : c->n_heads;
    return c->qk_norm == QK_NORM_FULL ? 1 : 0;
}

/* Assign every pointer of a from base (NULL base: just count bytes). */
static size_t layout(struct model_acts *a, const model_config *c, int B, int T, int nthreads, int lora_r, int ckpt,
                     char *base)
{
    size_t N = (size_t)B * T, L = c->n_layers, D = c->dim, E = c->n_experts, k = c->top_k, F = c->ffn;
    size_t hd = c->head_dim, Hd = c->n_heads * hd, QKV = (c->n_heads + 2 * c->n_kv_heads) * hd, Nk = N * k;
    size_t V = c->vocab, S = ckpt ? 1 : L, Fs = (size_t)max_dense_ffn(c);
    size_t nqk = (size_t)qk_groups(c, 0) + qk_groups(c, 1);
    int pre = c->qk_norm || c->clip_qkv > 0;
    size_t wide = Nk * F > N * Fs ? Nk * F : N * Fs; /* act / eg serve the experts and the dense MLP */
    char *p = base ? base : (char *)64; /* aligned dummy so sizes include padding */
    char *p0 = p;
    const size_t f = sizeof(float), i = sizeof(int), d = sizeof(double);
    a->x = carve(&p, (L + 1) * N * D * f);
    a->counts = carve(&p, L * E * i);
    a->Psum = carve(&p, L * E * d);
    a->zsum = carve(&p, L * d);
    a->f = carve(&p, E * d);
    a->P = carve(&p, E * d);
    a->rstd1 = carve(&p, S * N * f);
    a->qkv = carve(&p, S * N * QKV * f);
    a->qkv0 = pre ? carve(&p, S * N * QKV * f) : NULL;
    a->qkr = nqk ? carve(&p, S * N * nqk * f) : NULL;
    a->att = carve(&p, S * N * Hd * f);
    a->lse = carve(&p, S * N * c->n_heads * f);
    a->xmid = carve(&p, S * N * D * f);
    a->rstd2 = carve(&p, S * N * f);
    a->rlogits = carve(&p, S * N * E * f);
    a->probs = carve(&p, S * N * E * f);
    a->topi = carve(&p, S * Nk * i);
    a->topw = carve(&p, S * Nk * f);
    a->off = carve(&p, S * (E + 1) * i);
    a->row_tok = carve(&p, S * Nk * i);
    a->slot_row = carve(&p, S * Nk * i);
    a->h13 = carve(&p, S * Nk * 2 * F * f);
    a->sh13 = Fs ? carve(&p, S * N * 2 * Fs * f) : NULL;
    a->sw = Fs ? carve(&p, S * N * f) : NULL;
    a->xnf = carve(&p, N * D * f);
    a->rstdf = carve(&p, N * f);
    a->pos = carve(&p, N * i);
    a->kv_start = carve(&p, N * i);
    a->ident = carve(&p, N * i);
    a->cos_t = carve(&p, (size_t)T * hd / 2 * f);
    a->sin_t = carve(&p, (size_t)T * hd / 2 * f);
    a->dx = carve(&p, N * D * f);
    a->dxn = carve(&p, N * D * f);
    a->dtopw = carve(&p, Nk * f);
    a->drl = carve(&p, N * E * f);
    a->dsw = Fs ? carve(&p, N * f) : NULL;
    /* The layers' scratch and the head's logit chunk are never alive at once (the head runs
     * between the last layer's forward and its backward): they share one region. */
    char *shared = p, *layers_end;
    a->dqkv = carve(&p, N * QKV * f);
    a->qkvn = c->clip_qkv > 0 ? carve(&p, N * QKV * f) : NULL;
    a->datt = carve(&p, N * Hd * f);
    a->attn_scr = carve(&p, (size_t)nthreads * attn_scratch_floats(T, c->head_dim) * f);
    a->xs = carve(&p, Nk * D * f);
    a->act = carve(&p, wide * f);
    a->dys = carve(&p, Nk * D * f); /* also the forward's expert outputs ye */
    a->eg = carve(&p, wide * f);
    a->erows = carve(&p, 2 * Nk * f);
    a->xn = carve(&p, N * D * f);
    layers_end = p;
    p = shared;
    a->head_vb = head_vb(V);
    if (lora_r) { /* a frozen lm_head: one block at a time (head_frozen), as many rows a pass
                   * as the layers' scratch region holds (32 MB' worth at least) */
        size_t region = (size_t)(layers_end - shared), lo = (size_t)32 << 20;
        size_t rows = (region > lo ? region : lo) / ((a->head_vb + 4) * f);
        const char *e = getenv("MOET_HEAD_ROWS"); /* tests only: several passes on a small batch */
        long hr = e ? atol(e) : 0;
        if (hr > 0 && (size_t)hr < rows) rows = (size_t)hr;
        rows = rows < 1 ? 1 : rows > N ? N : rows;
        a->head_floats = head_frozen_floats(rows, a->head_vb, D);
        a->head_rows = a->head_floats / V > 0 ? (int)(a->head_floats / V) : 1;
        if ((size_t)a->head_rows * V > a->head_floats) a->head_floats = (size_t)a->head_rows * V;
    } else {
        a->head_rows = head_rows(V, (size_t)(layers_end - shared));
        a->head_floats = (size_t)a->head_rows * V;
    }
    a->head = carve(&p, a->head_floats * f);
    if (p < layers_end) p = layers_end;
    a->row_ce = carve(&p, (size_t)a->head_rows * sizeof(double));
    a->zrow = carve(&p, (size_t)N * sizeof(double));
    a->lxa = lora_r ? carve(&p, S * (7 * N + 3 * Nk) * (size_t)lora_r * f) : NULL;
    a->lora_r = lora_r;
    return (size_t)(p - p0);
}

size_t model_acts_bytes_ckpt(const model_config *c, int B, int T, int lora_r, int ckpt)
{
    struct model_acts a;
    return layout(&a, c, B, T, omp_get_max_threads(), lora_r, ckpt, NULL);
}

size_t model_acts_bytes(const model_config *c, int B, int T, int lora_r)
{
    return model_acts_bytes_ckpt(c, B, T, lora_r, 0);
}

/* Saved LoRA input projection of layer slot s, site t: attention (4 N), experts (3 Nk),
 * dense MLP (3 N). */
static float *lora_xa(const model_acts *a, int s, int t)
{
    size_t N = a->N, Nk = N * a->k, r = a->lora_r;
    size_t base = (size_t)s * (7 * N + 3 * Nk) * r;
    if (t < LORA_W1) return a->lxa + base + t * N * r;
    if (t < LORA_S1) return a->lxa + base + 4 * N * r + (t - LORA_W1) * Nk * r;
    return a->lxa + base + (4 * N + 3 * Nk) * r + (t - LORA_S1) * N * r;
}

int model_acts_create_ckpt(model_acts **out, const model *m, int B, int T, int ckpt, char *err)
{
    const model_config *c = &m->c;
    struct model_acts *a = calloc(1, sizeof *a);
    if (!a) return err_set(err, "out of memory");
    a->B = B;
    a->T = T;
    a->N = B * T;
    a->L = c->n_layers;
    a->k = c->top_k;
    a->E = c->n_experts;
    a->ckpt = ckpt;
    a->S = ckpt ? 1 : c->n_layers;
    a->Fs = max_dense_ffn(c);
    a->nthreads = omp_get_max_threads();
    int lr = m->lora ? m->lora->lc.r : 0;
    a->bytes = layout(a, c, B, T, a->nthreads, lr, ckpt, NULL);
    if (posix_memalign((void **)&a->mem, 64, a->bytes)) {
        double gib = a->bytes / 1073741824.0;
        free(a);
        return err_set(err, "out of memory allocating %.2f GiB of activations for batch %dx%d", gib, B, T);
    }
    layout(a, c, B, T, a->nthreads, lr, ckpt, a->mem);
    if (model_gemm_reserve(err)) {
        model_acts_free(a);
        return -1;
    }
    if (m->lora) {
        size_t rows = (size_t)a->N * c->top_k, cols = c->dim;
        if ((size_t)a->N > rows) rows = a->N;
        if ((size_t)c->n_heads * c->head_dim > cols) cols = (size_t)c->n_heads * c->head_dim;
        if ((size_t)c->ffn > cols) cols = c->ffn;
        if ((size_t)a->Fs > cols) cols = a->Fs;
        if (lora_reserve(m->lora, rows, cols, err)) {
            model_acts_free(a);
            return -1;
        }
    }
    for (int n = 0; n < a->N; n++) a->ident[n] = n;
    /* RoPE tables in double, like the float64 reference: inv_freq[i] = theta^(-2i/hd). */
    int half = c->head_dim / 2;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double ang = t * pow(c->rope_theta, -2.0 * i / c->head_dim);
            a->cos_t[t * half + i] = (float)cos(ang);
            a->sin_t[t * half + i] = (float)sin(ang);
        }
    *out = a;
    return 0;
}

int model_acts_create(model_acts **out, const model *m, int B, int T, char *err)
{
    return model_acts_create_ckpt(out, m, B, T, 0, err);
}

void model_acts_free(model_acts *a)
{
    if (!a) return;
    free(a->mem);
    free(a);
}

const int *model_expert_counts(const model_acts *a) { return a->counts; }

/* Slot of layer l's per-layer arrays. */
static inline int slot(const model_acts *a, int l) { return a->ckpt ? 0 : l; }

const float *model_router_logits(const model_acts *a, int l)
{
    return a->rlogits + (size_t)slot(a, l) * a->N * a->E;
}

const int *model_routing(const model_acts *a, int l, const float **weights)
{
    size_t nk = (size_t)slot(a, l) * a->N;
    if (weights) *weights = a->topw + nk * a->k;
    return a->topi + nk * a->k;
}

/* Positions and the first visible key of every token: documents restart both when
 * doc_mask is on; the sliding window bounds how far back a token looks. */
static void setup_positions(model_acts *a, const model *m, const model_batch *b)
{
    int W = m->c.sliding_window;
    for (int bb = 0; bb < b->B; bb++) {
        int start = 0;
        for (int t = 0; t < b->T; t++) {
            int n = bb * b->T + t;
            if (b->doc_mask && b->doc_start && b->doc_start[n] && t > 0) start = t;
            int lo = start;
            if (W > 0 && t - W + 1 > lo) lo = t - W + 1;
            a->pos[n] = b->doc_mask ? t - start : t;
            a->kv_start[n] = lo;
        }
    }
    a->dense_off[0] = 0;
    a->dense_off[1] = b->B * b->T;
}

static int check_batch(const model *m, const model_acts *a, const model_batch *b, char *err)
{
    if (b->B < 1 || b->T < 1 || b->B * b->T > a->N || b->T > a->T)
        return err_set(err, "batch %dx%d does not fit the activation arena %dx%d", b->B, b->T, a->B, a->T);
    for (int n = 0; n < b->B * b->T; n++) {
        if (b->tokens[n] < 0 || b->tokens[n] >= m->c.vocab)
            return err_set(err, "token id %d at position %d is outside the vocabulary (%d)", b->tokens[n], n,
                           m->c.vocab);
        if (b->labels && b->labels[n] >= m->c.vocab)
            return err_set(err, "label %d at position %d is outside the vocabulary (%d)", b->labels[n], n,
                           m->c.vocab);
    }
    return 0;
}

/* Target of the logits at row n (predicting position t+1), or -1. */
static inline int target_of(const model_batch *b, int n)
{
    int t = n % b->T;
    if (t == b->T - 1) return -1;
    return b->labels ? b->labels[n + 1] : b->tokens[n + 1];
}

/* The adapters of layer l's experts (w = LORA_W1) or dense MLP (w = LORA_S1), or NULL. */
static moe_lora *moe_lora_of(const model *m, const model_acts *a, int l, int w, moe_lora *ml)
{
    int s = slot(a, l);
    ml->lo = m->lora;
    ml->w1 = lora_site_at(m->lora, l, w);
    ml->w2 = lora_site_at(m->lora, l, w + 1);
    ml->w3 = lora_site_at(m->lora, l, w + 2);
    if (!ml->w1 && !ml->w2 && !ml->w3) return NULL;
    ml->xa1 = lora_xa(a, s, w);
    ml->xa2 = lora_xa(a, s, w + 1);
    ml->xa3 = lora_xa(a, s, w + 2);
    return ml;
}

/* x (N,D) = embed[tokens] */
static void embed_forward(float *x, const model_mat *embed, const int32_t *tokens, int N, int D)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) model_mat_row(embed, tokens[n], x + (size_t)n * D);
}

/* Column of q, k, v inside a qkv row for LoRA sites Q, K, V. */
static int qkv_col(const model_config *c, int t)
{
    int hd = c->head_dim;
    return t == LORA_Q ? 0 : t == LORA_K ? c->n_heads * hd : (c->n_heads + c->n_kv_heads) * hd;
}

static void clip_forward(float *qkv, int N, int QKV, float cl)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        for (int j = 0; j < QKV; j++) {
            float *v = qkv + (size_t)n * QKV + j;
            *v = *v < -cl ? -cl : *v > cl ? cl : *v;
        }
}

/* q/k norms of layer l on qkv (in place) from the projection output src, saving rstd. */
static void qk_norm_forward(const model *m, const model_layer *W, float *qkv, const float *src, float *qkr, int N)
{
    const model_config *c = &m->c;
    int H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, QKV = (H + 2 * KV) * hd;
    int gq = qk_groups(c, 0), gk = qk_groups(c, 1);
    model_groupnorm_forward(qkv, qkr, src, QKV, 0, gq, H * hd / gq, W->q_norm, N, c->norm_eps);
    model_groupnorm_forward(qkv, qkr + (size_t)N * gq, src, QKV, H * hd, gk, KV * hd / gk, W->k_norm, N, c->norm_eps);
}

/* The forward's router statistics of layer l, summed in a fixed order: P_e (each over the rows
 * in order) and lse^2 of the z loss (per row in parallel, then summed in order). */
static void router_stats(model_acts *a, int l, const float *pr, const float *rl, int N, int E)
{
    double *P = a->Psum + (size_t)l * E, *z2 = a->zrow, z = 0;
#pragma omp parallel for schedule(static)
    for (int e = 0; e < E; e++) {
        double pe = 0;
        for (int n = 0; n < N; n++) pe += pr[(size_t)n * E + e];
        P[e] = pe;
    }
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *zl = rl + (size_t)n * E;
        float mx = zl[0];
        double se = 0;
        for (int e = 0; e < E; e++) mx = zl[e] > mx ? zl[e] : mx;
        for (int e = 0; e < E; e++) se += exp(zl[e] - mx);
        double lse = mx + log(se);
        z2[n] = lse * lse;
    }
    for (int n = 0; n < N; n++) z += z2[n];
    a->zsum[l] = z;
}

/* Layer l's forward from x[l] into slot s. With stats, it also counts routing picks and
 * sums the router statistics (a recompute for backward leaves those alone). */
static void forward_layer(model *m, model_acts *a, const model_batch *b, int l, int stats)
{
    const model_config *c = &m->c;
    const model_tiles *T = &m->tiles;
    int N = b->B * b->T, Na = a->N, D = c->dim, E = c->n_experts, k = c->top_k, F = c->ffn, s = slot(a, l);
    int H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, Hd = H * hd, QKV = (H + 2 * KV) * hd;
    int moe = model_layer_is_moe(c, l), Fs = model_layer_dense_ffn(c, l);
    const model_layer *W = &m->layers[l];
    float *x = a->x + (size_t)l * Na * D, *xn1 = a->xn, *xn2 = a->xn;
    float *qkv = a->qkv + (size_t)s * Na * QKV, *att = a->att + (size_t)s * Na * Hd;
    float *qkv0 = a->qkv0 ? a->qkv0 + (size_t)s * Na * QKV : qkv; /* the projection's output */
    float *xmid = a->xmid + (size_t)s * Na * D;
    size_t nk = (size_t)s * Na * k;
    PROF(PROF_NORM, fwd, model_rmsnorm_forward(xn1, a->rstd1 + (size_t)s * Na, x, W->attn_norm, N, D, c->norm_eps));
    PROF(PROF_ATTN, fwd, {
        model_mm_xwt(T, N, 1, xn1, D, &W->wqkv, 0, qkv0, QKV);
        if (W->bqkv) model_bias_add(qkv0, QKV, W->bqkv, QKV, N);
    });
    for (int t = LORA_Q; t <= LORA_V; t++) { /* adapters act on the projections, before norms and RoPE */
        const lora_site *st = lora_site_at(m->lora, l, t);
        if (st) PROF(PROF_LORA, fwd, lora_forward(m->lora, st, 0, qkv0 + qkv_col(c, t), QKV, xn1, D, N, lora_xa(a, s, t)));
    }
    PROF(PROF_ATTN, fwd, {
        if (qkv0 != qkv) par_copy(qkv, qkv0, (size_t)N * QKV);
        if (c->qk_norm) qk_norm_forward(m, W, qkv, qkv0, a->qkr + (size_t)s * Na * (qk_groups(c, 0) + qk_groups(c, 1)), N);
        if (c->clip_qkv > 0) clip_forward(qkv, N, QKV, (float)c->clip_qkv);
        attn_rope(qkv, a->pos, a->cos_t, a->sin_t, N, H, KV, hd, 0);
        attn_forward(att, a->lse + (size_t)s * Na * H, qkv, a->kv_start, b->B, b->T, H, KV, hd, a->attn_scr);
        par_copy(xmid, x, (size_t)N * D);
        model_mm_xwt(T, N, 1, att, Hd, &W->wo, 1, xmid, D);
        if (W->bo) model_bias_add(xmid, D, W->bo, D, N);
    });
    const lora_site *so = lora_site_at(m->lora, l, LORA_O);
    if (so) PROF(PROF_LORA, fwd, lora_forward(m->lora, so, 0, xmid, D, att, Hd, N, lora_xa(a, s, LORA_O)));
    PROF(PROF_NORM, fwd, model_rmsnorm_forward(xn2, a->rstd2 + (size_t)s * Na, xmid, W->ffn_norm, N, D, c->norm_eps));
    float *xout = a->x + (size_t)(l + 1) * Na * D;
    if (moe) { /* the experts' combine starts from xmid */
        int *off = a->off + (size_t)s * (E + 1);
        float *rl = a->rlogits + (size_t)s * Na * E, *pr = a->probs + (size_t)s * Na * E;
        PROF(PROF_ROUTER, fwd, {
            if (stats) memset(a->counts + (size_t)l * E, 0, (size_t)E * sizeof(int));
            moe_route(rl, pr, a->topi + nk, a->topw + nk, stats ? a->counts + (size_t)l * E : NULL, xn2, W->gate, N,
                      D, E, k, !c->topk_raw);
            moe_sort(off, a->row_tok + nk, a->slot_row + nk, a->topi + nk, N, E, k);
            if (stats) router_stats(a, l, pr, rl, N, E);
        });
        moe_lora ml, *mlp = moe_lora_of(m, a, l, LORA_W1, &ml);
        PROF(PROF_EXPERTS, fwd,
             moe_experts_forward(T, xout, a->h13 + nk * 2 * F, a->dys, a->xs, a->act, xn2, W->w13, W->w2, off,
                                 a->row_tok + nk, a->slot_row + nk, a->topw + nk, N, D, F, E, k, mlp, xmid));
    } else {
        par_copy(xout, xmid, (size_t)N * D);
    }
    if (Fs) { /* the dense MLP, weight 1 per row, or the shared expert, weight sigmoid(x . gate) */
        float *w = a->sw + (size_t)s * Na;
        moe_lora ml, *mlp = moe_lora_of(m, a, l, LORA_S1, &ml);
        PROF(PROF_EXPERTS, fwd, {
            if (W->sgate) {
                model_gemm(0, 1, N, 1, D, 1, xn2, D, W->sgate, D, 0, w, 1);
                for (int n = 0; n < N; n++) w[n] = 1.0f / (1.0f + expf(-w[n]));
            } else {
                for (int n = 0; n < N; n++) w[n] = 1.0f;
            }
            moe_experts_forward(T, xout, a->sh13 + (size_t)s * Na * 2 * a->Fs, a->dys, a->xs, a->act, xn2, &W->sw13,
                                &W->sw2, a->dense_off, a->ident, a->ident, w, N, D, Fs, 1, 1, mlp, NULL);
        });
    }
}

static void forward_layers(model *m, model_acts *a, const model_batch *b)
{
    const model_config *c = &m->c;
    int N = b->B * b->T, D = c->dim;
    setup_positions(a, m, b);
    PROF(PROF_EMBED, fwd, embed_forward(a->x, &m->embed, b->tokens, N, D));
    memset(a->counts, 0, (size_t)a->L * a->E * sizeof(int));
    for (int l = 0; l < c->n_layers; l++) forward_layer(m, a, b, l, 1);
    PROF(PROF_NORM, fwd,
         model_rmsnorm_forward(a->xnf, a->rstdf, a->x + (size_t)c->n_layers * a->N * D, m->final_norm, N, D,
                               c->norm_eps));
}

/* Load-balancing (aux) and z losses over all MoE layers' router rows, HF's concatenation. With
 * global and data parallelism (m->dp) the pick counts, probability sums, z sum and row count
 * are first summed over the ranks: f, P, aux and z are those of the global micro-batch. */
static void router_losses(model *m, model_acts *a, int N, int global, model_stats *st)
{
    const model_config *c = &m->c;
    int E = c->n_experts, L = c->n_layers;
    double v[2 * E + 2], aux = 0, z = 0; /* [counts E | prob sums E | z sum | rows] */
    for (int e = 0; e < E; e++) {
        long cnt = 0;
        a->P[e] = 0;
        for (int l = 0; l < L; l++)
            if (model_layer_is_moe(c, l)) {
                cnt += a->counts[l * E + e];
                a->P[e] += a->Psum[(size_t)l * E + e];
            }
        v[e] = (double)cnt;
        v[E + e] = a->P[e];
    }
    for (int l = 0; l < L; l++)
        if (model_layer_is_moe(c, l)) z += a->zsum[l];
    v[2 * E] = z;
    v[2 * E + 1] = (double)model_moe_layers(c) * N;
    if (global && m->dp && m->dp->sum) m->dp->sum(m->dp->ctx, v, 2 * E + 2);
    double rows = a->rows = v[2 * E + 1];
    if (rows == 0) {
        st->aux = st->z = 0;
        return;
    }
    for (int e = 0; e < E; e++) {
        a->f[e] = v[e] / rows;
        a->P[e] = v[E + e] / rows;
        aux += a->f[e] * a->P[e];
    }
    st->aux = E * aux;
    st->z = v[2 * E] / rows;
}

static void head_frozen(model *m, model_acts *a, const model_batch *b, int train, double ce_scale, model_stats *st)
{
    int N = b->B * b->T, D = m->c.dim, V = m->c.vocab;
    size_t vbw = a->head_vb, fit = head_frozen_rows(a->head_floats, vbw, D);
    int chunk = fit < (size_t)N ? (int)fit : N;
    double ce_sum = 0, *S = (double *)(a->head + ((size_t)chunk * vbw + 1) / 2 * 2); /* per row: sum of exp(z - mx) */
    long count = 0;
    float *mx = (float *)(S + chunk), *zy = mx + chunk, *wy = zy + chunk; /* max, target's logit, W_y */
    for (int n0 = 0; n0 < N; n0 += chunk) {
        int rows = N - n0 < chunk ? N - n0 : chunk;
        const float *x = a->xnf + (size_t)n0 * D;
        float *acc = train ? a->dxn + (size_t)n0 * D : NULL;
        if (train) memset(acc, 0, (size_t)rows * D * sizeof(float));
        for (int i = 0; i < rows; i++) S[i] = 0, mx[i] = -INFINITY, zy[i] = 0;
        for (int v0 = 0, v1; v0 < V; v0 = v1) {
            const float *w = model_mat_block(&m->tiles, &m->lm_head, v0, (int)vbw, &v1);
            int vb = v1 - v0;
            float *z = a->head; /* (rows, vb) */
            model_gemm(0, 1, rows, vb, D, 1, x, D, w, D, 0, z, vb);
#pragma omp parallel for schedule(static)
            for (int i = 0; i < rows; i++) {
                int y = target_of(b, n0 + i);
                float *zi = z + (size_t)i * vb;
                if (y < 0) {
                    memset(zi, 0, (size_t)vb * sizeof(float));
                    continue;
                }
                if (y >= v0 && y < v1) zy[i] = zi[y - v0];
                float bm = model_row_max(zi, vb);
                if (bm > mx[i]) {
                    if (mx[i] != -INFINITY) { /* rescale what the earlier blocks summed */
                        float c = model_expf(mx[i] - bm);
                        S[i] *= c;
                        if (train)
                            for (float *ai = acc + (size_t)i * D, *e = ai + D; ai < e; ai++) *ai *= c;
                    }
                    mx[i] = bm;
                }
                S[i] += model_row_expsum(zi, vb, mx[i], train);
            }
            if (train) model_gemm(0, 0, rows, D, vb, 1, z, vb, w, D, 1, acc, D);
        }
        for (int i = 0; i < rows; i++) {
            int y = target_of(b, n0 + i);
            if (y < 0) continue;
            if (train) {
                float *ai = acc + (size_t)i * D, inv = (float)(ce_scale / S[i]), cs = (float)ce_scale;
                model_mat_row(&m->lm_head, y, wy);
                for (int d = 0; d < D; d++) ai[d] = ai[d] * inv - cs * wy[d];
            }
            ce_sum += mx[i] + log(S[i]) - zy[i];
            count++;
        }
    }
    st->ce_sum = ce_sum;
    st->n_targets = count;
    st->ce = count ? ce_sum / count : 0;
}

/* lm_head + cross-entropy over a->head_rows-row chunks. With train, also the backward of both:
 * dxn (N,D) = dlogits lm_head, dlm_head += dlogits^T xnf, dlogits = ce_scale (softmax - onehot). */
static void head(model *m, model_acts *a, const model_batch *b, float *logits_out, int train, double ce_scale,
                 model_stats *st)
{
    int N = b->B * b->T, D = m->c.dim, V = m->c.vocab;
    double ce_sum = 0;
    long count = 0;
    float *dW = train ? m->glm_head : NULL;
    if (!dW && !logits_out) { /* a frozen lm_head, or no backward: one pass, no logits kept */
        head_frozen(m, a, b, train, ce_scale, st);
        return;
    }
    double *row_ce = a->row_ce; /* per-row losses, summed in order below: reproducible */
    int chunk = a->head_rows;
    for (int n0 = 0; n0 < N; n0 += chunk) {
        int rows = N - n0 < chunk ? N - n0 : chunk;
        float *lg = logits_out ? logits_out + (size_t)n0 * V : a->head;
        model_mm_xwt(&m->tiles, rows, 1, a->xnf + (size_t)n0 * D, D, &m->lm_head, 0, lg, V);
#pragma omp parallel for schedule(static)
        for (int i = 0; i < rows; i++) {
            int y = target_of(b, n0 + i);
            float *z = lg + (size_t)i * V;
            row_ce[i] = -1;
            if (y < 0) {
                if (train) memset(z, 0, (size_t)V * sizeof(float));
                continue;
            }
            float zy = z[y];
            row_ce[i] = kern_ce_row(z, V, (float)ce_scale, train) - zy; /* train: z := ce_scale softmax */
            if (train) z[y] -= (float)ce_scale;                          /* dlogits = ce_scale (softmax - onehot) */
        }
        for (int i = 0; i < rows; i++)
            if (row_ce[i] != -1.0) ce_sum += row_ce[i], count++; /* -1 marks "no target" */
        if (train) {
            if (dW) model_gemm(1, 0, V, D, rows, 1, lg, V, a->xnf + (size_t)n0 * D, D, 1, dW, D);
            model_mm_xw(&m->tiles, rows, 1, lg, V, &m->lm_head, 0, a->dxn + (size_t)n0 * D, D);
        }
    }
    st->ce_sum = ce_sum;
    st->n_targets = count;
    st->ce = count ? ce_sum / count : 0;
}

int model_forward(model *m, model_acts *a, const model_batch *b, float aux_coef, float z_coef, float *logits,
                  model_stats *st, char *err)
{
    if (check_batch(m, a, b, err)) return -1;
    if (m->lora) m->lora->training = 0;
    forward_layers(m, a, b);
    PROF(PROF_ROUTER, fwd, router_losses(m, a, b->B * b->T, 0, st));
    PROF(PROF_HEAD, fwd, head(m, a, b, logits, 0, 0, st));
    st->loss = st->ce + aux_coef * st->aux + z_coef * st->z;
    return 0;
}

/* The gradient through clip (zero where the forward clamped: |pre-clip| > c, torch's
 * clamp passes it at the bounds) and the q/k norms: dqkv (N, QKV) becomes dL/d(projection
 * output), from the kept projection output qkv0. */
static void qk_backward(model *m, model_acts *a, const model_layer *W, model_grads *G, int s, int N)
{
    const model_config *c = &m->c;
    int H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, QKV = (H + 2 * KV) * hd, Na = a->N;
    int gq = qk_groups(c, 0), gk = qk_groups(c, 1);
    const float *qkv0 = a->qkv0 + (size_t)s * Na * QKV;
    const float *qkr = c->qk_norm ? a->qkr + (size_t)s * Na * (gq + gk) : NULL;
    if (c->clip_qkv > 0) { /* the pre-clip values again: the norms' output, or v as projected */
        float cl = (float)c->clip_qkv, *pre = a->qkvn;
        par_copy(pre, qkv0, (size_t)N * QKV);
        if (c->qk_norm) qk_norm_forward(m, W, pre, qkv0, (float *)qkr, N); /* the same rstd rewritten */
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++)
            for (int j = 0; j < QKV; j++)
                if (fabsf(pre[(size_t)n * QKV + j]) > cl) a->dqkv[(size_t)n * QKV + j] = 0;
    }
    if (c->qk_norm) {
        model_groupnorm_backward(a->dqkv, G->q_norm, a->dqkv, qkv0, QKV, 0, gq, H * hd / gq, W->q_norm, qkr, N);
        model_groupnorm_backward(a->dqkv, G->k_norm, a->dqkv, qkv0, QKV, H * hd, gk, KV * hd / gk, W->k_norm,
                                 qkr + (size_t)N * gq, N);
    }
}

/* Layer l's backward: a->dx holds dL/dx[l+1] and becomes dL/dx[l]. */
static void backward_layer(model *m, model_acts *a, const model_batch *b, int l, const float *aux_dp, float z_w)
{
    const model_config *c = &m->c;
    const model_tiles *T = &m->tiles;
    int N = b->B * b->T, Na = a->N, D = c->dim, E = c->n_experts, k = c->top_k, F = c->ffn, s = slot(a, l);
    int H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, Hd = H * hd, QKV = (H + 2 * KV) * hd;
    int moe = model_layer_is_moe(c, l), Fs = model_layer_dense_ffn(c, l);
    const model_layer *W = &m->layers[l];
    model_grads *G = &m->glayers[l];
    float *x = a->x + (size_t)l * Na * D, *xn1 = a->xn, *xn2 = a->xn;
    float *qkv = a->qkv + (size_t)s * Na * QKV, *att = a->att + (size_t)s * Na * Hd;
    float *xmid = a->xmid + (size_t)s * Na * D;
    size_t nk = (size_t)s * Na * k;
    /* a->dx holds dL/dx[l+1]: through the MLP block (residual passes it on unchanged) */
    PROF(PROF_NORM, bwd, model_rmsnorm_apply(xn2, xmid, a->rstd2 + (size_t)s * Na, W->ffn_norm, N, D));
    if (moe) { /* the experts' combine sets dxn */
        moe_lora ml, *mlp = moe_lora_of(m, a, l, LORA_W1, &ml);
        PROF(PROF_EXPERTS, bwd, /* dL/dh13 overwrites h13 (each row read before it is written) */
             moe_experts_backward(T, a->dxn, G->w13, G->w2, a->dtopw, a->dx, a->h13 + nk * 2 * F, xn2, W->w13, W->w2,
                                  a->off + (size_t)s * (E + 1), a->row_tok + nk, a->slot_row + nk, a->topw + nk,
                                  a->xs, a->act, a->dys, a->eg, a->erows, N, D, F, E, k, mlp, 1));
        PROF(PROF_ROUTER, bwd,
             moe_router_backward(a->dxn, G->gate, a->drl, a->dtopw, a->rlogits + (size_t)s * Na * E,
                                 a->probs + (size_t)s * Na * E, a->topi + nk, a->topw + nk, aux_dp, z_w, xn2, W->gate,
                                 N, D, E, k, !c->topk_raw));
    } else {
        par_zero(a->dxn, (size_t)N * D);
    }
    if (Fs) {
        const float *w = a->sw + (size_t)s * Na;
        moe_lora ml, *mlp = moe_lora_of(m, a, l, LORA_S1, &ml);
        PROF(PROF_EXPERTS, bwd, {
            moe_experts_backward(T, a->dxn, G->sw13, G->sw2, a->dsw, a->dx, a->sh13 + (size_t)s * Na * 2 * a->Fs, xn2,
                                 &W->sw13, &W->sw2, a->dense_off, a->ident, a->ident, w, a->xs, a->act, a->dys, a->eg,
                                 a->erows, N, D, Fs, 1, 1, mlp, 0);
            if (W->sgate) { /* w = sigmoid(g): dg = dw w (1 - w) */
                for (int n = 0; n < N; n++) a->dsw[n] *= w[n] * (1.0f - w[n]);
                if (G->sgate) model_gemm(1, 0, 1, D, N, 1, a->dsw, 1, xn2, D, 1, G->sgate, D);
                model_gemm(0, 0, N, D, 1, 1, a->dsw, 1, W->sgate, D, 1, a->dxn, D);
            }
        });
    }
    PROF(PROF_NORM, bwd,
         model_rmsnorm_backward(a->dx, G->ffn_norm, a->dxn, xmid, W->ffn_norm, a->rstd2 + (size_t)s * Na, N, D));
    /* attention block: xmid = x + att Wo^T (+ bo) */
    float *dWo = G->wo, *dWqkv = G->wqkv;
    PROF(PROF_ATTN, bwd, {
        if (G->bo) model_bias_backward(G->bo, a->dx, D, D, N);
        if (dWo) model_gemm(1, 0, D, Hd, N, 1, a->dx, D, att, Hd, 1, dWo, Hd);
        model_mm_xw(T, N, 1, a->dx, D, &W->wo, 0, a->datt, Hd);
    });
    const lora_site *so = lora_site_at(m->lora, l, LORA_O);
    if (so)
        PROF(PROF_LORA, bwd, {
            lora_backward_w(m->lora, so, 0, a->dx, D, att, Hd, N, lora_xa(a, s, LORA_O));
            lora_backward_x(m->lora, so, 0, a->datt, Hd, N);
        });
    /* below layer 0's q/k/v only the embedding could want a gradient: a frozen base
     * (LoRA) stops there */
    int need_dx = l > 0 || m->gembed || G->attn_norm;
    if (dWqkv || lora_site_at(m->lora, l, LORA_Q) || lora_site_at(m->lora, l, LORA_K) ||
        lora_site_at(m->lora, l, LORA_V))
        PROF(PROF_NORM, bwd, model_rmsnorm_apply(xn1, x, a->rstd1 + (size_t)s * Na, W->attn_norm, N, D));
    PROF(PROF_ATTN, bwd, {
        attn_backward(a->dqkv, a->datt, att, qkv, a->lse + (size_t)s * Na * H, a->kv_start, b->B, b->T, H, KV, hd,
                      a->attn_scr);
        attn_rope(a->dqkv, a->pos, a->cos_t, a->sin_t, N, H, KV, hd, 1);
        if (a->qkv0) qk_backward(m, a, W, G, s, N);
        if (G->bqkv) model_bias_backward(G->bqkv, a->dqkv, QKV, QKV, N);
        if (dWqkv) model_gemm(1, 0, QKV, D, N, 1, a->dqkv, QKV, xn1, D, 1, dWqkv, D);
        if (need_dx) model_mm_xw(T, N, 1, a->dqkv, QKV, &W->wqkv, 0, a->dxn, D);
    });
    for (int t = LORA_Q; t <= LORA_V; t++) {
        const lora_site *st = lora_site_at(m->lora, l, t);
        if (!st) continue;
        PROF(PROF_LORA, bwd, {
            lora_backward_w(m->lora, st, 0, a->dqkv + qkv_col(c, t), QKV, xn1, D, N, lora_xa(a, s, t));
            if (need_dx) lora_backward_x(m->lora, st, 0, a->dxn, D, N);
        });
    }
    if (need_dx)
        PROF(PROF_NORM, bwd,
             model_rmsnorm_backward(a->dx, G->attn_norm, a->dxn, x, W->attn_norm, a->rstd1 + (size_t)s * Na, N, D));
}

int model_forward_backward(model *m, model_acts *a, const model_batch *b, double ce_scale, double aux_coef,
                           double z_coef, int n_micro, model_stats *st, char *err)
{
    if (check_batch(m, a, b, err)) return -1;
    const model_config *c = &m->c;
    int N = b->B * b->T, Na = a->N, D = c->dim, E = c->n_experts;
    if (m->lora) m->lora->training = 1; /* dropout on */
    forward_layers(m, a, b);
    PROF(PROF_ROUTER, fwd, router_losses(m, a, N, 1, st));
    PROF(PROF_HEAD, bwd, head(m, a, b, NULL, 1, ce_scale, st)); /* fused fwd+bwd; leaves dL/dxnf in a->dxn */
    st->loss = st->ce + aux_coef * st->aux + z_coef * st->z;
    double aux_scale = aux_coef / n_micro, z_scale = z_coef / n_micro;

    par_zero(a->dx, (size_t)N * D);
    PROF(PROF_NORM, bwd,
         model_rmsnorm_backward(a->dx, m->gfinal_norm, a->dxn, a->x + (size_t)c->n_layers * Na * D, m->final_norm,
                                a->rstdf, N, D));
    if (m->dp && m->dp->grads_done) m->dp->grads_done(m->dp->ctx, c->n_layers); /* lm_head, final norm */
    double rows = a->rows;
    float aux_dp[E];
    for (int e = 0; e < E; e++) aux_dp[e] = rows > 0 ? (float)(aux_scale * E * a->f[e] / rows) : 0;
    float z_w = rows > 0 ? (float)(z_scale / rows) : 0;

    for (int l = c->n_layers - 1; l >= 0; l--) {
        if (a->ckpt) forward_layer(m, a, b, l, 0); /* this layer's activations again, into the slot */
        backward_layer(m, a, b, l, aux_dp, z_w);
        if (m->dp && m->dp->grads_done) m->dp->grads_done(m->dp->ctx, l);
    }
    float *dE = m->gembed;
    if (dE)
        PROF(PROF_EMBED, bwd, {
            for (int n = 0; n < N; n++) {
                if (b->tokens[n] == c->pad_id) continue; /* nn.Embedding's padding_idx gets no gradient */
                float *g = dE + (size_t)b->tokens[n] * D;
                const float *d = a->dx + (size_t)n * D;
                for (int i = 0; i < D; i++) g[i] += d[i];
            }
        });
    if (m->dp && m->dp->grads_done) m->dp->grads_done(m->dp->ctx, -1);
    if (m->lora) m->lora->training = 0;
    return 0;
}
