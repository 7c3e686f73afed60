/* lora: adapter buffer and table (PEFT names), init, merge, and the forward/backward hooks
 * that model/forward.c and model/moe.c call around each adapted projection. */
#include "model/lora.h"
#include "common/err.h"
#include "common/par.h"
#include "common/rng.h"
#include "model/layers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const target_names[LORA_NT] = {"q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3"};

const char *lora_target_name(int t) { return t >= 0 && t < LORA_NT ? target_names[t] : "?"; }

int lora_target_parse(const char *name)
{
    for (int t = 0; t < LORA_NT; t++)
        if (!strcmp(name, target_names[t])) return t;
    return -1;
}

/* in/out features of target t in m. */
static void dims(const model_config *c, int t, int *in, int *out)
{
    int hd = c->head_dim;
    switch (t) {
    case LORA_Q: *in = c->dim, *out = c->n_heads * hd; break;
    case LORA_K:
    case LORA_V: *in = c->dim, *out = c->n_kv_heads * hd; break;
    case LORA_O: *in = c->n_heads * hd, *out = c->dim; break;
    case LORA_W2: *in = c->ffn, *out = c->dim; break;
    default: *in = c->dim, *out = c->ffn; break; /* w1, w3 */
    }
}

static void add_tensor(model_table *tab, size_t *cap, const char *name, int64_t d0, int64_t d1)
{
    if (tab->n == (int)*cap) {
        *cap = *cap ? 2 * *cap : 64;
        tab->t = realloc(tab->t, *cap * sizeof *tab->t);
    }
    model_tensor *x = &tab->t[tab->n++];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%.127s", name);
    x->ndim = 2;
    x->shape[0] = d0;
    x->shape[1] = d1;
    x->numel = (size_t)(d0 * d1);
    x->offset = tab->total;
    tab->total += x->numel;
}

/* Site prefix in PEFT naming, e.g. base_model.model.model.layers.3.self_attn.q_proj */
static void site_prefix(char *buf, size_t n, int l, int t, int e)
{
    if (t <= LORA_O) snprintf(buf, n, "base_model.model.model.layers.%d.self_attn.%s", l, target_names[t]);
    else snprintf(buf, n, "base_model.model.model.layers.%d.block_sparse_moe.experts.%d.%s", l, e, target_names[t]);
}

int lora_create(lora **out, const model *m, const lora_config *lc, uint64_t seed, char *err)
{
    const model_config *c = &m->c;
    if (lc->r < 1) return err_set(err, "lora.r must be >= 1");
    if (!lc->targets && !lc->train_router) return err_set(err, "lora: no targets");
    lora *lo = calloc(1, sizeof *lo);
    lo->lc = *lc;
    lo->scale = (float)(lc->rslora ? lc->alpha / sqrt((double)lc->r) : lc->alpha / lc->r);
    lo->L = c->n_layers;
    lo->sites = calloc((size_t)c->n_layers * LORA_NT, sizeof *lo->sites);
    size_t cap = 0;
    char pre[160], name[200];
    /* table first (offsets), then the buffer */
    for (int l = 0; l < c->n_layers; l++) {
        for (int t = 0; t < LORA_NT; t++) {
            if (!(lc->targets >> t & 1)) continue;
            int in, o, ne = t >= LORA_W1 ? c->n_experts : 1;
            dims(c, t, &in, &o);
            /* all experts' A, then all B: expert e's A sits at A + e*r*in */
            for (int e = 0; e < ne; e++) {
                site_prefix(pre, sizeof pre, l, t, e);
                snprintf(name, sizeof name, "%s.lora_A.weight", pre);
                add_tensor(&lo->tab, &cap, name, lc->r, in);
            }
            for (int e = 0; e < ne; e++) {
                site_prefix(pre, sizeof pre, l, t, e);
                snprintf(name, sizeof name, "%s.lora_B.weight", pre);
                add_tensor(&lo->tab, &cap, name, o, lc->r);
            }
        }
        if (lc->train_router) {
            snprintf(name, sizeof name, "base_model.model.model.layers.%d.block_sparse_moe.gate.weight", l);
            add_tensor(&lo->tab, &cap, name, c->n_experts, c->dim);
        }
    }
    lo->w = calloc(lo->tab.total, sizeof(float));
    lo->g = calloc(lo->tab.total, sizeof(float));
    if (!lo->w || !lo->g || !lo->sites) {
        lora_free(lo);
        return err_set(err, "out of memory for LoRA adapters");
    }
    int i = 0;
    for (int l = 0; l < c->n_layers; l++) {
        for (int t = 0; t < LORA_NT; t++) {
            if (!(lc->targets >> t & 1)) continue;
            lora_site *s = &lo->sites[l * LORA_NT + t];
            dims(c, t, &s->in, &s->out);
            s->n = t >= LORA_W1 ? c->n_experts : 1;
            s->layer = l;
            s->target = t;
            s->A = lo->w + lo->tab.t[i].offset;
            s->B = lo->w + lo->tab.t[i + s->n].offset;
            s->dA = lo->g + lo->tab.t[i].offset;
            s->dB = lo->g + lo->tab.t[i + s->n].offset;
            i += 2 * s->n;
        }
        if (lc->train_router) {
            const model_tensor *gt = &lo->tab.t[i++];
            char gname[96];
            snprintf(gname, sizeof gname, "model.layers.%d.block_sparse_moe.gate.weight", l);
            memcpy(lo->w + gt->offset, m->w + model_find(m, gname)->offset, gt->numel * sizeof(float));
        }
    }
    for (int j = 0; j < lo->tab.n; j++) { /* kaiming-uniform A, zero B */
        const model_tensor *t = &lo->tab.t[j];
        static const char suffix[] = ".lora_A.weight";
        size_t len = strlen(t->name), ns = sizeof suffix - 1;
        if (len < ns || strcmp(t->name + len - ns, suffix) != 0) continue;
        rng_state r;
        rng_seed(&r, seed, 0x4c6f5241ULL + (uint64_t)j);
        double bound = 1.0 / sqrt((double)t->shape[1]);
        float *a = lo->w + t->offset;
        for (size_t k = 0; k < t->numel; k++) a[k] = (float)((2 * rng_uniform(&r) - 1) * bound);
    }
    *out = lo;
    return 0;
}

void lora_free(lora *lo)
{
    if (!lo) return;
    free(lo->w), free(lo->g), free(lo->sites), free(lo->tab.t), free(lo->scr_x), free(lo->scr_t), free(lo->scr_a);
    free(lo);
}

const lora_site *lora_site_at(const lora *lo, int l, int t)
{
    if (!lo) return NULL;
    const lora_site *s = &lo->sites[l * LORA_NT + t];
    return s->A ? s : NULL;
}

static float *router_copy(lora *lo, int l)
{
    char name[96];
    snprintf(name, sizeof name, "base_model.model.model.layers.%d.block_sparse_moe.gate.weight", l);
    for (int i = 0; i < lo->tab.n; i++)
        if (!strcmp(lo->tab.t[i].name, name)) return lo->w + lo->tab.t[i].offset;
    return NULL;
}

void lora_attach(model *m, lora *lo)
{
    m->lora = lo;
    if (!lo->lc.train_router) return;
    for (int l = 0; l < m->c.n_layers; l++) {
        float *w = router_copy(lo, l);
        m->layers[l].gate = w;
        m->glayers[l].gate = lo->g + (w - lo->w);
    }
}

void lora_merge(model *m)
{
    lora *lo = m->lora;
    if (!lo) return;
    const model_config *c = &m->c;
    int hd = c->head_dim, D = c->dim, F = c->ffn, r = lo->lc.r;
    for (int l = 0; l < c->n_layers; l++) {
        model_layer *W = &m->layers[l];
        for (int t = 0; t < LORA_NT; t++) {
            const lora_site *s = lora_site_at(lo, l, t);
            if (!s) continue;
            for (int e = 0; e < s->n; e++) {
                float *base;
                switch (t) {
                case LORA_Q: base = W->wqkv; break;
                case LORA_K: base = W->wqkv + (size_t)c->n_heads * hd * D; break;
                case LORA_V: base = W->wqkv + (size_t)(c->n_heads + c->n_kv_heads) * hd * D; break;
                case LORA_O: base = W->wo; break;
                case LORA_W1: base = W->w13 + (size_t)e * 2 * F * D; break;
                case LORA_W3: base = W->w13 + (size_t)e * 2 * F * D + (size_t)F * D; break;
                default: base = W->w2 + (size_t)e * D * F; break;
                }
                /* W (out, in) += s * B (out, r) A (r, in) */
                model_gemm(0, 0, s->out, s->in, r, lo->scale, s->B + (size_t)e * s->out * r, r,
                           s->A + (size_t)e * r * s->in, s->in, 1, base, s->in);
            }
        }
        if (lo->lc.train_router) {
            char name[96];
            snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.gate.weight", l);
            float *g = m->w + model_find(m, name)->offset;
            memcpy(g, W->gate, (size_t)c->n_experts * D * sizeof(float));
            W->gate = g;
            m->glayers[l].gate = m->g ? m->g + (g - m->w) : NULL;
        }
    }
    m->lora = NULL;
}

void lora_set_dropout_key(lora *lo, uint64_t seed, uint64_t step, int micro)
{
    uint64_t x = seed ^ 0x64726f70ULL;
    lo->drop_key = rng_splitmix64(&x) ^ (step * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)micro * 0xc2b2ae3d27d4eb4fULL);
}

int lora_reserve(lora *lo, size_t rows, size_t cols, char *err)
{
    size_t n = rows * cols;
    if (n <= lo->scr_floats) return 0;
    free(lo->scr_x), free(lo->scr_t), free(lo->scr_a);
    lo->scr_x = malloc(n * sizeof(float));
    lo->scr_t = malloc(n * sizeof(float));
    lo->scr_a = malloc(rows * (size_t)lo->lc.r * sizeof(float));
    lo->scr_floats = n;
    lo->scr_cols = cols;
    if (!lo->scr_x || !lo->scr_t || !lo->scr_a) return err_set(err, "out of memory for LoRA scratch");
    return 0;
}

void lora_scratch_rows(const lora *lo, int row0, lora *view)
{
    *view = *lo;
    view->scr_x += (size_t)row0 * lo->scr_cols;
    view->scr_t += (size_t)row0 * lo->scr_cols;
    view->scr_a += (size_t)row0 * lo->lc.r;
}

/* ------------------------------------------------------------------ dropout */

static inline int dropped(uint64_t key, uint64_t i, float p)
{
    uint64_t z = key + i * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (float)((z >> 40) * 0x1.0p-24) < p;
}

static uint64_t site_key(const lora *lo, const lora_site *s, int e)
{
    return lo->drop_key ^ ((uint64_t)s->layer << 48) ^ ((uint64_t)s->target << 40) ^ ((uint64_t)e << 20);
}

/* The input the adapter sees: x itself, or its dropped-out copy in scr_x (ld = in). */
static const float *lora_input(const lora *lo, const lora_site *s, int e, const float *x, int ldx, int rows, int *ld)
{
    float p = (float)lo->lc.dropout;
    if (!lo->training || p <= 0) {
        *ld = ldx;
        return x;
    }
    uint64_t key = site_key(lo, s, e);
    float inv = 1.0f / (1.0f - p);
    int in = s->in;
    PAR_FOR(schedule(static), i, 0, rows,
        for (int j = 0; j < in; j++)
            lo->scr_x[(size_t)i * in + j] = dropped(key, (uint64_t)i * in + j, p) ? 0 : x[(size_t)i * ldx + j] * inv;
    );
    *ld = in;
    return lo->scr_x;
}

void lora_forward(const lora *lo, const lora_site *s, int e, float *y, int ldy, const float *x, int ldx, int rows,
                  float *xa)
{
    if (rows <= 0) return;
    int r = lo->lc.r, ld;
    const float *xin = lora_input(lo, s, e, x, ldx, rows, &ld);
    model_gemm(0, 1, rows, r, s->in, 1, xin, ld, s->A + (size_t)e * r * s->in, s->in, 0, xa, r);
    model_gemm(0, 1, rows, s->out, r, lo->scale, xa, r, s->B + (size_t)e * s->out * r, r, 1, y, ldy);
}

void lora_output(const lora *lo, const lora_site *s, int e, float *y, int ldy, const float *xa, int rows)
{
    int r = lo->lc.r;
    model_gemm(0, 1, rows, s->out, r, lo->scale, xa, r, s->B + (size_t)e * s->out * r, r, 0, y, ldy);
}

void lora_backward_w(const lora *lo, const lora_site *s, int e, const float *dy, int lddy, const float *x, int ldx,
                     int rows, const float *xa)
{
    if (rows <= 0) return;
    int r = lo->lc.r, ld;
    model_gemm(1, 0, s->out, r, rows, lo->scale, dy, lddy, xa, r, 1, s->dB + (size_t)e * s->out * r, r);
    model_gemm(0, 0, rows, r, s->out, lo->scale, dy, lddy, s->B + (size_t)e * s->out * r, r, 0, lo->scr_a, r);
    const float *xin = lora_input(lo, s, e, x, ldx, rows, &ld);
    model_gemm(1, 0, r, s->in, rows, 1, lo->scr_a, r, xin, ld, 1, s->dA + (size_t)e * r * s->in, s->in);
}

void lora_backward_x(const lora *lo, const lora_site *s, int e, float *dx, int lddx, int rows)
{
    if (rows <= 0) return;
    int r = lo->lc.r, in = s->in;
    const float *A = s->A + (size_t)e * r * in;
    float p = (float)lo->lc.dropout;
    if (!lo->training || p <= 0) {
        model_gemm(0, 0, rows, in, r, 1, lo->scr_a, r, A, in, 1, dx, lddx);
        return;
    }
    model_gemm(0, 0, rows, in, r, 1, lo->scr_a, r, A, in, 0, lo->scr_t, in);
    uint64_t key = site_key(lo, s, e);
    float inv = 1.0f / (1.0f - p);
    PAR_FOR(schedule(static), i, 0, rows,
        for (int j = 0; j < in; j++)
            if (!dropped(key, (uint64_t)i * in + j, p)) dx[(size_t)i * lddx + j] += lo->scr_t[(size_t)i * in + j] * inv;
    );
}
