/* test_gguf: the GGUF writer (checkpoints/gguf.h) read back by an independent reader
 * written here from the format description (ggml/docs/gguf.md): header, KV types and
 * values, tensor infos (names, dims innermost first, types), 32-byte alignment of the data
 * section and every tensor, the bytes of every tensor against the model (q/k permuted to
 * llama.cpp's interleaved RoPE and back for Mixtral's "llama"; as HF for the other families'
 * NEOX architectures), the tokenizer arrays, each family's keys and tensors (q/k norms, biases,
 * shared expert), a bf16 base store, the options llama.cpp lacks refused, and bad input.
 * llama.cpp itself loading these files is tests/t_gguf_llama.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "checkpoints/gguf.h"
#include "common/err.h"
#include "common/fsutil.h"
#include "model/family.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/tmpdir.h"

static const char *tokenizer_path(void)
{
    static char p[512];
    const char *s = getenv("SHARED");
    snprintf(p, sizeof p, "%s/golden/tiny-mixtral/model/tokenizer.json", s && s[0] ? s : "../shared");
    return p;
}

/* ------------------------------------------------------------ an independent reader */

enum { T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 };

typedef struct {
    char key[128];
    int type, arr_type;
    uint64_t n;               /* array length */
    const unsigned char *v;   /* value (arrays: first element) */
} rkv;

typedef struct {
    char name[128];
    uint32_t ndim, type;
    uint64_t ne[4], offset;
} rtensor;

typedef struct {
    unsigned char *b;
    size_t len, pos;
    uint32_t version;
    uint64_t n_kv, n_t, data_start;
    rkv *kv;
    rtensor *t;
} rfile;

static void need(rfile *f, size_t n) { assert_true(f->pos + n <= f->len); }
static uint32_t r32(rfile *f) { uint32_t v; need(f, 4); memcpy(&v, f->b + f->pos, 4); f->pos += 4; return v; }
static uint64_t r64(rfile *f) { uint64_t v; need(f, 8); memcpy(&v, f->b + f->pos, 8); f->pos += 8; return v; }
static void rstr(rfile *f, char *out, size_t cap)
{
    uint64_t n = r64(f);
    need(f, n);
    assert_true(n < cap);
    memcpy(out, f->b + f->pos, n);
    out[n] = 0;
    f->pos += n;
}
static size_t scalar_size(int type)
{
    static const size_t sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    assert_true(type >= 0 && type <= T_F64 && type != T_STR && type != T_ARR);
    return sz[type];
}
static void skip_value(rfile *f, int type)
{
    if (type == T_STR) {
        uint64_t n = r64(f);
        need(f, n);
        f->pos += n;
    } else {
        need(f, scalar_size(type));
        f->pos += scalar_size(type);
    }
}

static void read_gguf(rfile *f, const char *path)
{
    char err[ERR_MAX];
    char *buf;
    memset(f, 0, sizeof *f);
    if (fs_read_file(path, &buf, &f->len, err)) fail_msg("%s", err);
    f->b = (unsigned char *)buf;
    need(f, 4);
    assert_memory_equal(f->b, "GGUF", 4);
    f->pos = 4;
    f->version = r32(f);
    f->n_t = r64(f);
    f->n_kv = r64(f);
    f->kv = calloc(f->n_kv, sizeof *f->kv);
    f->t = calloc(f->n_t, sizeof *f->t);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        rkv *k = &f->kv[i];
        rstr(f, k->key, sizeof k->key);
        k->type = (int)r32(f);
        if (k->type == T_ARR) {
            k->arr_type = (int)r32(f);
            k->n = r64(f);
            k->v = f->b + f->pos;
            for (uint64_t j = 0; j < k->n; j++) skip_value(f, k->arr_type);
        } else {
            k->v = f->b + f->pos;
            skip_value(f, k->type);
        }
    }
    for (uint64_t i = 0; i < f->n_t; i++) {
        rtensor *t = &f->t[i];
        rstr(f, t->name, sizeof t->name);
        t->ndim = r32(f);
        assert_true(t->ndim >= 1 && t->ndim <= 4);
        for (int d = 0; d < 4; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->ndim; d++) t->ne[d] = r64(f);
        t->type = r32(f);
        t->offset = r64(f);
    }
    f->data_start = (f->pos + 31) / 32 * 32;   /* general.alignment, checked to be 32 */
}

static void free_gguf(rfile *f)
{
    free(f->b);
    free(f->kv);
    free(f->t);
}

static const rkv *kv(const rfile *f, const char *key)
{
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (!strcmp(f->kv[i].key, key)) return &f->kv[i];
    fail_msg("key %s missing", key);
    return NULL;
}
static uint32_t kv_u32(const rfile *f, const char *key)
{
    const rkv *k = kv(f, key);
    assert_int_equal(k->type, T_U32);
    uint32_t v;
    memcpy(&v, k->v, 4);
    return v;
}
static float kv_f32(const rfile *f, const char *key)
{
    const rkv *k = kv(f, key);
    assert_int_equal(k->type, T_F32);
    float v;
    memcpy(&v, k->v, 4);
    return v;
}
static int kv_bool(const rfile *f, const char *key)
{
    const rkv *k = kv(f, key);
    assert_int_equal(k->type, T_BOOL);
    return k->v[0];
}
static void kv_str_equal(const rfile *f, const char *key, const char *want)
{
    const rkv *k = kv(f, key);
    assert_int_equal(k->type, T_STR);
    uint64_t n;
    memcpy(&n, k->v, 8);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(k->v + 8, want, n);
}

static const rtensor *tensor(const rfile *f, const char *name)
{
    for (uint64_t i = 0; i < f->n_t; i++)
        if (!strcmp(f->t[i].name, name)) return &f->t[i];
    return NULL;
}
static const void *tdata(const rfile *f, const rtensor *t) { return f->b + f->data_start + t->offset; }

/* ------------------------------------------------------------ the model written */

/* A small model of family fam with every option llama.cpp's architecture for it computes:
 * Mixtral: head_dim 10 != 24/3, MQA; Qwen3-MoE: per-head q/k norms, head_dim 10, GQA 3:1;
 * Qwen2-MoE: q/k/v biases, a shared expert of 12, raw top-k, head_dim 8 = 24/3 (llama.cpp's
 * qwen2moe needs it); OLMoE: q/k norms over the whole projections, raw top-k, 3 kv heads. */
static model_config small_config(int fam, int vocab, int tied)
{
    model_config c = {.family = fam, .vocab = vocab, .dim = 24, .ffn = 16, .n_layers = 2, .n_heads = 3,
                      .n_kv_heads = 1, .head_dim = 10, .n_experts = 3, .top_k = 2, .norm_eps = 1e-6,
                      .rope_theta = 5e5, .aux_coef = 0.02, .tie_embeddings = tied, .max_pos = 128, .bos_id = 1,
                      .eos_id = 2, .init_std = 0.5, .sparse_step = 1};
    if (fam == FAM_QWEN3_MOE) c.qk_norm = QK_NORM_HEAD, c.dense_ffn = 20;
    if (fam == FAM_QWEN2_MOE)
        c.qkv_bias = 1, c.shared_ffn = 12, c.topk_raw = 1, c.head_dim = 8, c.dense_ffn = 20, c.n_kv_heads = 3;
    if (fam == FAM_OLMOE) c.qk_norm = QK_NORM_FULL, c.topk_raw = 1, c.head_dim = 8, c.n_kv_heads = 3;
    return c;
}

typedef struct {
    model m;
    tok *t;
} fixture;

/* Norms are ones after init, biases zeros: make every 1-D tensor distinct so a swapped one
 * shows. */
static void distinct_vectors(model *m)
{
    for (int i = 0; i < m->tab.n; i++)
        if (!m->tab.t[i].low && (m->tab.t[i].ndim == 1 || m->tab.t[i].shape[0] == 1))
            for (size_t j = 0; j < m->tab.t[i].numel; j++) m->w[m->tab.t[i].offset + j] = 1.0f + 0.01f * (float)(i + j);
}

static void make_fam(fixture *fx, int fam, int vocab_pad, int tied)
{
    char err[ERR_MAX];
    if (tok_load(&fx->t, tokenizer_path(), err)) fail_msg("%s", err);
    model_config c = small_config(fam, tok_vocab_size(fx->t) + vocab_pad, tied);
    if (model_create(&fx->m, &c, 0, err)) fail_msg("%s", err);
    model_init_random(&fx->m, 7);
    distinct_vectors(&fx->m);
}

static void make(fixture *fx, int vocab_pad, int tied) { make_fam(fx, FAM_MIXTRAL, vocab_pad, tied); }

static void unmake(fixture *fx)
{
    model_free(&fx->m);
    tok_free(fx->t);
}

/* The values of tensor name (printf-style) as fp32, whatever the store; the last 8 results
 * stay valid. */
static const float *hf(const model *m, const char *fmt, ...)
{
    static float *keep[8];
    static int k;
    char name[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const model_tensor *t = model_find(m, name);
    if (!t) fail_msg("no %s", name);
    k = (k + 1) % 8;
    free(keep[k]);
    keep[k] = malloc(t->numel * sizeof(float));
    model_tensor_read(m, t, keep[k]);
    return keep[k];
}

/* Element i of a tensor as float, whatever its GGUF type. */
static float elem(const rfile *f, const rtensor *t, size_t i)
{
    const unsigned char *p = tdata(f, t);
    if (t->type == 0) {
        float v;
        memcpy(&v, p + 4 * i, 4);
        return v;
    }
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    return t->type == 1 ? st_f16_to_f32(h) : st_bf16_to_f32(h);
}
/* The model's value x as it must be stored in a tensor of GGUF type `type`. */
static float stored(float x, uint32_t type)
{
    return type == 0 ? x : type == 1 ? st_f16_to_f32(st_f32_to_f16(x)) : st_bf16_to_f32(st_f32_to_bf16(x));
}

/* GGUF tensor t equals rows x cols of src, row r of t being row map(r) of src. */
static void assert_rows(const rfile *f, const rtensor *t, const float *src, size_t rows, size_t cols,
                        size_t row0, int heads)
{
    for (size_t r = 0; r < rows; r++) {
        size_t s = r;
        if (heads) {   /* HF's convert permute, applied to the GGUF rows, gives HF's rows back:
                        * w.view(heads, hd/2, 2, cols).transpose(1, 2): GGUF row h*hd + 2i + j
                        * is HF row h*hd + j*hd/2 + i. */
            size_t hd = rows / (size_t)heads, h = r / hd, i = (r % hd) / 2, j = r % 2;
            s = h * hd + j * (hd / 2) + i;
        }
        for (size_t c = 0; c < cols; c++) {
            float want = stored(src[s * cols + c], t->type), got = elem(f, t, (row0 + r) * cols + c);
            if (memcmp(&want, &got, 4)) fail_msg("%s[%zu][%zu]: %g, want %g", t->name, r, c, got, want);
        }
    }
}

static void assert_dims(const rtensor *t, uint32_t ndim, uint64_t a, uint64_t b, uint64_t c, uint32_t type)
{
    if (!t) fail_msg("tensor missing");
    assert_int_equal(t->ndim, ndim);
    assert_int_equal(t->ne[0], a);
    assert_int_equal(t->ne[1], b);
    assert_int_equal(t->ne[2], c);
    assert_int_equal(t->type, type);
}

/* {arch}.key */
static const char *ak(const model_config *c, const char *key)
{
    static char full[8][128];
    static int k;
    k = (k + 1) % 8;
    snprintf(full[k], sizeof full[k], "%s.%s", model_family_get(c->family)->gguf_arch, key);
    return full[k];
}

/* Everything about one written file; type = GGUF type of the matrices. */
static void check_file(const fixture *fx, const char *path, uint32_t type, uint32_t file_type)
{
    const model *m = &fx->m;
    const model_config *c = &m->c;
    const model_family *F = model_family_get(c->family);
    int qwen = c->family == FAM_QWEN3_MOE || c->family == FAM_QWEN2_MOE, fam = c->family;
    rfile f;
    read_gguf(&f, path);
    assert_int_equal(f.version, 3);

    /* hparams as llama.cpp's architecture for the family reads them, with its types */
    kv_str_equal(&f, "general.architecture", F->gguf_arch);
    kv_str_equal(&f, "general.name", "tiny");
    assert_int_equal(kv_u32(&f, "general.alignment"), 32);
    assert_int_equal(kv_u32(&f, "general.file_type"), file_type);
    assert_int_equal(kv_u32(&f, ak(c, "block_count")), c->n_layers);
    assert_int_equal(kv_u32(&f, ak(c, "context_length")), c->max_pos);
    assert_int_equal(kv_u32(&f, ak(c, "embedding_length")), c->dim);
    assert_int_equal(kv_u32(&f, ak(c, "feed_forward_length")), qwen ? c->dense_ffn : c->ffn);
    assert_int_equal(kv_u32(&f, ak(c, "attention.head_count")), c->n_heads);
    assert_int_equal(kv_u32(&f, ak(c, "attention.head_count_kv")), c->n_kv_heads);
    assert_int_equal(kv_u32(&f, ak(c, "attention.key_length")), c->head_dim);
    assert_int_equal(kv_u32(&f, ak(c, "attention.value_length")), c->head_dim);
    assert_int_equal(kv_u32(&f, ak(c, "rope.dimension_count")), c->head_dim);
    assert_int_equal(kv_u32(&f, ak(c, "expert_count")), c->n_experts);
    assert_int_equal(kv_u32(&f, ak(c, "expert_used_count")), c->top_k);
    assert_int_equal(kv_u32(&f, ak(c, "vocab_size")), c->vocab);
    assert_true(kv_f32(&f, ak(c, "rope.freq_base")) == (float)c->rope_theta);
    assert_true(kv_f32(&f, ak(c, "attention.layer_norm_rms_epsilon")) == (float)c->norm_eps);
    int n_kv = 19, model_kv = 0; /* general.* 5 and the 14 hparams above: no other key but tokenizer.* */
    if (qwen) assert_int_equal(kv_u32(&f, ak(c, "expert_feed_forward_length")), c->ffn), n_kv++;
    if (fam == FAM_QWEN2_MOE)
        assert_int_equal(kv_u32(&f, ak(c, "expert_shared_feed_forward_length")), c->shared_ffn), n_kv++;
    for (uint64_t i = 0; i < f.n_kv; i++) model_kv += strncmp(f.kv[i].key, "tokenizer.", 10) != 0;
    assert_int_equal(model_kv, n_kv);

    /* tokenizer: ids past the tokenizer are "[PADi]", type UNUSED (5), score -1000 */
    const tok *t = fx->t;
    int nt = tok_vocab_size(t);
    kv_str_equal(&f, "tokenizer.ggml.model", "llama");
    assert_int_equal(kv_u32(&f, "tokenizer.ggml.bos_token_id"), tok_bos_id(t));
    assert_int_equal(kv_u32(&f, "tokenizer.ggml.eos_token_id"), tok_eos_id(t));
    assert_int_equal(kv_u32(&f, "tokenizer.ggml.unknown_token_id"), tok_unk_id(t));
    assert_true(kv_bool(&f, "tokenizer.ggml.add_bos_token"));
    assert_false(kv_bool(&f, "tokenizer.ggml.add_eos_token"));
    assert_true(kv_bool(&f, "tokenizer.ggml.add_space_prefix"));
    const rkv *tk = kv(&f, "tokenizer.ggml.tokens"), *sc = kv(&f, "tokenizer.ggml.scores"),
              *ty = kv(&f, "tokenizer.ggml.token_type");
    assert_int_equal(tk->type, T_ARR);
    assert_int_equal(tk->arr_type, T_STR);
    assert_int_equal(sc->arr_type, T_F32);
    assert_int_equal(ty->arr_type, T_I32);
    assert_int_equal(tk->n, c->vocab);
    assert_int_equal(sc->n, c->vocab);
    assert_int_equal(ty->n, c->vocab);
    const unsigned char *p = tk->v;
    int n_merged_scored = 0;
    for (int i = 0; i < c->vocab; i++) {
        uint64_t n;
        memcpy(&n, p, 8);
        char want[32];
        const char *w = i < nt ? tok_piece(t, i) : (snprintf(want, sizeof want, "[PAD%d]", i), want);
        if (n != strlen(w) || memcmp(p + 8, w, n)) fail_msg("token %d: '%.*s', want '%s'", i, (int)n, p + 8, w);
        p += 8 + n;
        float s;
        int32_t type_i;
        memcpy(&s, sc->v + 4 * i, 4);
        memcpy(&type_i, ty->v + 4 * i, 4);
        assert_true(s == (i < nt ? tok_piece_score(t, i) : -1000.0f));
        assert_int_equal(type_i, i < nt ? tok_piece_type(t, i) : 5);
        /* DESIGN.md: merged pieces score -(id - 259) */
        if (i < nt && type_i == TOK_NORMAL && i >= 340 && s == -(float)(i - 259)) n_merged_scored++;
    }
    assert_int_equal(n_merged_scored, nt - 340);   /* ids 340.. are this tokenizer's merges */
    assert_int_equal(ty->v[0], TOK_UNKNOWN);
    assert_int_equal(ty->v[4], TOK_CONTROL);
    assert_int_equal(ty->v[4 * 3], TOK_BYTE);

    /* tensor infos: the set llama.cpp loads, dims innermost first */
    int D = c->dim, Fe = c->ffn, E = c->n_experts, hd = c->head_dim, H = c->n_heads, KV = c->n_kv_heads;
    int Fs = c->shared_ffn, output = !c->tie_embeddings || fam == FAM_QWEN2_MOE || fam == FAM_OLMOE;
    int per_layer = 10 + 3 * c->qkv_bias + 2 * (c->qk_norm != 0) + 4 * (Fs > 0);
    assert_int_equal(f.n_t, 1 + per_layer * c->n_layers + 1 + output);
    assert_dims(tensor(&f, "token_embd.weight"), 2, D, c->vocab, 1, type);
    assert_dims(tensor(&f, "output_norm.weight"), 1, D, 1, 1, 0);
    if (!output) assert_null(tensor(&f, "output.weight"));
    else assert_dims(tensor(&f, "output.weight"), 2, D, c->vocab, 1, type);
    char nm[64];
#define T(...) (snprintf(nm, sizeof nm, __VA_ARGS__), tensor(&f, nm))
    int qn = c->qk_norm == QK_NORM_HEAD ? hd : H * hd, kn = c->qk_norm == QK_NORM_HEAD ? hd : KV * hd;
    for (int l = 0; l < c->n_layers; l++) {
        assert_dims(T("blk.%d.attn_norm.weight", l), 1, D, 1, 1, 0);
        assert_dims(T("blk.%d.attn_q.weight", l), 2, D, H * hd, 1, type);
        assert_dims(T("blk.%d.attn_k.weight", l), 2, D, KV * hd, 1, type);
        assert_dims(T("blk.%d.attn_v.weight", l), 2, D, KV * hd, 1, type);
        assert_dims(T("blk.%d.attn_output.weight", l), 2, H * hd, D, 1, type);
        if (c->qkv_bias) {
            assert_dims(T("blk.%d.attn_q.bias", l), 1, H * hd, 1, 1, 0);
            assert_dims(T("blk.%d.attn_k.bias", l), 1, KV * hd, 1, 1, 0);
            assert_dims(T("blk.%d.attn_v.bias", l), 1, KV * hd, 1, 1, 0);
        } else assert_null(T("blk.%d.attn_q.bias", l));
        if (c->qk_norm) {
            assert_dims(T("blk.%d.attn_q_norm.weight", l), 1, qn, 1, 1, 0);
            assert_dims(T("blk.%d.attn_k_norm.weight", l), 1, kn, 1, 1, 0);
        } else assert_null(T("blk.%d.attn_q_norm.weight", l));
        assert_dims(T("blk.%d.ffn_norm.weight", l), 1, D, 1, 1, 0);
        assert_dims(T("blk.%d.ffn_gate_inp.weight", l), 2, D, E, 1, 0);
        assert_dims(T("blk.%d.ffn_gate_exps.weight", l), 3, D, Fe, E, type);
        assert_dims(T("blk.%d.ffn_up_exps.weight", l), 3, D, Fe, E, type);
        assert_dims(T("blk.%d.ffn_down_exps.weight", l), 3, Fe, D, E, type);
        if (Fs) {
            assert_dims(T("blk.%d.ffn_gate_inp_shexp.weight", l), 1, D, 1, 1, 0);
            assert_dims(T("blk.%d.ffn_gate_shexp.weight", l), 2, D, Fs, 1, type);
            assert_dims(T("blk.%d.ffn_up_shexp.weight", l), 2, D, Fs, 1, type);
            assert_dims(T("blk.%d.ffn_down_shexp.weight", l), 2, Fs, D, 1, type);
        }
    }

    /* alignment and layout: data section and every tensor on 32 bytes, no overlap, the
     * file ends with the last tensor (padded to 32) */
    assert_int_equal(f.data_start % 32, 0);
    uint64_t end = 0;
    for (uint64_t i = 0; i < f.n_t; i++) {
        const rtensor *x = &f.t[i];
        uint64_t bytes = x->ne[0] * x->ne[1] * x->ne[2] * x->ne[3] * (x->type == 0 ? 4 : 2);
        assert_int_equal(x->offset % 32, 0);
        assert_true(x->offset >= end);
        end = x->offset + bytes;
    }
    assert_true(f.data_start + end <= f.len && f.len < f.data_start + end + 32);

    /* data: every tensor against the model (q and k through the RoPE permutation for the
     * llama architecture only; the others use NEOX RoPE, HF's own row order) */
    int perm = fam == FAM_MIXTRAL;
    assert_rows(&f, tensor(&f, "token_embd.weight"), hf(m, "model.embed_tokens.weight"), (size_t)c->vocab, (size_t)D, 0, 0);
    assert_rows(&f, tensor(&f, "output_norm.weight"), hf(m, "model.norm.weight"), 1, (size_t)D, 0, 0);
    if (output)
        assert_rows(&f, tensor(&f, "output.weight"),
                    hf(m, c->tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight"), (size_t)c->vocab, (size_t)D, 0, 0);
    const char *mp = F->moe_prefix;
    for (int l = 0; l < c->n_layers; l++) {
        const char *A = "model.layers.%d.self_attn.%s";
        assert_rows(&f, T("blk.%d.attn_norm.weight", l), hf(m, "model.layers.%d.input_layernorm.weight", l), 1, D, 0, 0);
        assert_rows(&f, T("blk.%d.attn_q.weight", l), hf(m, A, l, "q_proj.weight"), H * hd, D, 0, perm ? H : 0);
        assert_rows(&f, T("blk.%d.attn_k.weight", l), hf(m, A, l, "k_proj.weight"), KV * hd, D, 0, perm ? KV : 0);
        assert_rows(&f, T("blk.%d.attn_v.weight", l), hf(m, A, l, "v_proj.weight"), KV * hd, D, 0, 0);
        assert_rows(&f, T("blk.%d.attn_output.weight", l), hf(m, A, l, "o_proj.weight"), D, H * hd, 0, 0);
        if (c->qkv_bias) {
            assert_rows(&f, T("blk.%d.attn_q.bias", l), hf(m, A, l, "q_proj.bias"), 1, H * hd, 0, 0);
            assert_rows(&f, T("blk.%d.attn_k.bias", l), hf(m, A, l, "k_proj.bias"), 1, KV * hd, 0, 0);
            assert_rows(&f, T("blk.%d.attn_v.bias", l), hf(m, A, l, "v_proj.bias"), 1, KV * hd, 0, 0);
        }
        if (c->qk_norm) {
            assert_rows(&f, T("blk.%d.attn_q_norm.weight", l), hf(m, A, l, "q_norm.weight"), 1, qn, 0, 0);
            assert_rows(&f, T("blk.%d.attn_k_norm.weight", l), hf(m, A, l, "k_norm.weight"), 1, kn, 0, 0);
        }
        assert_rows(&f, T("blk.%d.ffn_norm.weight", l), hf(m, "model.layers.%d.post_attention_layernorm.weight", l), 1, D, 0, 0);
        assert_rows(&f, T("blk.%d.ffn_gate_inp.weight", l), hf(m, "model.layers.%d.%s.gate.weight", l, mp), E, D, 0, 0);
        for (int e = 0; e < E; e++) {
            const char *X = "model.layers.%d.%s.experts.%d.%s.weight";
            assert_rows(&f, T("blk.%d.ffn_gate_exps.weight", l), hf(m, X, l, mp, e, F->proj[PROJ_GATE]), Fe, D, (size_t)e * Fe, 0);
            assert_rows(&f, T("blk.%d.ffn_up_exps.weight", l), hf(m, X, l, mp, e, F->proj[PROJ_UP]), Fe, D, (size_t)e * Fe, 0);
            assert_rows(&f, T("blk.%d.ffn_down_exps.weight", l), hf(m, X, l, mp, e, F->proj[PROJ_DOWN]), D, Fe, (size_t)e * D, 0);
        }
        if (Fs) {
            const char *S = "model.layers.%d.mlp.shared_expert.%s.weight";
            assert_rows(&f, T("blk.%d.ffn_gate_inp_shexp.weight", l), hf(m, "model.layers.%d.mlp.shared_expert_gate.weight", l), 1, D, 0, 0);
            assert_rows(&f, T("blk.%d.ffn_gate_shexp.weight", l), hf(m, S, l, "gate_proj"), Fs, D, 0, 0);
            assert_rows(&f, T("blk.%d.ffn_up_shexp.weight", l), hf(m, S, l, "up_proj"), Fs, D, 0, 0);
            assert_rows(&f, T("blk.%d.ffn_down_shexp.weight", l), hf(m, S, l, "down_proj"), D, Fs, 0, 0);
        }
    }
#undef T
    free_gguf(&f);
}

static void test_f32_file_has_every_key_tensor_and_byte_llama_cpp_needs(void **state)
{
    fixture fx;
    char err[ERR_MAX];
    make(&fx, 4, 0);   /* model vocab 4 past the tokenizer's: [PAD] tokens */
    const char *p = tmp_path("f32.gguf");
    if (gguf_write_model(p, &fx.m, fx.t, ST_F32, "/some/dir/tiny/", err)) fail_msg("%s", err);
    check_file(&fx, p, 0, 0);
    unmake(&fx);
}

static void test_f16_and_bf16_files_round_matrices_and_keep_norms_and_router_f32(void **state)
{
    fixture fx;
    char err[ERR_MAX];
    make(&fx, 0, 0);
    const char *p = tmp_path("f16.gguf");
    if (gguf_write_model(p, &fx.m, fx.t, ST_F16, "tiny", err)) fail_msg("%s", err);
    check_file(&fx, p, 1, 1);
    p = tmp_path("bf16.gguf");
    if (gguf_write_model(p, &fx.m, fx.t, ST_BF16, "tiny", err)) fail_msg("%s", err);
    check_file(&fx, p, 30, 32);
    unmake(&fx);
}

static void test_tied_embeddings_write_no_output_tensor(void **state)
{
    fixture fx;
    char err[ERR_MAX];
    make(&fx, 0, 1);
    const char *p = tmp_path("tied.gguf");
    if (gguf_write_model(p, &fx.m, fx.t, ST_F32, "tiny", err)) fail_msg("%s", err);
    check_file(&fx, p, 0, 0);
    unmake(&fx);
}

/* The permutation is not the identity for these shapes: a writer that forgot it would be
 * caught by check_file (this proves that check can fail). */
static void test_q_rows_are_really_moved_by_the_rope_permutation(void **state)
{
    fixture fx;
    char err[ERR_MAX];
    make(&fx, 0, 0);
    const char *p = tmp_path("perm.gguf");
    if (gguf_write_model(p, &fx.m, fx.t, ST_F32, "tiny", err)) fail_msg("%s", err);
    rfile f;
    read_gguf(&f, p);
    const rtensor *q = tensor(&f, "blk.0.attn_q.weight");
    const float *src = hf(&fx.m, "model.layers.0.self_attn.q_proj.weight");
    int D = fx.m.c.dim, hd = fx.m.c.head_dim, moved = 0;
    for (int r = 0; r < fx.m.c.n_heads * hd; r++) moved += elem(&f, q, (size_t)r * D) != src[(size_t)r * D];
    /* per head, rows 0 and hd-1 stay; the other hd-2 move */
    assert_int_equal(moved, fx.m.c.n_heads * (hd - 2));
    free_gguf(&f);
    unmake(&fx);
}

static void test_bad_input_is_one_error_and_leaves_the_old_file(void **state)
{
    fixture fx;
    char err[ERR_MAX];
    make(&fx, 0, 0);
    const char *p = tmp_path("keep.gguf");
    if (gguf_write_model(p, &fx.m, fx.t, ST_F32, "tiny", err)) fail_msg("%s", err);
    char *before, *after;
    size_t n0, n1;
    assert_int_equal(fs_read_file(p, &before, &n0, err), 0);

    assert_int_equal(gguf_write_model(p, &fx.m, fx.t, ST_F64, "tiny", err), -1);
    assert_non_null(strstr(err, "F64"));
    assert_null(strchr(err, '\n'));
    assert_int_equal(gguf_write_model(p, &fx.m, fx.t, ST_I32, "tiny", err), -1);
    assert_non_null(strstr(err, "I32"));
    assert_int_equal(gguf_write_model(p, &fx.m, NULL, ST_F32, "tiny", err), -1);
    assert_non_null(strstr(err, "tokenizer"));

    /* a model whose vocab is smaller than the tokenizer's */
    model small;
    model_config c = small_config(FAM_MIXTRAL, 100, 0);
    assert_int_equal(model_create(&small, &c, 0, err), 0);
    assert_int_equal(gguf_write_model(p, &small, fx.t, ST_F32, "tiny", err), -1);
    assert_non_null(strstr(err, "vocab"));
    model_free(&small);

    /* odd head_dim cannot be RoPE'd */
    c = small_config(FAM_MIXTRAL, tok_vocab_size(fx.t), 0);
    c.head_dim = 9;
    assert_int_equal(model_create(&small, &c, 0, err), 0);
    assert_int_equal(gguf_write_model(p, &small, fx.t, ST_F32, "tiny", err), -1);
    assert_non_null(strstr(err, "head_dim"));
    model_free(&small);

    /* unwritable place: error, nothing left behind */
    assert_int_equal(gguf_write_model(tmp_path("no/such/dir/x.gguf"), &fx.m, fx.t, ST_F32, "tiny", err), -1);

    assert_int_equal(fs_read_file(p, &after, &n1, err), 0);
    assert_int_equal(n0, n1);
    assert_memory_equal(before, after, n0);
    free(before);
    free(after);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "test $(ls -A '%s' | wc -l) = 1", dir);   /* only keep.gguf: no temp files */
    assert_int_equal(system(cmd), 0);
    unmake(&fx);
}

/* Qwen3-MoE, Qwen2-MoE, OLMoE: each with llama.cpp's own architecture, every dtype, untied and
 * tied (qwen3moe falls back to token_embd; qwen2moe and olmoe require output.weight, so the
 * embedding is written there too). */
static void test_every_family_writes_its_llama_cpp_architecture_keys_and_tensors(void **state)
{
    static const struct { st_dtype dt; uint32_t type, ftype; } dts[] = {{ST_F32, 0, 0}, {ST_F16, 1, 1}, {ST_BF16, 30, 32}};
    char err[ERR_MAX];
    for (int fam = FAM_QWEN3_MOE; fam < FAM_N; fam++)
        for (int tied = 0; tied < 2; tied++)
            for (size_t d = 0; d < sizeof dts / sizeof *dts; d++) {
                fixture fx;
                make_fam(&fx, fam, 3, tied);
                const char *p = tmp_path("fam.gguf");
                if (gguf_write_model(p, &fx.m, fx.t, dts[d].dt, "tiny", err)) fail_msg("%s", err);
                check_file(&fx, p, dts[d].type, dts[d].ftype);
                unmake(&fx);
            }
}

/* A base kept in bf16 (the low-precision store) is written from its own values. */
static void test_a_bf16_base_store_is_written_from_its_values(void **state)
{
    char err[ERR_MAX];
    for (int fam = 0; fam < FAM_N; fam++) {
        fixture fx;
        if (tok_load(&fx.t, tokenizer_path(), err)) fail_msg("%s", err);
        model_config c = small_config(fam, tok_vocab_size(fx.t), 0);
        if (model_create_low(&fx.m, &c, MODEL_BF16, err) || model_alloc_low(&fx.m, err)) fail_msg("%s", err);
        model_init_random(&fx.m, 9);
        distinct_vectors(&fx.m);
        assert_true(fx.m.tab.t[0].low);
        const char *p = tmp_path("low.gguf");
        if (gguf_write_model(p, &fx.m, fx.t, ST_F32, "tiny", err)) fail_msg("%s", err);
        check_file(&fx, p, 0, 0);
        unmake(&fx);
    }
}

/* What llama.cpp's architectures (node-llama-cpp 3.21.1) do not compute is refused, naming the
 * option and the architecture, and nothing is written. */
static void test_options_llama_cpp_lacks_are_refused_by_name(void **state)
{
    fixture fx;
    char err[ERR_MAX];
    make(&fx, 0, 0);
    struct { int fam; const char *option, *arch; } cases[] = {
        {FAM_QWEN3_MOE, "dense MLP layer", "qwen3moe"}, {FAM_QWEN3_MOE, "norm_topk_prob false", "qwen3moe"},
        {FAM_QWEN3_MOE, "attention_bias", "qwen3moe"},   {FAM_QWEN2_MOE, "dense MLP layer", "qwen2moe"},
        {FAM_QWEN2_MOE, "norm_topk_prob true", "qwen2moe"}, {FAM_QWEN2_MOE, "shared_expert_intermediate_size", "qwen2moe"},
        {FAM_QWEN2_MOE, "head_dim", "qwen2moe"},         {FAM_OLMOE, "norm_topk_prob true", "olmoe"},
        {FAM_OLMOE, "clip_qkv", "olmoe"},                {FAM_OLMOE, "attention_bias", "olmoe"},
        {FAM_OLMOE, "num_key_value_heads", "olmoe"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        model_config c = small_config(cases[i].fam, tok_vocab_size(fx.t), 0);
        assert_int_equal(gguf_check_model(&c, err), 0);
        const char *o = cases[i].option;
        if (!strcmp(o, "dense MLP layer")) c.mlp_only[1] = 1;
        else if (!strncmp(o, "norm_topk_prob", 14)) c.topk_raw = !c.topk_raw;
        else if (!strcmp(o, "attention_bias")) c.qkv_bias = c.o_bias = 1;
        else if (!strcmp(o, "shared_expert_intermediate_size")) c.shared_ffn = 0;
        else if (!strcmp(o, "head_dim")) c.head_dim = 10;
        else if (!strcmp(o, "clip_qkv")) c.clip_qkv = 4;
        else if (!strcmp(o, "num_key_value_heads")) c.n_kv_heads = 1;
        assert_int_equal(gguf_check_model(&c, err), -1);
        if (!strstr(err, o) || !strstr(err, cases[i].arch) || strchr(err, '\n'))
            fail_msg("%s: '%s'", o, err);
        model m;
        assert_int_equal(model_create(&m, &c, 0, err), 0);
        assert_int_equal(gguf_write_model(tmp_path("refused.gguf"), &m, fx.t, ST_F32, "tiny", err), -1);
        assert_non_null(strstr(err, o));
        model_free(&m);
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "test $(ls -A '%s' | wc -l) = 0", dir);   /* nothing written, no temp files */
    assert_int_equal(system(cmd), 0);
    unmake(&fx);
}

static int setup(void **state) { return tmpdir_make("test_gguf"); }

static int teardown(void **state) { return tmpdir_remove(); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_f32_file_has_every_key_tensor_and_byte_llama_cpp_needs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_f16_and_bf16_files_round_matrices_and_keep_norms_and_router_f32, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tied_embeddings_write_no_output_tensor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_q_rows_are_really_moved_by_the_rope_permutation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_input_is_one_error_and_leaves_the_old_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_family_writes_its_llama_cpp_architecture_keys_and_tensors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_bf16_base_store_is_written_from_its_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_options_llama_cpp_lacks_are_refused_by_name, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
