/* model: a Mixtral model as one fp32 parameter buffer plus a table of HF-named views,
 * and the training / evaluation passes over it.
 *
 * Buffer layout (offsets in floats, in this order): embed [V,D]; per layer:
 * input_layernorm [D], q|k|v projections stacked [(H+2KV)*hd, D] (one GEMM), o_proj [D, H*hd],
 * post_attention_layernorm [D], router gate [E, D], experts' w1|w3 stacked per expert
 * [E][2F, D], experts' w2 [E][D, F]; final norm [D]; lm_head [V, D] (absent when tied).
 * The grads and AdamW moments reuse the same offsets. */
#ifndef MOET_MODEL_H
#define MOET_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "model/config.h"

typedef struct {
    char name[128];    /* HF name, e.g. model.layers.0.self_attn.q_proj.weight */
    int ndim;
    int64_t shape[3];
    size_t offset;     /* in floats, into the owning buffer */
    size_t numel;
} model_tensor;

typedef struct {
    int n;
    model_tensor *t;
    size_t total;      /* floats */
} model_table;

typedef struct {
    float *attn_norm, *wqkv, *wo, *ffn_norm, *gate, *w13, *w2;
} model_layer;

struct lora;

/* Time per kernel family, forward and backward (moet train --profile). */
enum { PROF_EMBED, PROF_NORM, PROF_ATTN, PROF_ROUTER, PROF_EXPERTS, PROF_HEAD, PROF_LORA, PROF_NFAM };
typedef struct {
    double fwd[PROF_NFAM], bwd[PROF_NFAM];
} model_prof;

typedef struct model {
    model_config c;
    model_table tab;
    float *w;          /* parameters, tab.total floats */
    float *g;          /* gradients, same layout; NULL when the base is frozen */
    float *embed, *final_norm, *lm_head;   /* views into w (lm_head == embed when tied) */
    model_layer *layers;
    /* Gradient views, the same shapes; NULL where nothing is trained (frozen base: all NULL;
     * LoRA with train_router: only glayers[l].gate, pointing into the adapter's buffer). */
    float *gembed, *gfinal_norm, *glm_head;
    model_layer *glayers;
    struct lora *lora; /* adapters (model/lora.h), NULL for full training */
    model_prof *prof;  /* accumulate kernel times when non-NULL */
} model;

/* Allocate the buffer (zeroed) and table for a config; with_grads allocates m->g. */
int model_create(model *m, const model_config *c, int with_grads, char *err);
void model_free(model *m);

/* Random init as HF: normal(0, init_std) for matrices, 1 for norms; seeded, deterministic. */
void model_init_random(model *m, uint64_t seed);

/* Lookup by HF name; NULL if absent. */
const model_tensor *model_find(const model *m, const char *name);

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
    double aux;        /* load-balancing loss E * sum_e f_e P_e */
    double z;          /* router z-loss mean(logsumexp^2) */
    double loss;       /* ce + aux_coef * aux + z_coef * z */
} model_stats;

typedef struct model_acts model_acts;

/* Activation arena for batches up to B x T: sized once, no allocation in a step. */
int model_acts_create(model_acts **a, const model *m, int B, int T, char *err);
void model_acts_free(model_acts *a);
/* Bytes the arena for (B, T) takes (with LoRA adapters of rank lora_r, 0 = none),
 * without allocating it. */
size_t model_acts_bytes(const model_config *c, int B, int T, int lora_r);

/* Forward only; logits [B,T,V] written when non-NULL. z_coef for the reported loss. */
int model_forward(model *m, model_acts *a, const model_batch *b, float aux_coef, float z_coef,
                  float *logits, model_stats *st, char *err);

/* Forward + backward, gradients ADDED into m->g (and LoRA grads). The cross-entropy
 * gradient is ce_scale per counted target (1 / targets of the whole accumulated batch);
 * the aux and z losses, computed per micro-batch, enter with coef / n_micro (their mean
 * over the n_micro micro-batches of one optimizer step). */
int model_forward_backward(model *m, model_acts *a, const model_batch *b, double ce_scale,
                           double aux_coef, double z_coef, int n_micro, model_stats *st, char *err);

/* Expert load of the last forward: counts [L, E] of top-k picks (L*N*k in total). */
const int *model_expert_counts(const model_acts *a);
/* Routing of the last forward in layer l: top-k expert ids (N, k) and weights (N, k). */
const int *model_routing(const model_acts *a, int l, const float **weights);
/* Router logits (N, E) of layer l from the last forward. */
const float *model_router_logits(const model_acts *a, int l);

#endif
