/* gguf: writes a moet model and its tokenizer as a GGUF v3 file that llama.cpp loads with
 * the architecture its converter gives the family: "llama" for Mixtral, "qwen3moe",
 * "qwen2moe", "olmoe" (model_family.gguf_arch; what each loads is described at archs[]).
 *
 * File layout (ggml/docs/gguf.md): "GGUF", version 3, tensor count, KV count; the KV
 * pairs (key string, type, value); one info per tensor (name, n_dims, dims innermost
 * first, ggml type, offset into the data section); padding to the alignment; the data
 * section, each tensor starting at a multiple of the alignment. All little-endian.
 *
 * The metadata is built in memory (it holds the vocabulary, a few MB at most); tensors
 * are converted row by row into a small buffer and streamed to a temp file that is
 * renamed into place at the end (fs_atomic), so a failure never leaves a partial file. */
#include "checkpoints/gguf.h"

#include "common/err.h"
#include "common/fsutil.h"
#include "common/half.h"
#include "model/family.h"
#include "model/lora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GGUF_ALIGN 32
#define GGUF_CHUNK (1u << 20)   /* bytes converted per write */

/* KV value types (gguf.h enum gguf_type). */
enum { GT_U32 = 4, GT_I32 = 5, GT_F32 = 6, GT_BOOL = 7, GT_STR = 8, GT_ARR = 9 };
/* Tensor types (ggml.h enum ggml_type) and file types (llama.h enum llama_ftype). */
enum { GGML_F32 = 0, GGML_F16 = 1, GGML_BF16 = 30 };
enum { FTYPE_ALL_F32 = 0, FTYPE_MOSTLY_F16 = 1, FTYPE_MOSTLY_BF16 = 32 };
/* Token type of the padding ids past the tokenizer's vocab (llama.cpp LLAMA_TOKEN_TYPE_UNUSED). */
enum { TOKTYPE_UNUSED = 5 };

/* ------------------------------------------------------------------ byte buffer */

typedef struct {
    unsigned char *p;
    size_t n, cap;
    int oom;
} buf;

static void put(buf *b, const void *d, size_t n)
{
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t c = b->cap ? b->cap : 1 << 16;
        while (c < b->n + n) c *= 2;
        unsigned char *q = realloc(b->p, c);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }   /* x86-64 / aarch64: little-endian */
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf *b, const char *s, size_t n)
{
    put_u64(b, n);
    put(b, s, n);
}

/* One KV pair each; keys are counted so the header can state how many there are. */
typedef struct {
    buf b;
    uint64_t n;
} kvs;

static void kv_key(kvs *k, const char *key, uint32_t type)
{
    put_str(&k->b, key, strlen(key));
    put_u32(&k->b, type);
    k->n++;
}
static void kv_u32(kvs *k, const char *key, uint32_t v) { kv_key(k, key, GT_U32); put_u32(&k->b, v); }
static void kv_f32(kvs *k, const char *key, float v) { kv_key(k, key, GT_F32); put(&k->b, &v, 4); }
static void kv_bool(kvs *k, const char *key, int v)
{
    unsigned char c = v != 0;
    kv_key(k, key, GT_BOOL);
    put(&k->b, &c, 1);
}
static void kv_str(kvs *k, const char *key, const char *s)
{
    kv_key(k, key, GT_STR);
    put_str(&k->b, s, strlen(s));
}
static void kv_arr(kvs *k, const char *key, uint32_t type, uint64_t n)
{
    kv_key(k, key, GT_ARR);
    put_u32(&k->b, type);
    put_u64(&k->b, n);
}

/* "{arch}.key" as llama.cpp's LLM_KV names it. */
static void kv_arch_u32(kvs *k, const char *arch, const char *key, uint32_t v)
{
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    kv_u32(k, full, v);
}
static void kv_arch_f32(kvs *k, const char *arch, const char *key, float v)
{
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    kv_f32(k, full, v);
}

/* ------------------------------------------------------------------ llama.cpp architectures */

/* What the architecture llama.cpp gives each family loads and computes (src/models/<arch>.cpp
 * and llama_model_rope_type in src/llama-model.cpp of node-llama-cpp 3.21.1's llama.cpp),
 * as far as a moet model can differ:
 *   llama     (Mixtral)  interleaved ("normal") RoPE: q/k rows permuted; top-k renormalised
 *   qwen3moe  NEOX RoPE (= HF's rotate_half, rows as HF); per-head attn_q_norm/attn_k_norm
 *             [head_dim]; attn_{q,k,v}.bias optional, no attn_output.bias; top-k always
 *             renormalised (build_moe_ffn norm_w = true); every layer MoE; output optional
 *   qwen2moe  NEOX; attn_{q,k,v}.bias; q and attn_output are [n_embd, n_embd]; shared expert
 *             ffn_{gate,up,down}_shexp + ffn_gate_inp_shexp [n_embd] (sigmoid gate), required;
 *             top-k never renormalised; every layer MoE; output required
 *   olmoe     NEOX; attn_q_norm and attn_k_norm both [n_embd] over the whole projection; no
 *             biases, no clamp of q/k/v; top-k never renormalised; every layer MoE; output
 *             required
 * What a family's model may hold beyond that is refused by gguf_check_model. */
typedef struct {
    int permute_qk;     /* llama: HF's half-split rows back to interleaved pairs */
    int renorm_topk;    /* 1: llama.cpp renormalises the top-k weights, 0: it never does */
    int qkv_bias;       /* attn_{q,k,v}.bias are loaded */
    int output_always;  /* output.weight is required even when the embedding is tied */
} arch_desc;

static const arch_desc archs[FAM_N] = {
    [FAM_MIXTRAL] = {1, 1, 0, 0},
    [FAM_QWEN3_MOE] = {0, 1, 1, 0},
    [FAM_QWEN2_MOE] = {0, 0, 1, 1},
    [FAM_OLMOE] = {0, 0, 0, 1},
};

int gguf_check_model(const model_config *c, char *err)
{
    const model_family *F = model_family_get(c->family);
    const arch_desc *A = &archs[c->family];
    const char *a = F->gguf_arch;
#define REFUSE(...) return err_set(err, "GGUF export: " __VA_ARGS__)
    if (c->head_dim % 2) REFUSE("head_dim %d is odd; RoPE needs it even", c->head_dim);
    if (model_moe_layers(c) < c->n_layers)
        REFUSE("llama.cpp's %s architecture (node-llama-cpp 3.21.1) has an MoE block in every layer; this %s "
               "model has %d dense MLP layer%s (mlp_only_layers / decoder_sparse_step)",
               a, F->model_type, c->n_layers - model_moe_layers(c), c->n_layers - model_moe_layers(c) > 1 ? "s" : "");
    if (c->topk_raw == A->renorm_topk)
        REFUSE("norm_topk_prob %s is not what llama.cpp's %s architecture computes (node-llama-cpp 3.21.1: "
               "it %s renormalises the top-k weights)",
               c->topk_raw ? "false" : "true", a, A->renorm_topk ? "always" : "never");
    if (c->qkv_bias && !A->qkv_bias)
        REFUSE("attention_bias true: llama.cpp's %s architecture (node-llama-cpp 3.21.1) has no q/k/v/o biases", a);
    if (c->o_bias)
        REFUSE("attention_bias true: llama.cpp's %s architecture (node-llama-cpp 3.21.1) loads no attn_output.bias", a);
    if (c->clip_qkv > 0)
        REFUSE("clip_qkv %g: llama.cpp's %s architecture (node-llama-cpp 3.21.1) does not clamp q/k/v", c->clip_qkv, a);
    if (c->family == FAM_QWEN2_MOE && c->shared_ffn < 1)
        REFUSE("llama.cpp's qwen2moe architecture requires a shared expert; shared_expert_intermediate_size is 0");
    if (c->family == FAM_QWEN2_MOE && c->n_heads * c->head_dim != c->dim)
        REFUSE("llama.cpp's qwen2moe architecture needs head_dim * num_attention_heads == hidden_size "
               "(it loads attn_q and attn_output as [n_embd, n_embd]), got %d * %d != %d",
               c->head_dim, c->n_heads, c->dim);
    if (c->family == FAM_OLMOE && c->n_kv_heads != c->n_heads)
        REFUSE("llama.cpp's olmoe architecture needs num_key_value_heads == num_attention_heads (it loads "
               "attn_k_norm with n_embd weights), got %d != %d", c->n_kv_heads, c->n_heads);
#undef REFUSE
    return 0;
}

/* ------------------------------------------------------------------ tensor plan */

/* One GGUF tensor: rows of ne[0] values gathered from n_parts moet tensors of rows_per_part
 * rows each (experts stacked: part e = expert e), optionally with rows re-ordered per head. */
typedef struct {
    char name[64];
    int ndim;
    uint64_t ne[3];        /* innermost first */
    int type;              /* GGML_* */
    int n_parts;
    const void **parts;    /* [n_parts], each [rows_per_part, ne[0]] row-major, of src_dtype */
    int src_dtype;         /* MODEL_F32, or the low-precision base store's MODEL_BF16 / MODEL_F16 */
    uint64_t rows_per_part;
    int perm_heads;        /* > 0: undo HF's rotate_half permute with this many heads */
    const lora *lo;        /* adapters not merged into a 16-bit base: added row block by row block */
    lora_ref *refs;        /* [n_parts]; refs[e].s NULL: no adapter on part e */
    uint64_t offset;       /* in the data section */
    size_t nbytes;
} gtensor;

typedef struct {
    gtensor *t;
    int n, cap;
} plan;

static size_t type_size(int type) { return type == GGML_F32 ? 4 : 2; }

/* HF row of output row r in a head-permuted [heads*hd, cols] matrix. HF stores each head's
 * rows as two halves (x[i], x[i + hd/2]) rotated together; llama.cpp's "normal" RoPE rotates
 * adjacent pairs (x[2i], x[2i+1]). convert_hf_to_gguf.py's LlamaModel.permute:
 * w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2), i.e. out row h*hd + 2i + j = HF row
 * h*hd + j*hd/2 + i. */
static uint64_t src_row(const gtensor *g, uint64_t r)
{
    if (g->perm_heads <= 0) return r;
    uint64_t hd = g->rows_per_part / (uint64_t)g->perm_heads;
    uint64_t h = r / hd, i = r % hd;
    return h * hd + (i % 2) * (hd / 2) + i / 2;
}

/* Add GGUF tensor gname built from moet tensors: the one named pre (suf NULL), or the
 * n_parts named pre + e + suf stacked along a new outer dim (experts, e = 0..n_parts-1). */
static int plan_add(plan *p, const model *m, const char *gname, int type, const char *pre,
                    int n_parts, const char *suf, int perm_heads, char *err)
{
    if (!suf) n_parts = 1;
    if (p->n == p->cap) {
        int c = p->cap ? 2 * p->cap : 64;
        gtensor *t = realloc(p->t, (size_t)c * sizeof *t);
        if (!t) return err_set(err, "out of memory");
        p->t = t;
        p->cap = c;
    }
    gtensor *g = &p->t[p->n];
    memset(g, 0, sizeof *g);
    g->parts = malloc((size_t)n_parts * sizeof *g->parts);
    g->refs = calloc((size_t)n_parts, sizeof *g->refs);
    if (!g->parts || !g->refs) {
        free(g->parts), free(g->refs);
        return err_set(err, "out of memory");
    }
    p->n++;
    snprintf(g->name, sizeof g->name, "%s", gname);
    g->type = type;
    g->n_parts = n_parts;
    g->perm_heads = perm_heads;
    const model_tensor *first = NULL;
    for (int e = 0; e < n_parts; e++) {
        char name[256];
        if (suf) snprintf(name, sizeof name, "%s%d%s", pre, e, suf);
        else snprintf(name, sizeof name, "%s", pre);
        const model_tensor *mt = model_find(m, name);
        if (!mt) return err_set(err, "model has no tensor %s (needed for GGUF %s)", name, gname);
        if (!first) first = mt;
        else if (mt->ndim != first->ndim || mt->shape[0] != first->shape[0] || mt->shape[1] != first->shape[1] ||
                 mt->low != first->low)
            return err_set(err, "GGUF %s: the stacked tensors differ in shape", gname);
        g->parts[e] = mt->low ? mt->data : (const void *)(m->w + mt->offset);
        if (!g->parts[e]) return err_set(err, "GGUF %s: %s has no data", gname, name);
        /* a LoRA checkpoint on a 16-bit base is not merged in memory (an fp32 base is, before
         * this): its adapters are added here, and a trained router's copy replaces the router */
        if (m->lora && m->base_dtype != MODEL_F32) {
            const float *rc = lora_router_copy(m->lora, name);
            if (rc && n_parts == 1) g->parts[e] = rc, first = NULL;
            else if (lora_find(m->lora, m, name, &g->refs[e])) g->lo = m->lora;
        }
    }
    g->src_dtype = first && first->low ? m->base_dtype : MODEL_F32;
    if (!first) first = model_find(m, pre);
    if (first->ndim == 1) {
        g->ndim = 1;
        g->ne[0] = (uint64_t)first->shape[0];
        g->rows_per_part = 1;
    } else {
        g->ndim = suf ? 3 : 2;
        g->ne[0] = (uint64_t)first->shape[1];
        g->ne[1] = (uint64_t)first->shape[0];
        g->ne[2] = (uint64_t)n_parts;
        g->rows_per_part = (uint64_t)first->shape[0];
    }
    if (perm_heads > 0 && g->rows_per_part % (2 * (uint64_t)perm_heads))
        return err_set(err, "GGUF %s: %llu rows do not split into %d heads of even size", gname,
                       (unsigned long long)g->rows_per_part, perm_heads);
    g->nbytes = (size_t)(g->ne[0] * g->rows_per_part * (uint64_t)n_parts) * type_size(type);
    return 0;
}

static void plan_free(plan *p)
{
    for (int i = 0; i < p->n; i++) free(p->t[i].parts), free(p->t[i].refs);
    free(p->t);
}

/* Every tensor the family's llama.cpp architecture loads, in the order convert_hf_to_gguf.py
 * writes them. Norms, biases and routers stay F32 as it keeps them. */
static int plan_model(plan *p, const model *m, int wt, char *err)
{
    const model_config *c = &m->c;
    const model_family *F = model_family_get(c->family);
    const arch_desc *A = &archs[c->family];
    char g[64], hf[160], hf2[32];
#define ADD(gfmt, type, pre, ...)                                                                                  \
    (snprintf(g, sizeof g, "blk.%d.%s", l, gfmt), snprintf(hf, sizeof hf, "model.layers.%d.%s", l, pre),          \
     plan_add(p, m, g, type, hf, __VA_ARGS__, err))
    if (plan_add(p, m, "token_embd.weight", wt, "model.embed_tokens.weight", 1, NULL, 0, err)) return -1;
    for (int l = 0; l < c->n_layers; l++) {
        int hq = A->permute_qk ? c->n_heads : 0, hk = A->permute_qk ? c->n_kv_heads : 0;
        if (ADD("attn_norm.weight", GGML_F32, "input_layernorm.weight", 1, NULL, 0) ||
            ADD("attn_q.weight", wt, "self_attn.q_proj.weight", 1, NULL, hq) ||
            ADD("attn_k.weight", wt, "self_attn.k_proj.weight", 1, NULL, hk) ||
            ADD("attn_v.weight", wt, "self_attn.v_proj.weight", 1, NULL, 0))
            return -1;
        if (c->qkv_bias && (ADD("attn_q.bias", GGML_F32, "self_attn.q_proj.bias", 1, NULL, 0) ||
                            ADD("attn_k.bias", GGML_F32, "self_attn.k_proj.bias", 1, NULL, 0) ||
                            ADD("attn_v.bias", GGML_F32, "self_attn.v_proj.bias", 1, NULL, 0)))
            return -1;
        if (c->qk_norm && (ADD("attn_q_norm.weight", GGML_F32, "self_attn.q_norm.weight", 1, NULL, 0) ||
                           ADD("attn_k_norm.weight", GGML_F32, "self_attn.k_norm.weight", 1, NULL, 0)))
            return -1;
        if (ADD("attn_output.weight", wt, "self_attn.o_proj.weight", 1, NULL, 0) ||
            ADD("ffn_norm.weight", GGML_F32, "post_attention_layernorm.weight", 1, NULL, 0))
            return -1;
        char gate[64], exps[64];
        snprintf(gate, sizeof gate, "%s.gate.weight", F->moe_prefix);
        snprintf(exps, sizeof exps, "%s.experts.", F->moe_prefix);
        if (ADD("ffn_gate_inp.weight", GGML_F32, gate, 1, NULL, 0)) return -1;
        static const struct { const char *g; int proj; } ex[] = {
            {"ffn_gate_exps.weight", PROJ_GATE}, {"ffn_down_exps.weight", PROJ_DOWN}, {"ffn_up_exps.weight", PROJ_UP}};
        for (size_t i = 0; i < sizeof ex / sizeof *ex; i++) {
            snprintf(hf2, sizeof hf2, ".%s.weight", F->proj[ex[i].proj]);
            if (ADD(ex[i].g, wt, exps, c->n_experts, hf2, 0)) return -1;
        }
        if (model_layer_dense_ffn(c, l) > 0) { /* the shared expert (dense layers are refused) */
            if (ADD("ffn_gate_inp_shexp.weight", GGML_F32, "mlp.shared_expert_gate.weight", 1, NULL, 0)) return -1;
            p->t[p->n - 1].ndim = 1; /* [1, D] in HF, a vector [n_embd] in llama.cpp */
            if (ADD("ffn_gate_shexp.weight", wt, "mlp.shared_expert.gate_proj.weight", 1, NULL, 0) ||
                ADD("ffn_down_shexp.weight", wt, "mlp.shared_expert.down_proj.weight", 1, NULL, 0) ||
                ADD("ffn_up_shexp.weight", wt, "mlp.shared_expert.up_proj.weight", 1, NULL, 0))
                return -1;
        }
    }
#undef ADD
    if (plan_add(p, m, "output_norm.weight", GGML_F32, "model.norm.weight", 1, NULL, 0, err)) return -1;
    /* Tied: llama's and qwen3moe's loaders use token_embd when output is absent; qwen2moe's and
     * olmoe's require output, so the embedding is written twice. */
    if (!c->tie_embeddings) return plan_add(p, m, "output.weight", wt, "lm_head.weight", 1, NULL, 0, err);
    if (A->output_always) return plan_add(p, m, "output.weight", wt, "model.embed_tokens.weight", 1, NULL, 0, err);
    return 0;
}

/* ------------------------------------------------------------------ tokenizer */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Token texts for ids 0..n-1: the tokenizer's pieces, "[PADi]" for ids it lacks (holes, or
 * the model's vocab padded past the tokenizer's). llama.cpp aborts on two equal texts, so
 * those are an error here. texts[i] points into t or into pad (malloc'd, caller frees). */
static int vocab_texts(const tok *t, int n, const char **texts, char **pad, char *err)
{
    int nt = tok_vocab_size(t), holes = 0;
    for (int i = 0; i < n; i++) holes += i >= nt || !tok_piece(t, i);
    char *q = *pad = malloc((size_t)holes * 24 + 1);
    const char **sorted = malloc((size_t)n * sizeof *sorted);
    if (!q || !sorted) {
        free(sorted);
        return err_set(err, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        const char *s = i < nt ? tok_piece(t, i) : NULL;
        if (!s) {
            s = q;
            q += sprintf(q, "[PAD%d]", i) + 1;
        }
        texts[i] = sorted[i] = s;
    }
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_str);
    for (int i = 1; i < n; i++)
        if (!strcmp(sorted[i - 1], sorted[i])) {
            err_set(err, "tokenizer has the token text '%s' twice; llama.cpp needs unique texts", sorted[i]);
            free(sorted);
            return -1;
        }
    free(sorted);
    return 0;
}

/* llama.cpp's name (tokenizer.ggml.pre) for a byte-level tokenizer's pre-tokenizer, found
 * by its regex: each name's pattern as llama.cpp's vocab code quotes it from the
 * tokenizer.json of that family.  NULL when none matches. */
static const char *bpe_pre_name(const tok *t)
{
    static const struct { const char *name, *regex; } known[] = {
        {"qwen2", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                  "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
        {"qwen35", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+"
                   "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
        {"llama-bpe", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                      "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
        {"gpt-4o", "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
                   "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"
                   "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
                   "[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
        {"gpt-2", "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"},
    };
    const char *re = tok_pre_regex(t, 0);
    if (!re || tok_pre_regex(t, 1)) return NULL;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (!strcmp(re, known[i].regex)) return known[i].name;
    return NULL;
}

/* tokenizer.ggml.merges for a byte-level tokenizer: "left right" in rank order (a pair
 * listed twice counts at its later rank, as in Hugging Face). */
static void merges_kv(kvs *k, const tok *t)
{
    int32_t a, b;
    uint64_t n = 0;
    for (int r = 0; r < tok_merge_count(t); r++) n += (uint64_t)tok_merge_pair(t, r, &a, &b);
    kv_arr(k, "tokenizer.ggml.merges", GT_STR, n);
    for (int r = 0; r < tok_merge_count(t); r++) {
        if (!tok_merge_pair(t, r, &a, &b)) continue;
        const char *sa = tok_piece(t, a), *sb = tok_piece(t, b);
        size_t la = strlen(sa), lb = strlen(sb);
        put_u64(&k->b, la + 1 + lb);
        put(&k->b, sa, la);
        put(&k->b, " ", 1);
        put(&k->b, sb, lb);
    }
}

/* tokenizer.ggml.* for llama.cpp: its SentencePiece tokenizer ("llama": scores order the
 * merges, DESIGN.md: -(id - 259), -1e9 for pieces made only of "\u2581"; tok_piece_score)
 * or, for a byte-level tokenizer, its GPT-2 one ("gpt2": the merges themselves, and the
 * pre-tokenizer by llama.cpp's name for it).  Whether a space is prepended and BOS / EOS
 * added is read off the tokenizer's behaviour. */
static int vocab_kvs(kvs *k, const tok *t, int n, char *err)
{
    int bytelevel = tok_is_bytelevel(t);
    const char *pre = bytelevel ? bpe_pre_name(t) : "default";
    if (!pre)
        return err_set(err, "tokenizer: llama.cpp knows no pre-tokenizer matching its regex '%s' (moet "
                            "names qwen2, qwen35, llama-bpe, gpt-4o and gpt-2 ones)",
                       err_q(tok_pre_regex(t, 0) ? tok_pre_regex(t, 0) : "(none)", -1));
    const char **texts = malloc((size_t)n * sizeof *texts);
    char *pad = NULL;
    if (!texts) return err_set(err, "out of memory");
    if (vocab_texts(t, n, texts, &pad, err)) {
        free(texts);
        free(pad);
        return -1;
    }
    int nt = tok_vocab_size(t);
    kv_str(k, "tokenizer.ggml.model", bytelevel ? "gpt2" : "llama");
    kv_str(k, "tokenizer.ggml.pre", pre);
    kv_arr(k, "tokenizer.ggml.tokens", GT_STR, (uint64_t)n);
    for (int i = 0; i < n; i++) put_str(&k->b, texts[i], strlen(texts[i]));
    if (!bytelevel) {
        kv_arr(k, "tokenizer.ggml.scores", GT_F32, (uint64_t)n);
        for (int i = 0; i < n; i++) {
            float s = i < nt && tok_piece(t, i) ? tok_piece_score(t, i) : -1000.0f;
            put(&k->b, &s, 4);
        }
    }
    kv_arr(k, "tokenizer.ggml.token_type", GT_I32, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        int32_t ty = i < nt && tok_piece(t, i) ? tok_piece_type(t, i) : TOKTYPE_UNUSED;
        put(&k->b, &ty, 4);
    }
    if (bytelevel) merges_kv(k, t);
    free(texts);
    free(pad);

    tok_ids with = {0}, without = {0};
    if (tok_encode(t, "a", 1, 1, &with, err) || tok_encode(t, "a", 1, 0, &without, err)) {
        tok_ids_free(&with);
        tok_ids_free(&without);
        return err_wrap(err, "tokenizer");
    }
    const char *first = without.n ? tok_piece(t, without.ids[0]) : NULL;
    int space_prefix = !bytelevel && first && !strncmp(first, "\xe2\x96\x81", 3);
    int add_bos = with.n > without.n && with.ids[0] == tok_bos_id(t);
    int add_eos = with.n > without.n && with.ids[with.n - 1] == tok_eos_id(t);
    tok_ids_free(&with);
    tok_ids_free(&without);

    /* A byte-level tokenizer without BOS (Qwen) gets its end-of-text token as the BOS id,
     * as Qwen's own GGUFs have it: llama.cpp would otherwise take id 11; none is added. */
    int bos = tok_bos_id(t) >= 0 ? tok_bos_id(t) : bytelevel ? tok_eos_id(t) : -1;
    if (bos >= 0) kv_u32(k, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
    if (tok_eos_id(t) >= 0) kv_u32(k, "tokenizer.ggml.eos_token_id", (uint32_t)tok_eos_id(t));
    if (tok_unk_id(t) >= 0) kv_u32(k, "tokenizer.ggml.unknown_token_id", (uint32_t)tok_unk_id(t));
    if (tok_pad_id(t) >= 0) kv_u32(k, "tokenizer.ggml.padding_token_id", (uint32_t)tok_pad_id(t));
    kv_bool(k, "tokenizer.ggml.add_bos_token", add_bos);
    kv_bool(k, "tokenizer.ggml.add_eos_token", add_eos);
    kv_bool(k, "tokenizer.ggml.add_space_prefix", space_prefix);
    return 0;
}

/* ------------------------------------------------------------------ writing */

/* Rows of the adapter delta computed at once (a head's rows when q/k are permuted: the
 * permutation stays inside a head). */
#define DELTA_ROWS 64

/* Stream g's rows, converted to its type, through out (GGUF_CHUNK bytes); row (ne[0] floats)
 * holds a row of a low-precision source widened to fp32 (plus its adapter delta), delta
 * (DELTA_ROWS or a head's rows of ne[0] floats, when g->lo) the delta of the current block. */
static int write_tensor(fs_atomic *w, const gtensor *g, unsigned char *out, float *row, float *delta, char *err)
{
    size_t esz = type_size(g->type), row_bytes = (size_t)g->ne[0] * esz, fill = 0;
    uint64_t rows = g->rows_per_part;
    uint64_t blk = g->perm_heads > 0 ? rows / (uint64_t)g->perm_heads : DELTA_ROWS;
    for (int e = 0; e < g->n_parts; e++)
        for (uint64_t r = 0; r < rows; r++) {
            const float *x;
            uint64_t sr = src_row(g, r), at = sr * g->ne[0];
            if (g->src_dtype == MODEL_F32) x = (const float *)g->parts[e] + at;
            else {
                const uint16_t *lo = (const uint16_t *)g->parts[e] + at;
                if (g->src_dtype == MODEL_BF16) half_widen_bf16(row, lo, (size_t)g->ne[0]);
                else half_widen_f16(row, lo, (size_t)g->ne[0]);
                x = row;
            }
            if (g->lo && g->refs[e].s) {   /* W + s B A, rows of the block that holds sr */
                uint64_t b0 = r - r % blk;
                if (r % blk == 0)
                    lora_ref_rows(g->lo, &g->refs[e], (int)b0, (int)(b0 + blk < rows ? b0 + blk : rows), delta);
                if (x != row) memcpy(row, x, (size_t)g->ne[0] * sizeof *row);
                const float *d = delta + (sr - b0) * g->ne[0];
                for (uint64_t i = 0; i < g->ne[0]; i++) row[i] += d[i];
                x = row;
            }
            for (size_t done = 0; done < row_bytes;) {   /* a row may exceed the chunk */
                size_t n = row_bytes - done;
                if (n > GGUF_CHUNK - fill) n = GGUF_CHUNK - fill;
                size_t i0 = done / esz, cnt = n / esz;
                unsigned char *o = out + fill;
                if (g->type == GGML_F32) memcpy(o, x + i0, n);
                else {
                    uint16_t *h = (uint16_t *)o;
                    if (g->type == GGML_F16)
                        for (size_t i = 0; i < cnt; i++) h[i] = st_f32_to_f16(x[i0 + i]);
                    else
                        for (size_t i = 0; i < cnt; i++) h[i] = st_f32_to_bf16(x[i0 + i]);
                }
                fill += n;
                done += n;
                if (fill == GGUF_CHUNK) {
                    if (fs_atomic_write(w, out, fill, err)) return -1;
                    fill = 0;
                }
            }
        }
    return fill ? fs_atomic_write(w, out, fill, err) : 0;
}

static int write_pad(fs_atomic *w, uint64_t at, char *err)
{
    static const unsigned char zero[GGUF_ALIGN];
    size_t n = (size_t)((GGUF_ALIGN - at % GGUF_ALIGN) % GGUF_ALIGN);
    return n ? fs_atomic_write(w, zero, n, err) : 0;
}

/* "/a/b/model/" -> "model": a path given as the name keeps only its last part. */
static void base_name(const char *s, char *out, size_t cap)
{
    size_t n = strlen(s);
    while (n > 1 && s[n - 1] == '/') n--;
    size_t a = n;
    while (a > 0 && s[a - 1] != '/') a--;
    snprintf(out, cap, "%.*s", (int)(n - a), s + a);
}

int gguf_write_model(const char *path, const model *m, const tok *t, st_dtype dtype, const char *name, char *err)
{
    return gguf_write_model_ex(path, m, t, dtype, name, NULL, err);
}

int gguf_write_model_ex(const char *path, const model *m, const tok *t, st_dtype dtype, const char *name,
                        const char *chat_template, char *err)
{
    const model_config *c = &m->c;
    int wt = dtype == ST_F32 ? GGML_F32 : dtype == ST_F16 ? GGML_F16 : dtype == ST_BF16 ? GGML_BF16 : -1;
    if (wt < 0)
        return err_set(err, "%s: GGUF export supports F32, F16 and BF16, not %s", path, st_dtype_name(dtype));
    if (!t) return err_set(err, "%s: GGUF export needs the tokenizer (GGUF embeds it)", path);
    if (tok_vocab_size(t) > c->vocab)
        return err_set(err, "%s: tokenizer has %d tokens, more than the model's vocab_size %d", path,
                       tok_vocab_size(t), c->vocab);
    if (gguf_check_model(c, err)) return err_wrap(err, "%s", path);

    plan p = {0};
    kvs k = {0};
    buf h = {0};
    unsigned char *chunk = NULL;
    float *row = NULL, *delta = NULL;
    fs_atomic w = {.fd = -1};
    if (plan_model(&p, m, wt, err)) goto fail;

    char nm[256];
    base_name(name && *name ? name : "moet", nm, sizeof nm);
    const model_family *F = model_family_get(c->family);
    const char *a = F->gguf_arch;
    int qwen = c->family == FAM_QWEN3_MOE || c->family == FAM_QWEN2_MOE;
    kv_str(&k, "general.architecture", a);
    kv_str(&k, "general.type", "model");
    kv_str(&k, "general.name", nm);
    kv_u32(&k, "general.alignment", GGUF_ALIGN);
    kv_arch_u32(&k, a, "block_count", (uint32_t)c->n_layers);
    kv_arch_u32(&k, a, "context_length", (uint32_t)c->max_pos);
    kv_arch_u32(&k, a, "embedding_length", (uint32_t)c->dim);
    /* Qwen: intermediate_size (the dense MLP's), as convert_hf_to_gguf.py writes it; the
     * experts' size is expert_feed_forward_length */
    kv_arch_u32(&k, a, "feed_forward_length", (uint32_t)(qwen ? c->dense_ffn : c->ffn));
    kv_arch_u32(&k, a, "attention.head_count", (uint32_t)c->n_heads);
    kv_arch_u32(&k, a, "attention.head_count_kv", (uint32_t)c->n_kv_heads);
    kv_arch_f32(&k, a, "rope.freq_base", (float)c->rope_theta);
    kv_arch_f32(&k, a, "attention.layer_norm_rms_epsilon", (float)c->norm_eps);
    kv_arch_u32(&k, a, "expert_count", (uint32_t)c->n_experts);
    kv_arch_u32(&k, a, "expert_used_count", (uint32_t)c->top_k);
    if (qwen) kv_arch_u32(&k, a, "expert_feed_forward_length", (uint32_t)c->ffn);
    if (c->family == FAM_QWEN2_MOE) kv_arch_u32(&k, a, "expert_shared_feed_forward_length", (uint32_t)c->shared_ffn);
    /* Written always: llama.cpp otherwise assumes embedding_length / head_count. */
    kv_arch_u32(&k, a, "attention.key_length", (uint32_t)c->head_dim);
    kv_arch_u32(&k, a, "attention.value_length", (uint32_t)c->head_dim);
    kv_u32(&k, "general.file_type", wt == GGML_F32 ? FTYPE_ALL_F32 : wt == GGML_F16 ? FTYPE_MOSTLY_F16 : FTYPE_MOSTLY_BF16);
    kv_arch_u32(&k, a, "vocab_size", (uint32_t)c->vocab);
    kv_arch_u32(&k, a, "rope.dimension_count", (uint32_t)c->head_dim);
    if (vocab_kvs(&k, t, c->vocab, err)) goto fail;
    if (chat_template) kv_str(&k, "tokenizer.chat_template", chat_template);

    put(&h, "GGUF", 4);
    put_u32(&h, 3);
    put_u64(&h, (uint64_t)p.n);
    put_u64(&h, k.n);
    put(&h, k.b.p, k.b.n);
    uint64_t off = 0;
    for (int i = 0; i < p.n; i++) {
        gtensor *g = &p.t[i];
        g->offset = off;
        off += g->nbytes;
        off += (GGUF_ALIGN - off % GGUF_ALIGN) % GGUF_ALIGN;
        put_str(&h, g->name, strlen(g->name));
        put_u32(&h, (uint32_t)g->ndim);
        for (int d = 0; d < g->ndim; d++) put_u64(&h, g->ne[d]);
        put_u32(&h, (uint32_t)g->type);
        put_u64(&h, g->offset);
    }
    if (k.b.oom || h.oom) {
        err_set(err, "out of memory");
        goto fail;
    }
    uint64_t widest = 1, dfloats = 1;
    for (int i = 0; i < p.n; i++) {
        const gtensor *g = &p.t[i];
        widest = g->ne[0] > widest ? g->ne[0] : widest;
        uint64_t blk = g->perm_heads > 0 ? g->rows_per_part / (uint64_t)g->perm_heads : DELTA_ROWS;
        if (g->lo && blk * g->ne[0] > dfloats) dfloats = blk * g->ne[0];
    }
    chunk = malloc(GGUF_CHUNK);
    row = malloc((size_t)widest * sizeof *row);
    delta = malloc((size_t)dfloats * sizeof *delta);
    if (!chunk || !row || !delta) {
        err_set(err, "out of memory");
        goto fail;
    }
    if (fs_atomic_open(&w, path, err) || fs_atomic_write(&w, h.p, h.n, err) || write_pad(&w, h.n, err))
        goto fail;
    for (int i = 0; i < p.n; i++)
        if (write_tensor(&w, &p.t[i], chunk, row, delta, err) || write_pad(&w, p.t[i].nbytes, err)) goto fail;
    if (fs_atomic_commit(&w, err)) goto fail;
    free(row);
    free(delta);
    free(chunk);
    free(h.p);
    free(k.b.p);
    plan_free(&p);
    return 0;
fail:
    if (w.fd >= 0) fs_atomic_abort(&w);
    free(row);
    free(delta);
    free(chunk);
    free(h.p);
    free(k.b.p);
    plan_free(&p);
    return strncmp(err, path, strlen(path)) ? err_wrap(err, "%s", path) : -1;
}
