/* lora: adapter buffer and table (PEFT names), init, merge, and the forward/backward hooks
 * that model/forward.c and model/moe.c call around each adapted projection. */
#include "model/lora.h"
#include "common/err.h"
#include "common/par.h"
#include "common/rng.h"
#include "model/family.h"
#include "model/layers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const attn_names[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
/* the MLP targets in LORA_W1, W2, W3 order (gate, down, up) */
static const int proj_of[3] = {PROJ_GATE, PROJ_DOWN, PROJ_UP};

const char *lora_target_name(int t, int family)
{
    if (t >= 0 && t < 4) return attn_names[t];
    if (t >= LORA_W1 && t < LORA_NT) return model_family_get(family)->proj[proj_of[t - LORA_W1]];
    return "?";
}

int lora_target_parse(const char *name)
{
    for (int t = 0; t < LORA_NT; t++)
        for (int f = 0; f < FAM_N; f++)
            if (!strcmp(name, lora_target_name(t, f))) return t;
    return -1;
}

int lora_targets_check(const char *const *names, int n, int family, char *err)
{
    for (int i = 0; i < n; i++) {
        int t = lora_target_parse(names[i]);
        if (t < 0) return err_set(err, "lora.targets: unknown target '%s'", err_q(names[i], -1));
        if (strcmp(names[i], lora_target_name(t, family)) != 0)
            return err_set(err, "lora.targets: '%s' is not a %s module name; this model calls it '%s'",
                           err_q(names[i], -1), model_family_get(family)->model_type, lora_target_name(t, family));
    }
    return 0;
}

/* The user target of a site. */
static int target_of(int site) { return site >= LORA_S1 ? LORA_W1 + (site - LORA_S1) : site; }

/* in/out features of site t in layer l; 0 when layer l has no such module. */
static void dims(const model_config *c, int l, int t, int *in, int *out)
{
    int hd = c->head_dim, F = c->ffn, Fs = model_layer_dense_ffn(c, l);
    *in = *out = 0;
    if (t >= LORA_W1 && t <= LORA_W3 && !model_layer_is_moe(c, l)) return;
    if (t >= LORA_S1 && !Fs) return;
    switch (t) {
    case LORA_Q: *in = c->dim, *out = c->n_heads * hd; break;
    case LORA_K:
    case LORA_V: *in = c->dim, *out = c->n_kv_heads * hd; break;
    case LORA_O: *in = c->n_heads * hd, *out = c->dim; break;
    case LORA_W2: *in = F, *out = c->dim; break;
    case LORA_W1:
    case LORA_W3: *in = c->dim, *out = F; break;
    case LORA_S2: *in = Fs, *out = c->dim; break;
    default: *in = c->dim, *out = Fs; break; /* S1, S3 */
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

/* HF module path of site t of layer l (expert e), e.g. model.layers.3.self_attn.q_proj,
 * model.layers.3.mlp.experts.5.gate_proj, model.layers.3.mlp.shared_expert.up_proj. */
static void module_path(char *buf, size_t n, const model_config *c, int l, int t, int e)
{
    const model_family *F = model_family_get(c->family);
    if (t <= LORA_O) snprintf(buf, n, "model.layers.%d.self_attn.%s", l, attn_names[t]);
    else if (t <= LORA_W3)
        snprintf(buf, n, "model.layers.%d.%s.experts.%d.%s", l, F->moe_prefix, e, F->proj[proj_of[t - LORA_W1]]);
    else
        snprintf(buf, n, "model.layers.%d.%s.%s", l, model_layer_is_moe(c, l) ? "mlp.shared_expert" : "mlp",
                 F->proj[proj_of[t - LORA_S1]]);
}

static void router_name(char *buf, size_t n, const model_config *c, int l, int peft)
{
    snprintf(buf, n, "%smodel.layers.%d.%s.gate.weight", peft ? "base_model.model." : "", l,
             model_family_get(c->family)->moe_prefix);
}

int lora_create(lora **out, const model *m, const lora_config *lc, uint64_t seed, char *err)
{
    const model_config *c = &m->c;
    if (lc->r < 1) return err_set(err, "lora.r must be >= 1");
    if (!lc->targets && !lc->train_router) return err_set(err, "lora: no targets");
    lora *lo = calloc(1, sizeof *lo);
    if (!lo) return err_set(err, "out of memory for LoRA adapters");
    lo->lc = *lc;
    lo->family = c->family;
    lo->scale = (float)(lc->rslora ? lc->alpha / sqrt((double)lc->r) : lc->alpha / lc->r);
    lo->L = c->n_layers;
    lo->sites = calloc((size_t)c->n_layers * LORA_NS, sizeof *lo->sites);
    size_t cap = 0;
    char pre[160], name[200];
    /* table first (offsets), then the buffer */
    for (int l = 0; l < c->n_layers; l++) {
        for (int t = 0; t < LORA_NS; t++) {
            int in, o, ne = t >= LORA_W1 && t <= LORA_W3 ? c->n_experts : 1;
            dims(c, l, t, &in, &o);
            if (!(lc->targets >> target_of(t) & 1) || !in) continue;
            /* all experts' A, then all B: expert e's A sits at A + e*r*in */
            for (int e = 0; e < ne; e++) {
                module_path(pre, sizeof pre, c, l, t, e);
                snprintf(name, sizeof name, "base_model.model.%s.lora_A.weight", pre);
                add_tensor(&lo->tab, &cap, name, lc->r, in);
            }
            for (int e = 0; e < ne; e++) {
                module_path(pre, sizeof pre, c, l, t, e);
                snprintf(name, sizeof name, "base_model.model.%s.lora_B.weight", pre);
                add_tensor(&lo->tab, &cap, name, o, lc->r);
            }
        }
        if (lc->train_router && model_layer_is_moe(c, l)) {
            router_name(name, sizeof name, c, l, 1);
            add_tensor(&lo->tab, &cap, name, c->n_experts, c->dim);
        }
    }
    lo->w = calloc(lo->tab.total + 1, sizeof(float));
    lo->g = calloc(lo->tab.total + 1, sizeof(float));
    if (!lo->w || !lo->g || !lo->sites || (lo->tab.n && !lo->tab.t)) {
        lora_free(lo);
        return err_set(err, "out of memory for LoRA adapters");
    }
    if (!lo->tab.n) {
        lora_free(lo);
        return err_set(err, "lora.targets: none of the targets exists in this model");
    }
    int i = 0;
    for (int l = 0; l < c->n_layers; l++) {
        for (int t = 0; t < LORA_NS; t++) {
            int in, o;
            dims(c, l, t, &in, &o);
            if (!(lc->targets >> target_of(t) & 1) || !in) continue;
            lora_site *s = &lo->sites[l * LORA_NS + t];
            s->in = in, s->out = o;
            s->n = t >= LORA_W1 && t <= LORA_W3 ? c->n_experts : 1;
            s->layer = l;
            s->target = t;
            s->A = lo->w + lo->tab.t[i].offset;
            s->B = lo->w + lo->tab.t[i + s->n].offset;
            s->dA = lo->g + lo->tab.t[i].offset;
            s->dB = lo->g + lo->tab.t[i + s->n].offset;
            i += 2 * s->n;
        }
        if (lc->train_router && model_layer_is_moe(c, l)) {
            const model_tensor *gt = &lo->tab.t[i++];
            memcpy(lo->w + gt->offset, m->layers[l].gate, gt->numel * sizeof(float));
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
    const lora_site *s = &lo->sites[l * LORA_NS + t];
    return s->A ? s : NULL;
}

static float *router_copy(lora *lo, const model_config *c, int l)
{
    char name[128];
    router_name(name, sizeof name, c, l, 1);
    for (int i = 0; i < lo->tab.n; i++)
        if (!strcmp(lo->tab.t[i].name, name)) return lo->w + lo->tab.t[i].offset;
    return NULL;
}

void lora_attach(model *m, lora *lo)
{
    m->lora = lo;
    if (!lo->lc.train_router) return;
    for (int l = 0; l < m->c.n_layers; l++) {
        float *w = router_copy(lo, &m->c, l);
        if (!w) continue;
        m->layers[l].gate = w;
        m->glayers[l].gate = lo->g + (w - lo->w);
    }
}

/* The fp32 base matrix of site t (expert e) of layer l in the stacked layout, with its
 * row offset: q/k/v inside wqkv, w1/w3 inside an expert's w13, gate/up inside sw13. */
static const model_mat *site_base(const model *m, int l, int t, int e, int *row0)
{
    const model_config *c = &m->c;
    const model_layer *W = &m->layers[l];
    int hd = c->head_dim;
    *row0 = 0;
    switch (t) {
    case LORA_Q: return &W->wqkv;
    case LORA_K: *row0 = c->n_heads * hd; return &W->wqkv;
    case LORA_V: *row0 = (c->n_heads + c->n_kv_heads) * hd; return &W->wqkv;
    case LORA_O: return &W->wo;
    case LORA_W1: return &W->w13[e];
    case LORA_W3: *row0 = c->ffn; return &W->w13[e];
    case LORA_W2: return &W->w2[e];
    case LORA_S1: return &W->sw13;
    case LORA_S3: *row0 = model_layer_dense_ffn(c, l); return &W->sw13;
    default: return &W->sw2;
    }
}

int lora_merge(model *m, char *err)
{
    lora *lo = m->lora;
    if (!lo) return 0;
    if (m->base_dtype != MODEL_F32)
        return err_set(err, "merging adapters into a %s base in memory is not supported (export merges tensor by "
                            "tensor)", model_dtype_name(m->base_dtype));
    const model_config *c = &m->c;
    int r = lo->lc.r;
    for (int l = 0; l < c->n_layers; l++) {
        model_layer *W = &m->layers[l];
        for (int t = 0; t < LORA_NS; t++) {
            const lora_site *s = lora_site_at(lo, l, t);
            if (!s) continue;
            for (int e = 0; e < s->n; e++) {
                int row0;
                const model_mat *bm = site_base(m, l, t, e, &row0);
                float *base = (float *)bm->p[0] + (size_t)row0 * bm->cols;
                /* W (out, in) += s * B (out, r) A (r, in) */
                model_gemm(0, 0, s->out, s->in, r, lo->scale, s->B + (size_t)e * s->out * r, r,
                           s->A + (size_t)e * r * s->in, s->in, 1, base, s->in);
            }
        }
        float *copy = lo->lc.train_router ? router_copy(lo, c, l) : NULL;
        if (copy) {
            char name[128];
            router_name(name, sizeof name, c, l, 0);
            const model_tensor *gt = model_find(m, name);
            float *g = m->w + gt->offset;
            memcpy(g, copy, (size_t)c->n_experts * c->dim * sizeof(float));
            W->gate = g;
            m->glayers[l].gate = m->g ? m->g + (g - m->w) : NULL;
        }
    }
    m->lora = NULL;
    return 0;
}

int lora_find(const lora *lo, const model *m, const char *name, lora_ref *ref)
{
    const model_config *c = &m->c;
    char path[160], want[200];
    for (int l = 0; l < c->n_layers; l++)
        for (int t = 0; t < LORA_NS; t++) {
            const lora_site *s = lora_site_at(lo, l, t);
            for (int e = 0; s && e < s->n; e++) {
                module_path(path, sizeof path, c, l, t, e);
                snprintf(want, sizeof want, "%s.weight", path);
                if (strcmp(want, name) != 0) continue;
                *ref = (lora_ref){s, e};
                return 1;
            }
        }
    return 0;
}

void lora_ref_rows(const lora *lo, const lora_ref *ref, int r0, int r1, float *delta)
{
    const lora_site *s = ref->s;
    int r = lo->lc.r, e = ref->e;
    if (r1 > s->out) r1 = s->out;
    if (r1 > r0) /* rows [r0, r1) of s * B (out, r) A (r, in) */
        model_gemm(0, 0, r1 - r0, s->in, r, lo->scale, s->B + ((size_t)e * s->out + r0) * r, r,
                   s->A + (size_t)e * r * s->in, s->in, 0, delta, s->in);
}

int lora_delta_rows(const lora *lo, const model *m, const char *name, int r0, int r1, float *delta)
{
    lora_ref ref;
    if (!lora_find(lo, m, name, &ref)) return 0;
    lora_ref_rows(lo, &ref, r0, r1, delta);
    return 1;
}

void lora_set_dropout_key(lora *lo, uint64_t seed, uint64_t step, int micro)
{
    uint64_t x = seed ^ 0x64726f70ULL;
    lo->drop_key = rng_splitmix64(&x) ^ (step * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)micro * 0xc2b2ae3d27d4eb4fULL);
}

size_t lora_scratch_bytes(const lora_config *lc, size_t rows, size_t cols)
{
    /* the dropped-out input and its gradient term exist only with dropout */
    return ((lc->dropout > 0 ? 2 * rows * cols : 0) + rows * (size_t)lc->r) * sizeof(float);
}

int lora_reserve(lora *lo, size_t rows, size_t cols, char *err)
{
    size_t n = rows * cols;
    if (n <= lo->scr_floats && rows * (size_t)lo->lc.r <= lo->scr_arows) return 0;
    free(lo->scr_x), free(lo->scr_t), free(lo->scr_a);
    lo->scr_x = lo->scr_t = NULL;
    int drop = lo->lc.dropout > 0;
    if (drop) {
        lo->scr_x = malloc(n * sizeof(float));
        lo->scr_t = malloc(n * sizeof(float));
    }
    lo->scr_a = malloc(rows * (size_t)lo->lc.r * sizeof(float));
    lo->scr_floats = n;
    lo->scr_arows = rows * (size_t)lo->lc.r;
    lo->scr_cols = cols;
    if ((drop && (!lo->scr_x || !lo->scr_t)) || !lo->scr_a) return err_set(err, "out of memory for LoRA scratch");
    return 0;
}

size_t lora_param_count(const model_config *c, const lora_config *lc)
{
    size_t n = 0;
    for (int l = 0; l < c->n_layers; l++) {
        for (int t = 0; t < LORA_NS; t++) {
            int in, o, ne = t >= LORA_W1 && t <= LORA_W3 ? c->n_experts : 1;
            dims(c, l, t, &in, &o);
            if ((lc->targets >> target_of(t) & 1) && in) n += (size_t)ne * lc->r * (in + o);
        }
        if (lc->train_router && model_layer_is_moe(c, l)) n += (size_t)c->n_experts * c->dim;
    }
    return n;
}

void lora_scratch_rows(const lora *lo, int row0, lora *view)
{
    *view = *lo;
    if (view->scr_x) view->scr_x += (size_t)row0 * lo->scr_cols;
    if (view->scr_t) view->scr_t += (size_t)row0 * lo->scr_cols;
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

/* The global index of row 0 of a site's rows under data parallelism: attention and dense-MLP
 * rows are the micro-batch's token rows; the experts' rows are this rank's own sorted slice. */
static uint64_t row0(const lora *lo, const lora_site *s)
{
    return s->target < LORA_W1 || s->target >= LORA_S1 ? lo->drop_row0 : 0;
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
    uint64_t key = site_key(lo, s, e), r0 = row0(lo, s);
    float inv = 1.0f / (1.0f - p);
    int in = s->in;
    PAR_FOR(schedule(static), i, 0, rows,
        for (int j = 0; j < in; j++)
            lo->scr_x[(size_t)i * in + j] =
                dropped(key, (r0 + i) * in + j, p) ? 0 : x[(size_t)i * ldx + j] * inv;
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
    uint64_t key = site_key(lo, s, e), r0 = row0(lo, s);
    float inv = 1.0f / (1.0f - p);
    PAR_FOR(schedule(static), i, 0, rows,
        for (int j = 0; j < in; j++)
            if (!dropped(key, (r0 + i) * in + j, p)) dx[(size_t)i * lddx + j] += lo->scr_t[(size_t)i * in + j] * inv;
    );
}

const float *lora_router_copy(const lora *lo, const char *name)
{
    if (!lo->lc.train_router) return NULL;
    char want[200];
    snprintf(want, sizeof want, "base_model.model.%s", name);
    for (int i = 0; i < lo->tab.n; i++)
        if (!strcmp(lo->tab.t[i].name, want)) return lo->w + lo->tab.t[i].offset;
    return NULL;
}
