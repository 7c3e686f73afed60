/* model: an MoE model (any family of model/family.h) as a table of HF-named tensors over a
 * weight store that knows each tensor's dtype, and the training / evaluation passes.
 *
 * The store. Every trainable tensor, and every small one (norms, biases, routers), is fp32 in
 * one contiguous buffer m->w (offsets in floats, in the table order below); gradients and the
 * AdamW moments reuse the same offsets. The big matrices of a frozen base (embedding, q/k/v/o,
 * experts, dense MLPs, lm_head) may instead be kept in bf16 or f16 (m->base_dtype): mapped
 * straight from the safetensors shards (zero copy) or in one owned buffer, and widened to fp32
 * only in a bounded per-thread tile right before each GEMM (model_mat, model/gemm.c).
 *
 * Buffer / table order (fp32 store; "low" tensors keep their place in the table, not in w):
 * embed [V,D]; per layer: input_layernorm [D]; q|k|v projections stacked [(H+2KV)*hd, D] (one
 * GEMM); q|k|v bias [QKV] (qkv_bias); q_norm, k_norm (qk_norm: [hd] each per head, or [H*hd],
 * [KV*hd] whole); o_proj [D, H*hd]; o bias [D]; post_attention_layernorm [D]; MoE layers: router
 * gate [E, D], experts' w1|w3 stacked per expert [E][2F, D], experts' w2 [E][D, F]; a dense MLP
 * (dense layers) or shared expert (Qwen2-MoE): gate|up stacked [2Fs, D], down [D, Fs]; shared
 * expert gate [1, D]; final norm [D]; lm_head [V, D] (absent when tied). */
#ifndef MOET_MODEL_H
#define MOET_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "model/config.h"

/* Element types of stored weights (compute is always fp32). */
enum { MODEL_F32, MODEL_BF16, MODEL_F16 };
const char *model_dtype_name(int dtype); /* "float32", "bfloat16", "float16" */

typedef struct {
    char name[128];    /* HF name, e.g. model.layers.0.self_attn.q_proj.weight */
    int ndim;
    int64_t shape[3];
    size_t offset;     /* in floats, into the owning buffer (fp32 tensors); unused for low ones */
    size_t numel;
    int low;           /* 1: a frozen base matrix kept in m->base_dtype, outside w */
    const void *data;  /* the values (w + offset, or the low storage); NULL until bound */
} model_tensor;

typedef struct {
    int n;
    model_tensor *t;
    size_t total;      /* floats of the fp32 buffer */
} model_table;

/* A weight matrix as a GEMM operand: rows (output features) stacked from up to three parts
 * (q|k|v, or an expert's w1|w3, which a low-precision store keeps apart), cols input features,
 * row-major, every part of one dtype. */
typedef struct {
    int dtype, n, cols;
    const void *p[3];
    int rows[3];
} model_mat;
int model_mat_rows(const model_mat *w);

/* Per-thread fp32 tiles that low-precision matrices are widened into before a GEMM
 * (model/gemm.c); threads tiles of floats each, contiguous. */
typedef struct {
    float *p;
    size_t floats;
    int threads;
} model_tiles;

/* One decoder layer's weights. fp32 vectors are NULL where the family has none. */
typedef struct {
    float *attn_norm, *ffn_norm;
    float *q_norm, *k_norm;      /* QK_NORM_HEAD: (hd) shared by heads; QK_NORM_FULL: (H*hd), (KV*hd) */
    float *bqkv, *bo;            /* (QKV), (D) */
    float *gate;                 /* (E, D) router; NULL in a dense layer */
    float *sgate;                /* (1, D) shared expert gate (Qwen2-MoE) */
    model_mat wqkv, wo;
    model_mat *w13, *w2;         /* [E] experts (MoE layers), NULL otherwise */
    model_mat sw13, sw2;         /* dense MLP or shared expert; cols 0 when absent */
} model_layer;

/* Gradient views (fp32, the stacked layout of w); NULL where nothing is trained. */
typedef struct {
    float *attn_norm, *ffn_norm, *q_norm, *k_norm, *bqkv, *bo, *gate, *sgate;
    float *wqkv, *wo, *w13, *w2, *sw13, *sw2; /* w13 [E][2F, D], w2 [E][D, F] */
} model_grads;

struct lora;

/* Time per kernel family, forward and backward (moet train --profile). */
enum { PROF_EMBED, PROF_NORM, PROF_ATTN, PROF_ROUTER, PROF_EXPERTS, PROF_HEAD, PROF_LORA, PROF_NFAM };
typedef struct {
    double fwd[PROF_NFAM], bwd[PROF_NFAM];
} model_prof;

/* Data-parallel hooks, set by dist/ (NULL: this process is the whole run). Both are called by
 * model_forward_backward on the calling thread, outside parallel regions:
 * - sum(ctx, v, n): add v[n] over all ranks in place (the router statistics of the micro-batch,
 *   so the aux and z losses are those of the global micro-batch);
 * - grads_done(ctx, part): gradients of `part` are complete for this micro-batch: part = n_layers
 *   after lm_head and the final norm, l after layer l, -1 at the end (the embedding). */
typedef struct model_dp {
    void *ctx;
    void (*sum)(void *ctx, double *v, int n);
    void (*grads_done)(void *ctx, int part);
} model_dp;

typedef struct model {
    model_config c;
    model_table tab;
    int base_dtype;    /* MODEL_* of the big frozen matrices (MODEL_F32: everything in w) */
    float *w;          /* fp32 parameters, tab.total floats */
    float *g;          /* gradients, same layout; NULL when the base is frozen */
    model_mat embed, lm_head;             /* lm_head == embed when tied */
    float *final_norm;
    model_layer *layers;
    /* Gradient views, the same shapes; NULL where nothing is trained (frozen base: all NULL;
     * LoRA with train_router: only glayers[l].gate, pointing into the adapter's buffer). */
    float *gembed, *gfinal_norm, *glm_head;
    model_grads *glayers;
    struct lora *lora; /* adapters (model/lora.h), NULL for full training */
    model_prof *prof;  /* accumulate kernel times when non-NULL */
    /* low-precision store */
    uint16_t *low;     /* owned storage of low tensors that are not mapped */
    void *ext;         /* the mapping low tensors point into (closed by ext_free at model_free) */
    void (*ext_free)(void *);
    model_tiles tiles; /* widening tiles (low store only) */
    const model_dp *dp; /* data-parallel hooks, NULL for one process */
} model;

/* Allocate the fp32 buffer (zeroed) and table for a config; with_grads allocates m->g. */
int model_create(model *m, const model_config *c, int with_grads, char *err);
/* The same with the big base matrices in base_dtype (MODEL_BF16 / MODEL_F16; MODEL_F32 is
 * model_create): their data stays NULL until model_bind / model_alloc_low. No gradients. */
int model_create_low(model *m, const model_config *c, int base_dtype, char *err);
/* Point low tensor i at external data (a mapping) of m->base_dtype. */
void model_bind(model *m, int i, const void *data);
/* Owned storage for every low tensor not bound yet; then views are final. */
int model_alloc_low(model *m, char *err);
void model_free(model *m);
/* Bytes of the fp32 buffer, of the low tensors (however stored), and of the tiles. */
void model_store_bytes(const model *m, size_t *f32, size_t *low, size_t *tiles);
/* The same for a config and base dtype, without allocating the weights (the planner). */
int model_store_plan(const model_config *c, int base_dtype, size_t *f32, size_t *low, size_t *tiles, char *err);

/* Random init as HF: normal(0, init_std) for matrices, 1 for norms, 0 for biases; seeded,
 * deterministic (low tensors: the same values rounded). */
void model_init_random(model *m, uint64_t seed);

/* Lookup by HF name; NULL if absent. */
const model_tensor *model_find(const model *m, const char *name);
/* Tensor values as fp32 into dst (numel floats), whatever the store. */
void model_tensor_read(const model *m, const model_tensor *t, float *dst);

/* Parameter counts: total, and active per token (non-expert + top_k experts). */
void model_param_counts(const model_config *c, size_t *total, size_t *active);
/* Forward FLOPs per token at sequence length T (matmuls incl. lm_head, causal attention);
 * a training step costs 3x this. The same formula is used by the benchmark's MFU. */
double model_flops_per_token(const model_config *c, int T);

/* ------------------------------------------------------------------------- passes */

/* One micro-batch. tokens [B,T]; labels [B,T] (target id for position t, or <0 when t is
 * not a target; NULL = every position 1..T-1 targets tokens); doc_start [B,T] (1 where a
 * document starts; NULL = one document per row; used only with doc_mask). */
typedef struct {
    int B, T;
    const int32_t *tokens;
    const int32_t *labels;
    const uint8_t *doc_start;
    int doc_mask;
} model_batch;

typedef struct {
    double ce_sum;     /* sum of token cross-entropies over counted targets */
    long n_targets;
    double ce;         /* ce_sum / n_targets */
    double aux;        /* load-balancing loss E * sum_e f_e P_e over the MoE layers */
    double z;          /* router z-loss mean(logsumexp^2) */
    double loss;       /* ce + aux_coef * aux + z_coef * z */
} model_stats;

typedef struct model_acts model_acts;

/* Activation arena for batches up to B x T: sized once, no allocation in a step. With
 * ckpt (activation checkpointing) the forward keeps only each layer's input and the backward
 * recomputes one layer at a time (bit-identical results, less memory). */
int model_acts_create(model_acts **a, const model *m, int B, int T, char *err);
int model_acts_create_ckpt(model_acts **a, const model *m, int B, int T, int ckpt, char *err);
void model_acts_free(model_acts *a);
/* Bytes the arena for (B, T) takes (with LoRA adapters of rank lora_r, 0 = none), without
 * allocating it. */
size_t model_acts_bytes(const model_config *c, int B, int T, int lora_r);
size_t model_acts_bytes_ckpt(const model_config *c, int B, int T, int lora_r, int ckpt);

/* Forward only; logits [B,T,V] written when non-NULL. z_coef for the reported loss. */
int model_forward(model *m, model_acts *a, const model_batch *b, float aux_coef, float z_coef,
                  float *logits, model_stats *st, char *err);

/* Forward + backward, gradients ADDED into m->g (and LoRA grads). The cross-entropy
 * gradient is ce_scale per counted target (1 / targets of the whole accumulated batch);
 * the aux and z losses, computed per micro-batch, enter with coef / n_micro (their mean
 * over the n_micro micro-batches of one optimizer step). */
int model_forward_backward(model *m, model_acts *a, const model_batch *b, double ce_scale,
                           double aux_coef, double z_coef, int n_micro, model_stats *st, char *err);

/* Expert load of the last forward: counts [L, E] of top-k picks (rows of dense layers 0). */
const int *model_expert_counts(const model_acts *a);
/* Routing of the last forward in layer l: top-k expert ids (N, k) and weights (N, k). */
const int *model_routing(const model_acts *a, int l, const float **weights);
/* Router logits (N, E) of layer l from the last forward. */
const float *model_router_logits(const model_acts *a, int l);

#endif
