/* model: parameter table over one fp32 buffer, random init, parameter counts. */
#include "model/model.h"
#include "common/err.h"
#include "common/rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void add(model_table *t, size_t *cap, size_t *off, const char *name, int ndim, int64_t d0, int64_t d1)
{
    if (t->n == (int)*cap) {
        *cap = *cap ? *cap * 2 : 64;
        t->t = realloc(t->t, *cap * sizeof *t->t);
    }
    model_tensor *x = &t->t[t->n++];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", name);
    x->ndim = ndim;
    x->shape[0] = d0;
    x->shape[1] = d1;
    x->numel = (size_t)d0 * (ndim > 1 ? (size_t)d1 : 1);
    x->offset = *off;
    *off += x->numel;
}

/* Build the table in buffer order (see model.h). */
static void build_table(model_table *t, const model_config *c)
{
    size_t cap = 0, off = 0;
    char nm[112];
    int D = c->dim, F = c->ffn, hd = c->head_dim;
    memset(t, 0, sizeof *t);
    add(t, &cap, &off, "model.embed_tokens.weight", 2, c->vocab, D);
    for (int l = 0; l < c->n_layers; l++) {
#define NAME(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)
        add(t, &cap, &off, NAME("model.layers.%d.input_layernorm.weight", l), 1, D, 0);
        add(t, &cap, &off, NAME("model.layers.%d.self_attn.q_proj.weight", l), 2, c->n_heads * hd, D);
        add(t, &cap, &off, NAME("model.layers.%d.self_attn.k_proj.weight", l), 2, c->n_kv_heads * hd, D);
        add(t, &cap, &off, NAME("model.layers.%d.self_attn.v_proj.weight", l), 2, c->n_kv_heads * hd, D);
        add(t, &cap, &off, NAME("model.layers.%d.self_attn.o_proj.weight", l), 2, D, c->n_heads * hd);
        add(t, &cap, &off, NAME("model.layers.%d.post_attention_layernorm.weight", l), 1, D, 0);
        add(t, &cap, &off, NAME("model.layers.%d.block_sparse_moe.gate.weight", l), 2, c->n_experts, D);
        for (int e = 0; e < c->n_experts; e++) {
            add(t, &cap, &off, NAME("model.layers.%d.block_sparse_moe.experts.%d.w1.weight", l, e), 2, F, D);
            add(t, &cap, &off, NAME("model.layers.%d.block_sparse_moe.experts.%d.w3.weight", l, e), 2, F, D);
        }
        for (int e = 0; e < c->n_experts; e++)
            add(t, &cap, &off, NAME("model.layers.%d.block_sparse_moe.experts.%d.w2.weight", l, e), 2, D, F);
#undef NAME
    }
    add(t, &cap, &off, "model.norm.weight", 1, D, 0);
    if (!c->tie_embeddings) add(t, &cap, &off, "lm_head.weight", 2, c->vocab, D);
    t->total = off;
}

const model_tensor *model_find(const model *m, const char *name)
{
    for (int i = 0; i < m->tab.n; i++)
        if (!strcmp(m->tab.t[i].name, name)) return &m->tab.t[i];
    return NULL;
}

int model_create(model *m, const model_config *c, int with_grads, char *err)
{
    memset(m, 0, sizeof *m);
    m->c = *c;
    build_table(&m->tab, c);
    size_t bytes = m->tab.total * sizeof(float);
    m->w = calloc(m->tab.total, sizeof(float));
    m->g = with_grads ? calloc(m->tab.total, sizeof(float)) : NULL;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->w || (with_grads && !m->g) || !m->layers) {
        model_free(m);
        return err_set(err, "out of memory allocating %.2f GiB of parameters", bytes / 1073741824.0);
    }
    /* Views follow the table order exactly. */
    int i = 0;
    model_tensor *t = m->tab.t;
    m->embed = m->w + t[i++].offset;
    for (int l = 0; l < c->n_layers; l++) {
        model_layer *L = &m->layers[l];
        L->attn_norm = m->w + t[i++].offset;
        L->wqkv = m->w + t[i].offset;
        i += 3;
        L->wo = m->w + t[i++].offset;
        L->ffn_norm = m->w + t[i++].offset;
        L->gate = m->w + t[i++].offset;
        L->w13 = m->w + t[i].offset;
        i += 2 * c->n_experts;
        L->w2 = m->w + t[i].offset;
        i += c->n_experts;
    }
    m->final_norm = m->w + t[i++].offset;
    m->lm_head = c->tie_embeddings ? m->embed : m->w + t[i++].offset;
    return 0;
}

void model_free(model *m)
{
    free(m->w);
    free(m->g);
    free(m->layers);
    free(m->tab.t);
    memset(m, 0, sizeof *m);
}

void model_init_random(model *m, uint64_t seed)
{
    double std = m->c.init_std > 0 ? m->c.init_std : 0.02;
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < m->tab.n; i++) {
        const model_tensor *t = &m->tab.t[i];
        float *p = m->w + t->offset;
        if (t->ndim == 1) {
            for (size_t j = 0; j < t->numel; j++) p[j] = 1.0f;
            continue;
        }
        rng_state r;
        rng_seed(&r, seed, (uint64_t)i + 1); /* one stream per tensor: independent of threads */
        for (size_t j = 0; j < t->numel; j++) p[j] = (float)(std * rng_normal(&r));
    }
}

void model_param_counts(const model_config *c, size_t *total, size_t *active)
{
    size_t D = c->dim, F = c->ffn, hd = c->head_dim, V = c->vocab;
    size_t attn = D * hd * (c->n_heads * 2 + c->n_kv_heads * 2) + 2 * D + D * c->n_experts;
    size_t expert = 3 * D * F;
    size_t head = V * D * (c->tie_embeddings ? 1 : 2) + D;
    *total = head + c->n_layers * (attn + c->n_experts * expert);
    *active = head + c->n_layers * (attn + c->top_k * expert);
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
