/* model: the parameter table of a family over the dtype-aware store, views, random init,
 * parameter counts. */
#include "model/model.h"
#include "common/err.h"
#include "common/half.h"
#include "common/rng.h"
#include "model/family.h"
#include "model/layers.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *model_dtype_name(int dtype)
{
    return dtype == MODEL_BF16 ? "bfloat16" : dtype == MODEL_F16 ? "float16" : "float32";
}

int model_mat_rows(const model_mat *w)
{
    int r = 0;
    for (int i = 0; i < w->n; i++) r += w->rows[i];
    return r;
}

/* Roles of a layer's tensors, to find them again after the table is built. */
enum { R_ATTN_NORM, R_Q, R_K, R_V, R_BQ, R_QN, R_KN, R_O, R_BO, R_FFN_NORM, R_GATE, R_E0, R_S1, R_S3, R_S2, R_SGATE,
       R_N };

typedef struct {
    model_table *t;
    size_t cap;
    int low_mode;
} builder;

static int add(builder *b, const char *name, int ndim, int64_t d0, int64_t d1, int low)
{
    model_table *t = b->t;
    if (t->n == (int)b->cap) {
        b->cap = b->cap ? b->cap * 2 : 64;
        model_tensor *nt = realloc(t->t, b->cap * sizeof *t->t);
        if (!nt) return -1;
        t->t = nt;
    }
    model_tensor *x = &t->t[t->n];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%.127s", name);
    x->ndim = ndim;
    x->shape[0] = d0;
    x->shape[1] = d1;
    x->numel = (size_t)d0 * (ndim > 1 ? (size_t)d1 : 1);
    x->low = b->low_mode && low;
    if (!x->low) {
        x->offset = t->total;
        t->total += x->numel;
    }
    return t->n++;
}

/* Build the table in buffer order (see model.h); idx (L * R_N) gets each role's first tensor
 * (R_E0: expert 0's w1; expert e's w1, w3, w2 follow at +2e, +2e+1 and +2E+e). */
static int build_table(model_table *t, const model_config *c, int low_mode, int *idx)
{
    const model_family *fam = model_family_get(c->family);
    builder b = {t, 0, low_mode};
    char nm[128];
    int D = c->dim, F = c->ffn, hd = c->head_dim, H = c->n_heads, KV = c->n_kv_heads, E = c->n_experts;
    memset(t, 0, sizeof *t);
#define NAME(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)
#define ADD(role, ...)                                                                                                \
    do {                                                                                                              \
        int i_ = add(&b, __VA_ARGS__);                                                                                \
        if (i_ < 0) return -1;                                                                                        \
        if ((role) >= 0 && idx) idx[l * R_N + (role)] = i_;                                                           \
    } while (0)
    int l = 0;
    if (add(&b, "model.embed_tokens.weight", 2, c->vocab, D, 1) < 0) return -1;
    for (l = 0; l < c->n_layers; l++) {
        if (idx)
            for (int r = 0; r < R_N; r++) idx[l * R_N + r] = -1;
        const char *mp = fam->moe_prefix;
        ADD(R_ATTN_NORM, NAME("model.layers.%d.input_layernorm.weight", l), 1, D, 0, 0);
        ADD(R_Q, NAME("model.layers.%d.self_attn.q_proj.weight", l), 2, H * hd, D, 1);
        ADD(R_K, NAME("model.layers.%d.self_attn.k_proj.weight", l), 2, KV * hd, D, 1);
        ADD(R_V, NAME("model.layers.%d.self_attn.v_proj.weight", l), 2, KV * hd, D, 1);
        if (c->qkv_bias) {
            ADD(R_BQ, NAME("model.layers.%d.self_attn.q_proj.bias", l), 1, H * hd, 0, 0);
            ADD(-1, NAME("model.layers.%d.self_attn.k_proj.bias", l), 1, KV * hd, 0, 0);
            ADD(-1, NAME("model.layers.%d.self_attn.v_proj.bias", l), 1, KV * hd, 0, 0);
        }
        if (c->qk_norm) {
            int full = c->qk_norm == QK_NORM_FULL;
            ADD(R_QN, NAME("model.layers.%d.self_attn.q_norm.weight", l), 1, full ? H * hd : hd, 0, 0);
            ADD(R_KN, NAME("model.layers.%d.self_attn.k_norm.weight", l), 1, full ? KV * hd : hd, 0, 0);
        }
        ADD(R_O, NAME("model.layers.%d.self_attn.o_proj.weight", l), 2, D, H * hd, 1);
        if (c->o_bias) ADD(R_BO, NAME("model.layers.%d.self_attn.o_proj.bias", l), 1, D, 0, 0);
        ADD(R_FFN_NORM, NAME("model.layers.%d.post_attention_layernorm.weight", l), 1, D, 0, 0);
        if (model_layer_is_moe(c, l)) {
            ADD(R_GATE, NAME("model.layers.%d.%s.gate.weight", l, mp), 2, E, D, 0);
            for (int e = 0; e < E; e++) {
                ADD(e ? -1 : R_E0, NAME("model.layers.%d.%s.experts.%d.%s.weight", l, mp, e, fam->proj[PROJ_GATE]), 2,
                    F, D, 1);
                ADD(-1, NAME("model.layers.%d.%s.experts.%d.%s.weight", l, mp, e, fam->proj[PROJ_UP]), 2, F, D, 1);
            }
            for (int e = 0; e < E; e++)
                ADD(-1, NAME("model.layers.%d.%s.experts.%d.%s.weight", l, mp, e, fam->proj[PROJ_DOWN]), 2, D, F, 1);
        }
        int Fs = model_layer_dense_ffn(c, l);
        if (Fs > 0) {
            const char *sp = model_layer_is_moe(c, l) ? "mlp.shared_expert" : "mlp";
            ADD(R_S1, NAME("model.layers.%d.%s.gate_proj.weight", l, sp), 2, Fs, D, 1);
            ADD(R_S3, NAME("model.layers.%d.%s.up_proj.weight", l, sp), 2, Fs, D, 1);
            ADD(R_S2, NAME("model.layers.%d.%s.down_proj.weight", l, sp), 2, D, Fs, 1);
            if (model_layer_is_moe(c, l)) ADD(R_SGATE, NAME("model.layers.%d.mlp.shared_expert_gate.weight", l), 2, 1, D, 0);
        }
    }
#undef ADD
#undef NAME
    if (add(&b, "model.norm.weight", 1, D, 0, 0) < 0) return -1;
    if (!c->tie_embeddings && add(&b, "lm_head.weight", 2, c->vocab, D, 1) < 0) return -1;
    return 0;
}

const model_tensor *model_find(const model *m, const char *name)
{
    for (int i = 0; i < m->tab.n; i++)
        if (!strcmp(m->tab.t[i].name, name)) return &m->tab.t[i];
    return NULL;
}

static float *fp(model *m, int i) { return i < 0 ? NULL : m->w + m->tab.t[i].offset; }
static float *gp(model *m, int i) { return i < 0 || !m->g ? NULL : m->g + m->tab.t[i].offset; }

/* A matrix view over tensors i0 .. i0+n-1 (stacked rows). In the fp32 store consecutive
 * tensors are contiguous, so the view is one part. */
static model_mat mat(model *m, int i0, int n)
{
    model_mat w = {.dtype = m->tab.t[i0].low ? m->base_dtype : MODEL_F32, .cols = (int)m->tab.t[i0].shape[1]};
    if (w.dtype == MODEL_F32) {
        w.n = 1;
        w.p[0] = m->tab.t[i0].data;
        for (int j = 0; j < n; j++) w.rows[0] += (int)m->tab.t[i0 + j].shape[0];
        return w;
    }
    w.n = n;
    for (int j = 0; j < n; j++) {
        w.p[j] = m->tab.t[i0 + j].data;
        w.rows[j] = (int)m->tab.t[i0 + j].shape[0];
    }
    return w;
}

/* Views of every layer from the tensors' data (called once data is final). */
static void make_views(model *m, const int *idx)
{
    const model_config *c = &m->c;
    int E = c->n_experts;
    for (int i = 0; i < m->tab.n; i++)
        if (!m->tab.t[i].low) m->tab.t[i].data = m->w + m->tab.t[i].offset;
    m->embed = mat(m, 0, 1);
    for (int l = 0; l < c->n_layers; l++) {
        const int *x = idx + l * R_N;
        model_layer *L = &m->layers[l];
        model_grads *G = &m->glayers[l];
        L->attn_norm = fp(m, x[R_ATTN_NORM]);
        L->ffn_norm = fp(m, x[R_FFN_NORM]);
        L->q_norm = fp(m, x[R_QN]);
        L->k_norm = fp(m, x[R_KN]);
        L->bqkv = fp(m, x[R_BQ]);
        L->bo = fp(m, x[R_BO]);
        L->gate = fp(m, x[R_GATE]);
        L->sgate = fp(m, x[R_SGATE]);
        L->wqkv = mat(m, x[R_Q], 3);
        L->wo = mat(m, x[R_O], 1);
        if (x[R_E0] >= 0)
            for (int e = 0; e < E; e++) {
                L->w13[e] = mat(m, x[R_E0] + 2 * e, 2);
                L->w2[e] = mat(m, x[R_E0] + 2 * E + e, 1);
            }
        if (x[R_S1] >= 0) {
            L->sw13 = mat(m, x[R_S1], 2);
            L->sw2 = mat(m, x[R_S2], 1);
        }
        *G = (model_grads){gp(m, x[R_ATTN_NORM]), gp(m, x[R_FFN_NORM]), gp(m, x[R_QN]), gp(m, x[R_KN]),
                           gp(m, x[R_BQ]),        gp(m, x[R_BO]),       gp(m, x[R_GATE]), gp(m, x[R_SGATE]),
                           gp(m, x[R_Q]),         gp(m, x[R_O]),        gp(m, x[R_E0]),   gp(m, x[R_E0] < 0 ? -1 : x[R_E0] + 2 * E),
                           gp(m, x[R_S1]),        gp(m, x[R_S2])};
    }
    int i = m->tab.n - (c->tie_embeddings ? 1 : 2);
    m->final_norm = fp(m, i);
    m->lm_head = c->tie_embeddings ? m->embed : mat(m, i + 1, 1);
    m->gembed = gp(m, 0);
    m->gfinal_norm = gp(m, i);
    m->glm_head = c->tie_embeddings ? m->gembed : gp(m, i + 1);
}

static int create(model *m, const model_config *c, int with_grads, int base_dtype, char *err)
{
    memset(m, 0, sizeof *m);
    m->c = *c;
    m->base_dtype = base_dtype;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    m->glayers = calloc((size_t)c->n_layers, sizeof *m->glayers);
    int *idx = malloc((size_t)c->n_layers * R_N * sizeof *idx + 1);
    if (!m->layers || !m->glayers || !idx || build_table(&m->tab, c, base_dtype != MODEL_F32, idx)) {
        free(idx);
        model_free(m);
        return err_set(err, "out of memory for the model table");
    }
    for (int l = 0; l < c->n_layers; l++)
        if (model_layer_is_moe(c, l)) {
            m->layers[l].w13 = calloc((size_t)c->n_experts, sizeof(model_mat));
            m->layers[l].w2 = calloc((size_t)c->n_experts, sizeof(model_mat));
            if (!m->layers[l].w13 || !m->layers[l].w2) {
                free(idx);
                model_free(m);
                return err_set(err, "out of memory for the model table");
            }
        }
    size_t bytes = m->tab.total * sizeof(float);
    m->w = calloc(m->tab.total ? m->tab.total : 1, sizeof(float));
    m->g = with_grads ? calloc(m->tab.total ? m->tab.total : 1, sizeof(float)) : NULL;
    if (!m->w || (with_grads && !m->g)) {
        free(idx);
        model_free(m);
        return err_set(err, "out of memory allocating %.2f GiB of parameters", bytes / 1073741824.0);
    }
    /* the index survives in the table order: make_views needs it again after binding */
    m->ext_free = NULL;
    make_views(m, idx);
    free(idx);
    return 0;
}

int model_create(model *m, const model_config *c, int with_grads, char *err)
{
    return create(m, c, with_grads, MODEL_F32, err);
}

int model_create_low(model *m, const model_config *c, int base_dtype, char *err)
{
    if (base_dtype != MODEL_BF16 && base_dtype != MODEL_F16) return create(m, c, 0, MODEL_F32, err);
    return create(m, c, 0, base_dtype, err);
}

void model_bind(model *m, int i, const void *data) { m->tab.t[i].data = data; }

/* Rebuild the views once low tensors have data. */
static int refresh_views(model *m)
{
    int *idx = malloc((size_t)m->c.n_layers * R_N * sizeof *idx + 1);
    model_table tmp;
    if (!idx || build_table(&tmp, &m->c, m->base_dtype != MODEL_F32, idx)) {
        free(idx);
        return -1;
    }
    free(tmp.t);
    make_views(m, idx);
    free(idx);
    return 0;
}

int model_alloc_low(model *m, char *err)
{
    size_t need = 0;
    for (int i = 0; i < m->tab.n; i++)
        if (m->tab.t[i].low && !m->tab.t[i].data) need += m->tab.t[i].numel;
    if (need) {
        free(m->low);
        m->low = malloc(need * sizeof(uint16_t));
        if (!m->low)
            return err_set(err, "out of memory allocating %.2f GiB of %s weights", need * 2 / 1073741824.0,
                           model_dtype_name(m->base_dtype));
        size_t off = 0;
        for (int i = 0; i < m->tab.n; i++)
            if (m->tab.t[i].low && !m->tab.t[i].data) {
                m->tab.t[i].data = m->low + off;
                off += m->tab.t[i].numel;
            }
    }
    if (m->base_dtype != MODEL_F32 && !m->tiles.p) {
        m->tiles.threads = omp_get_max_threads();
        m->tiles.floats = model_gemm_tile_floats(m);
        m->tiles.p = malloc(m->tiles.floats * (size_t)m->tiles.threads * sizeof(float));
        if (!m->tiles.p) return err_set(err, "out of memory for the fp32 widening tiles");
    }
    if (refresh_views(m)) return err_set(err, "out of memory for the model views");
    return 0;
}

void model_store_bytes(const model *m, size_t *f32, size_t *low, size_t *tiles)
{
    size_t lo = 0;
    for (int i = 0; i < m->tab.n; i++)
        if (m->tab.t[i].low) lo += m->tab.t[i].numel * 2;
    if (f32) *f32 = m->tab.total * sizeof(float);
    if (low) *low = lo;
    if (tiles) *tiles = m->tiles.p ? m->tiles.floats * (size_t)m->tiles.threads * sizeof(float) : 0;
}

int model_store_plan(const model_config *c, int base_dtype, size_t *f32, size_t *low, size_t *tiles, char *err)
{
    model_table t;
    if (build_table(&t, c, base_dtype != MODEL_F32, NULL)) return err_set(err, "out of memory");
    size_t lo = 0;
    for (int i = 0; i < t.n; i++)
        if (t.t[i].low) lo += t.t[i].numel * 2;
    *f32 = t.total * sizeof(float);
    *low = lo;
    *tiles = 0;
    free(t.t);
    if (base_dtype == MODEL_F32) return 0;
    model m; /* a low store allocates only its small fp32 tensors: cheap even for big models */
    if (model_create_low(&m, c, base_dtype, err)) return -1;
    *tiles = model_gemm_tile_floats(&m) * (size_t)omp_get_max_threads() * sizeof(float);
    model_free(&m);
    return 0;
}

void model_free(model *m)
{
    if (m->layers)
        for (int l = 0; l < m->c.n_layers; l++) free(m->layers[l].w13), free(m->layers[l].w2);
    free(m->w);
    free(m->g);
    free(m->low);
    free(m->tiles.p);
    free(m->layers);
    free(m->glayers);
    free(m->tab.t);
    if (m->ext_free) m->ext_free(m->ext);
    memset(m, 0, sizeof *m);
}

/* fp32 -> bf16 / f16 for the low store (round to nearest even, as torch). */
static uint16_t to_low(float x, int dtype) { return dtype == MODEL_BF16 ? half_f32_to_bf16(x) : half_f32_to_f16(x); }

void model_init_random(model *m, uint64_t seed)
{
    double std = m->c.init_std > 0 ? m->c.init_std : 0.02;
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < m->tab.n; i++) {
        model_tensor *t = &m->tab.t[i];
        size_t len = strlen(t->name);
        int bias = len > 5 && !strcmp(t->name + len - 5, ".bias");
        if (t->low) {
            uint16_t *p = (uint16_t *)t->data; /* owned storage: model_alloc_low came first */
            rng_state r;
            rng_seed(&r, seed, (uint64_t)i + 1);
            for (size_t j = 0; j < t->numel; j++) p[j] = to_low((float)(std * rng_normal(&r)), m->base_dtype);
            continue;
        }
        float *p = m->w + t->offset;
        if (t->ndim == 1) {
            for (size_t j = 0; j < t->numel; j++) p[j] = bias ? 0.0f : 1.0f;
            continue;
        }
        rng_state r;
        rng_seed(&r, seed, (uint64_t)i + 1); /* one stream per tensor: independent of threads */
        for (size_t j = 0; j < t->numel; j++) p[j] = (float)(std * rng_normal(&r));
    }
}

void model_tensor_read(const model *m, const model_tensor *t, float *dst)
{
    if (!t->low) {
        memcpy(dst, m->w + t->offset, t->numel * sizeof(float));
        return;
    }
    if (m->base_dtype == MODEL_BF16) half_widen_bf16(dst, t->data, t->numel);
    else half_widen_f16(dst, t->data, t->numel);
}

void model_param_counts(const model_config *c, size_t *total, size_t *active)
{
    model_table t;
    size_t sum = 0;
    if (build_table(&t, c, 0, NULL)) {
        *total = *active = 0;
        return;
    }
    for (int i = 0; i < t.n; i++) sum += t.t[i].numel;
    free(t.t);
    size_t idle = (size_t)model_moe_layers(c) * (size_t)(c->n_experts - c->top_k) * 3 * c->dim * c->ffn;
    *total = sum;
    *active = sum - idle;
}

double model_flops_per_token(const model_config *c, int T)
{
    size_t total, active;
    model_param_counts(c, &total, &active);
    /* matmul FLOPs: 2 per active weight, minus the embedding lookup (not a product) and the
     * norms; attention: QK^T and PV over an average causal context of (T+1)/2 keys. */
    double matmul = 2.0 * (double)(active - (size_t)c->vocab * c->dim * (c->tie_embeddings ? 0 : 1));
    double ctx = (T + 1) / 2.0;
    if (c->sliding_window > 0 && c->sliding_window < ctx) ctx = c->sliding_window;
    double attn = 2.0 * 2.0 * c->n_layers * ctx * c->n_heads * c->head_dim;
    return matmul + attn;
}
