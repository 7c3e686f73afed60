/* forward: the whole-model passes. One arena (model_acts) holds every activation kept for
 * backward plus the scratch of one layer, sized from the config before the first step. */
#include "common/err.h"
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

/* Time stmt into family fam of direction dir (fwd/bwd) when profiling is on. */
#define PROF(fam, dir, stmt)                                                                                          \
    do {                                                                                                              \
        double t0_ = m->prof ? omp_get_wtime() : 0;                                                                   \
        stmt;                                                                                                         \
        if (m->prof) m->prof->dir[fam] += omp_get_wtime() - t0_;                                                      \
    } while (0) /* rows of logits alive at once in the fused lm_head + cross-entropy */

struct model_acts {
    int B, T, N, L, k, E, nthreads;
    /* kept per layer l (stride N rows): */
    float *x;                    /* (L+1, N, D) residual stream entering layer l; x[L] leaves the last */
    float *rstd1;                /* (L, N): norms keep rstd; backward recomputes their outputs */
    float *qkv;                  /* (L, N, QKV) after RoPE */
    float *att, *lse;            /* (L, N, H*hd), (L, B, H, T) */
    float *xmid, *rstd2;         /* (L, N, D), (L, N) */
    float *rlogits, *probs;      /* (L, N, E) */
    int *topi;                   /* (L, N, k) */
    float *topw;                 /* (L, N, k) */
    int *off, *row_tok, *slot_row; /* (L, E+1), (L, Nk), (L, Nk) */
    float *h13;                  /* (L, Nk, 2F) expert hidden pre-activations [h1 | h3] */
    float *xnf, *rstdf;          /* (N, D), (N) */
    int *counts;                 /* (L, E) */
    /* per batch */
    int *pos, *kv_start;         /* (N) */
    float *cos_t, *sin_t;        /* (T, hd/2) */
    /* scratch */
    float *xn;                   /* (N, D) the current norm's output, forward and backward */
    float *dx, *dxn, *dqkv, *datt, *attn_scr, *xs, *act, *dys, *eg, *erows, *dtopw, *drl, *head; /* dh13: h13 */
    double *row_ce;              /* (head_rows) */
    int head_rows;               /* logit rows per lm_head chunk */
    float *lxa;                  /* LoRA: (L, 4*N + 3*Nk, r) inputs times A, kept for backward */
    int lora_r;
    double f[64], P[64];         /* aux-loss statistics of the last forward (E <= 64) */
    size_t bytes;
    char *mem;
};

static void *carve(char **p, size_t bytes)
{
    void *r = *p;
    *p += (bytes + 63) & ~(size_t)63;
    return r;
}

/* Assign every pointer of a from base (NULL base: just count bytes). */
static size_t layout(struct model_acts *a, const model_config *c, int B, int T, int nthreads, int lora_r,
                     char *base)
{
    size_t N = (size_t)B * T, L = c->n_layers, D = c->dim, E = c->n_experts, k = c->top_k, F = c->ffn;
    size_t hd = c->head_dim, Hd = c->n_heads * hd, QKV = (c->n_heads + 2 * c->n_kv_heads) * hd, Nk = N * k;
    size_t V = c->vocab;
    char *p = base ? base : (char *)64; /* aligned dummy so sizes include padding */
    char *p0 = p;
    const size_t f = sizeof(float), i = sizeof(int);
    a->x = carve(&p, (L + 1) * N * D * f);
    a->rstd1 = carve(&p, L * N * f);
    a->qkv = carve(&p, L * N * QKV * f);
    a->att = carve(&p, L * N * Hd * f);
    a->lse = carve(&p, L * N * c->n_heads * f);
    a->xmid = carve(&p, L * N * D * f);
    a->rstd2 = carve(&p, L * N * f);
    a->rlogits = carve(&p, L * N * E * f);
    a->probs = carve(&p, L * N * E * f);
    a->topi = carve(&p, L * Nk * i);
    a->topw = carve(&p, L * Nk * f);
    a->off = carve(&p, L * (E + 1) * i);
    a->row_tok = carve(&p, L * Nk * i);
    a->slot_row = carve(&p, L * Nk * i);
    a->h13 = carve(&p, L * Nk * 2 * F * f);
    a->xnf = carve(&p, N * D * f);
    a->rstdf = carve(&p, N * f);
    a->counts = carve(&p, L * E * i);
    a->pos = carve(&p, N * i);
    a->kv_start = carve(&p, N * i);
    a->cos_t = carve(&p, (size_t)T * hd / 2 * f);
    a->sin_t = carve(&p, (size_t)T * hd / 2 * f);
    a->dx = carve(&p, N * D * f);
    a->dxn = carve(&p, N * D * f);
    a->dtopw = carve(&p, Nk * f);
    a->drl = carve(&p, N * E * f);
    /* The layers' scratch and the head's logit chunk are never alive at once (the head runs
     * between the last layer's forward and its backward): they share one region. */
    char *shared = p, *layers_end;
    a->dqkv = carve(&p, N * QKV * f);
    a->datt = carve(&p, N * Hd * f);
    a->attn_scr = carve(&p, (size_t)nthreads * attn_scratch_floats(T) * f);
    a->xs = carve(&p, Nk * D * f);
    a->act = carve(&p, Nk * F * f);
    a->dys = carve(&p, Nk * D * f); /* also the forward's expert outputs ye */
    a->eg = carve(&p, Nk * F * f);
    a->erows = carve(&p, 2 * Nk * f);
    a->xn = carve(&p, N * D * f);
    layers_end = p;
    p = shared;
    a->head_rows = head_rows(V, (size_t)(layers_end - shared));
    a->head = carve(&p, (size_t)a->head_rows * V * f);
    if (p < layers_end) p = layers_end;
    a->row_ce = carve(&p, (size_t)a->head_rows * sizeof(double));
    a->lxa = lora_r ? carve(&p, L * (4 * N + 3 * Nk) * (size_t)lora_r * f) : NULL;
    a->lora_r = lora_r;
    return (size_t)(p - p0);
}

size_t model_acts_bytes(const model_config *c, int B, int T, int lora_r)
{
    struct model_acts a;
    return layout(&a, c, B, T, omp_get_max_threads(), lora_r, NULL);
}

/* Saved LoRA input projection of layer l, target t. */
static float *lora_xa(const model_acts *a, int l, int t)
{
    size_t N = a->N, Nk = N * a->k, r = a->lora_r;
    size_t base = (size_t)l * (4 * N + 3 * Nk) * r;
    return a->lxa + base + (t < LORA_W1 ? t * N * r : 4 * N * r + (t - LORA_W1) * Nk * r);
}

int model_acts_create(model_acts **out, const model *m, int B, int T, char *err)
{
    const model_config *c = &m->c;
    if (c->n_experts > 64) return err_set(err, "at most 64 experts are supported (got %d)", c->n_experts);
    struct model_acts *a = calloc(1, sizeof *a);
    if (!a) return err_set(err, "out of memory");
    a->B = B;
    a->T = T;
    a->N = B * T;
    a->L = c->n_layers;
    a->k = c->top_k;
    a->E = c->n_experts;
    a->nthreads = omp_get_max_threads();
    int lr = m->lora ? m->lora->lc.r : 0;
    a->bytes = layout(a, c, B, T, a->nthreads, lr, NULL);
    if (posix_memalign((void **)&a->mem, 64, a->bytes)) {
        double gib = a->bytes / 1073741824.0;
        free(a);
        return err_set(err, "out of memory allocating %.2f GiB of activations for batch %dx%d", gib, B, T);
    }
    layout(a, c, B, T, a->nthreads, lr, a->mem);
    if (m->lora) {
        size_t rows = (size_t)a->N * c->top_k, cols = c->dim;
        if ((size_t)c->n_heads * c->head_dim > cols) cols = (size_t)c->n_heads * c->head_dim;
        if ((size_t)c->ffn > cols) cols = c->ffn;
        if (lora_reserve(m->lora, rows, cols, err)) {
            model_acts_free(a);
            return -1;
        }
    }
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

void model_acts_free(model_acts *a)
{
    if (!a) return;
    free(a->mem);
    free(a);
}

const int *model_expert_counts(const model_acts *a) { return a->counts; }

const float *model_router_logits(const model_acts *a, int l)
{
    return a->rlogits + (size_t)l * a->N * a->E;
}

const int *model_routing(const model_acts *a, int l, const float **weights)
{
    size_t nk = (size_t)l * a->N;
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

/* The experts' adapters of layer l, or NULL when it has none. */
static moe_lora *moe_lora_of(const model *m, const model_acts *a, int l, moe_lora *ml)
{
    ml->lo = m->lora;
    ml->w1 = lora_site_at(m->lora, l, LORA_W1);
    ml->w2 = lora_site_at(m->lora, l, LORA_W2);
    ml->w3 = lora_site_at(m->lora, l, LORA_W3);
    if (!ml->w1 && !ml->w2 && !ml->w3) return NULL;
    ml->xa1 = lora_xa(a, l, LORA_W1);
    ml->xa2 = lora_xa(a, l, LORA_W2);
    ml->xa3 = lora_xa(a, l, LORA_W3);
    return ml;
}

/* x (N,D) = embed[tokens] */
static void embed_forward(float *x, const float *embed, const int32_t *tokens, int N, int D)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) memcpy(x + (size_t)n * D, embed + (size_t)tokens[n] * D, (size_t)D * sizeof(float));
}

static void forward_layers(model *m, model_acts *a, const model_batch *b)
{
    const model_config *c = &m->c;
    int N = b->B * b->T, Na = a->N, D = c->dim, E = c->n_experts, k = c->top_k, F = c->ffn;
    int H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, Hd = H * hd, QKV = (H + 2 * KV) * hd;
    setup_positions(a, m, b);
    PROF(PROF_EMBED, fwd, embed_forward(a->x, m->embed, b->tokens, N, D));
    memset(a->counts, 0, (size_t)a->L * E * sizeof(int));
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *W = &m->layers[l];
        float *x = a->x + (size_t)l * Na * D, *xn1 = a->xn, *xn2 = a->xn;
        float *qkv = a->qkv + (size_t)l * Na * QKV, *att = a->att + (size_t)l * Na * Hd;
        float *xmid = a->xmid + (size_t)l * Na * D;
        size_t nk = (size_t)l * Na * k;
        PROF(PROF_NORM, fwd, model_rmsnorm_forward(xn1, a->rstd1 + (size_t)l * Na, x, W->attn_norm, N, D, c->norm_eps));
        PROF(PROF_ATTN, fwd, model_gemm(0, 1, N, QKV, D, 1, xn1, D, W->wqkv, D, 0, qkv, QKV));
        for (int t = LORA_Q; t <= LORA_V; t++) { /* adapters act on q/k/v before RoPE */
            const lora_site *s = lora_site_at(m->lora, l, t);
            int col = t == LORA_Q ? 0 : t == LORA_K ? H * hd : (H + KV) * hd;
            if (s) PROF(PROF_LORA, fwd, lora_forward(m->lora, s, 0, qkv + col, QKV, xn1, D, N, lora_xa(a, l, t)));
        }
        PROF(PROF_ATTN, fwd, {
            attn_rope(qkv, a->pos, a->cos_t, a->sin_t, N, H, KV, hd, 0);
            attn_forward(att, a->lse + (size_t)l * Na * H, qkv, a->kv_start, b->B, b->T, H, KV, hd, a->attn_scr);
            memcpy(xmid, x, (size_t)N * D * sizeof(float));
            model_gemm(0, 1, N, D, Hd, 1, att, Hd, W->wo, Hd, 1, xmid, D);
        });
        const lora_site *so = lora_site_at(m->lora, l, LORA_O);
        if (so) PROF(PROF_LORA, fwd, lora_forward(m->lora, so, 0, xmid, D, att, Hd, N, lora_xa(a, l, LORA_O)));
        PROF(PROF_NORM, fwd, model_rmsnorm_forward(xn2, a->rstd2 + (size_t)l * Na, xmid, W->ffn_norm, N, D, c->norm_eps));
        int *off = a->off + (size_t)l * (E + 1);
        PROF(PROF_ROUTER, fwd, {
            moe_route(a->rlogits + (size_t)l * Na * E, a->probs + (size_t)l * Na * E, a->topi + nk, a->topw + nk,
                      a->counts + (size_t)l * E, xn2, W->gate, N, D, E, k);
            moe_sort(off, a->row_tok + nk, a->slot_row + nk, a->topi + nk, N, E, k);
        });
        float *xout = a->x + (size_t)(l + 1) * Na * D;
        moe_lora ml, *mlp = moe_lora_of(m, a, l, &ml);
        PROF(PROF_EXPERTS, fwd, {
            memcpy(xout, xmid, (size_t)N * D * sizeof(float));
            moe_experts_forward(xout, a->h13 + nk * 2 * F, a->dys, a->xs, a->act, xn2, W->w13, W->w2, off,
                                a->row_tok + nk, a->slot_row + nk, a->topw + nk, N, D, F, E, k, mlp);
        });
    }
    PROF(PROF_NORM, fwd,
         model_rmsnorm_forward(a->xnf, a->rstdf, a->x + (size_t)c->n_layers * Na * D, m->final_norm, N, D,
                               c->norm_eps));
}

/* Load-balancing (aux) and z losses over all layers' router rows, HF's concatenation. */
static void router_losses(model *m, model_acts *a, int N, model_stats *st)
{
    const model_config *c = &m->c;
    int E = c->n_experts, L = c->n_layers;
    double rows = (double)L * N, aux = 0, z = 0;
    for (int e = 0; e < E; e++) {
        long cnt = 0;
        for (int l = 0; l < L; l++) cnt += a->counts[l * E + e];
        a->f[e] = cnt / rows;
        a->P[e] = 0;
    }
    for (int l = 0; l < L; l++)
        for (int n = 0; n < N; n++) {
            const float *p = a->probs + ((size_t)l * a->N + n) * E, *zl = a->rlogits + ((size_t)l * a->N + n) * E;
            float mx = zl[0];
            double s = 0;
            for (int e = 0; e < E; e++) {
                a->P[e] += p[e];
                mx = zl[e] > mx ? zl[e] : mx;
            }
            for (int e = 0; e < E; e++) s += exp(zl[e] - mx);
            double lse = mx + log(s);
            z += lse * lse;
        }
    for (int e = 0; e < E; e++) {
        a->P[e] /= rows;
        aux += a->f[e] * a->P[e];
    }
    st->aux = E * aux;
    st->z = z / rows;
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
    double *row_ce = a->row_ce; /* per-row losses, summed in order below: reproducible */
    int chunk = a->head_rows;
    for (int n0 = 0; n0 < N; n0 += chunk) {
        int rows = N - n0 < chunk ? N - n0 : chunk;
        float *lg = logits_out ? logits_out + (size_t)n0 * V : a->head;
        model_gemm(0, 1, rows, V, D, 1, a->xnf + (size_t)n0 * D, D, m->lm_head, D, 0, lg, V);
#pragma omp parallel for schedule(static)
        for (int i = 0; i < rows; i++) {
            int y = target_of(b, n0 + i);
            float *z = lg + (size_t)i * V;
            row_ce[i] = -1;
            if (y < 0) {
                if (train) memset(z, 0, (size_t)V * sizeof(float));
                continue;
            }
            float zy = z[y], mx = model_row_max(z, V);
            double s = model_row_expsum(z, V, mx, train); /* train keeps the exponentials: */
            if (train) {                                  /* dlogits = ce_scale * (softmax - onehot) */
                float inv = (float)(ce_scale / s);
                for (int v = 0; v < V; v++) z[v] *= inv;
                z[y] -= (float)ce_scale;
            }
            row_ce[i] = mx + log(s) - zy;
        }
        for (int i = 0; i < rows; i++)
            if (row_ce[i] != -1.0) ce_sum += row_ce[i], count++; /* -1 marks "no target" */
        if (train) {
            if (dW) model_gemm(1, 0, V, D, rows, 1, lg, V, a->xnf + (size_t)n0 * D, D, 1, dW, D);
            model_gemm(0, 0, rows, D, V, 1, lg, V, m->lm_head, D, 0, a->dxn + (size_t)n0 * D, D);
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
    PROF(PROF_ROUTER, fwd, router_losses(m, a, b->B * b->T, st));
    PROF(PROF_HEAD, fwd, head(m, a, b, logits, 0, 0, st));
    st->loss = st->ce + aux_coef * st->aux + z_coef * st->z;
    return 0;
}

int model_forward_backward(model *m, model_acts *a, const model_batch *b, double ce_scale, double aux_coef,
                           double z_coef, int n_micro, model_stats *st, char *err)
{
    if (check_batch(m, a, b, err)) return -1;
    const model_config *c = &m->c;
    int N = b->B * b->T, Na = a->N, D = c->dim, E = c->n_experts, k = c->top_k, F = c->ffn;
    int H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, Hd = H * hd, QKV = (H + 2 * KV) * hd;
    if (m->lora) m->lora->training = 1; /* dropout on */
    forward_layers(m, a, b);
    PROF(PROF_ROUTER, fwd, router_losses(m, a, N, st));
    PROF(PROF_HEAD, bwd, head(m, a, b, NULL, 1, ce_scale, st)); /* fused fwd+bwd; leaves dL/dxnf in a->dxn */
    st->loss = st->ce + aux_coef * st->aux + z_coef * st->z;
    double aux_scale = aux_coef / n_micro, z_scale = z_coef / n_micro;

    memset(a->dx, 0, (size_t)N * D * sizeof(float));
    PROF(PROF_NORM, bwd,
         model_rmsnorm_backward(a->dx, m->gfinal_norm, a->dxn, a->x + (size_t)c->n_layers * Na * D,
                                m->final_norm, a->rstdf, N, D));
    double rows = (double)c->n_layers * N;
    float aux_dp[E];
    for (int e = 0; e < E; e++) aux_dp[e] = (float)(aux_scale * E * a->f[e] / rows);
    float z_w = (float)(z_scale / rows);

    for (int l = c->n_layers - 1; l >= 0; l--) {
        const model_layer *W = &m->layers[l], *G = &m->glayers[l];
        float *x = a->x + (size_t)l * Na * D, *xn1 = a->xn, *xn2 = a->xn;
        float *qkv = a->qkv + (size_t)l * Na * QKV, *att = a->att + (size_t)l * Na * Hd;
        float *xmid = a->xmid + (size_t)l * Na * D;
        size_t nk = (size_t)l * Na * k;
        /* a->dx holds dL/dx[l+1]: through the MoE block (residual passes it on unchanged) */
        moe_lora ml, *mlp = moe_lora_of(m, a, l, &ml);
        PROF(PROF_NORM, bwd, model_rmsnorm_apply(xn2, xmid, a->rstd2 + (size_t)l * Na, W->ffn_norm, N, D));
        PROF(PROF_EXPERTS, bwd, { /* dL/dh13 overwrites h13 (each row read before it is written) */
            memset(a->dxn, 0, (size_t)N * D * sizeof(float));
            moe_experts_backward(a->dxn, G->w13, G->w2, a->dtopw, a->dx, a->h13 + nk * 2 * F, xn2, W->w13, W->w2,
                                 a->off + (size_t)l * (E + 1), a->row_tok + nk, a->slot_row + nk, a->topw + nk,
                                 a->xs, a->act, a->dys, a->eg, a->erows, N, D, F, E, k, mlp);
        });
        PROF(PROF_ROUTER, bwd,
             moe_router_backward(a->dxn, G->gate, a->drl, a->dtopw, a->rlogits + (size_t)l * Na * E,
                                 a->probs + (size_t)l * Na * E, a->topi + nk, a->topw + nk, aux_dp, z_w, xn2,
                                 W->gate, N, D, E, k));
        PROF(PROF_NORM, bwd,
             model_rmsnorm_backward(a->dx, G->ffn_norm, a->dxn, xmid, W->ffn_norm, a->rstd2 + (size_t)l * Na, N, D));
        /* attention block: xmid = x + att Wo^T */
        float *dWo = G->wo, *dWqkv = G->wqkv;
        PROF(PROF_ATTN, bwd, {
            if (dWo) model_gemm(1, 0, D, Hd, N, 1, a->dx, D, att, Hd, 1, dWo, Hd);
            model_gemm(0, 0, N, Hd, D, 1, a->dx, D, W->wo, Hd, 0, a->datt, Hd);
        });
        const lora_site *so = lora_site_at(m->lora, l, LORA_O);
        if (so)
            PROF(PROF_LORA, bwd, {
                lora_backward_w(m->lora, so, 0, a->dx, D, att, Hd, N, lora_xa(a, l, LORA_O));
                lora_backward_x(m->lora, so, 0, a->datt, Hd, N);
            });
        /* below layer 0's q/k/v only the embedding could want a gradient: a frozen base
         * (LoRA) stops there */
        int need_dx = l > 0 || m->gembed || G->attn_norm;
        if (dWqkv || lora_site_at(m->lora, l, LORA_Q) || lora_site_at(m->lora, l, LORA_K) ||
            lora_site_at(m->lora, l, LORA_V))
            PROF(PROF_NORM, bwd, model_rmsnorm_apply(xn1, x, a->rstd1 + (size_t)l * Na, W->attn_norm, N, D));
        PROF(PROF_ATTN, bwd, {
            attn_backward(a->dqkv, a->datt, att, qkv, a->lse + (size_t)l * Na * H, a->kv_start, b->B, b->T, H, KV,
                          hd, a->attn_scr);
            attn_rope(a->dqkv, a->pos, a->cos_t, a->sin_t, N, H, KV, hd, 1);
            if (dWqkv) model_gemm(1, 0, QKV, D, N, 1, a->dqkv, QKV, xn1, D, 1, dWqkv, D);
            if (need_dx) model_gemm(0, 0, N, D, QKV, 1, a->dqkv, QKV, W->wqkv, D, 0, a->dxn, D);
        });
        for (int t = LORA_Q; t <= LORA_V; t++) {
            const lora_site *s = lora_site_at(m->lora, l, t);
            int col = t == LORA_Q ? 0 : t == LORA_K ? H * hd : (H + KV) * hd;
            if (!s) continue;
            PROF(PROF_LORA, bwd, {
                lora_backward_w(m->lora, s, 0, a->dqkv + col, QKV, xn1, D, N, lora_xa(a, l, t));
                if (need_dx) lora_backward_x(m->lora, s, 0, a->dxn, D, N);
            });
        }
        if (need_dx)
            PROF(PROF_NORM, bwd,
                 model_rmsnorm_backward(a->dx, G->attn_norm, a->dxn, x, W->attn_norm, a->rstd1 + (size_t)l * Na, N,
                                        D));
    }
    float *dE = m->gembed;
    if (dE)
        PROF(PROF_EMBED, bwd, {
            for (int n = 0; n < N; n++) {
                float *g = dE + (size_t)b->tokens[n] * D;
                const float *d = a->dx + (size_t)n * D;
                for (int i = 0; i < D; i++) g[i] += d[i];
            }
        });
    if (m->lora) m->lora->training = 0;
    return 0;
}
