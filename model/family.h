/* family: what differs between the MoE families moet trains, in one table, so the layers,
 * the loaders and the exporters consult a description instead of switching on names.
 *
 *              q/k norm   biases            router top-k    MLP per layer              names
 *   mixtral    -          -                 renormalised    experts                    block_sparse_moe.experts.E.w1/w2/w3
 *   qwen3_moe  per head   attention_bias    norm_topk_prob  experts, or dense (mlp_only_layers, decoder_sparse_step)
 *   qwen2_moe  -          qkv_bias (q,k,v)  norm_topk_prob  experts + sigmoid-gated shared expert, or dense
 *   olmoe      whole q/k  attention_bias    norm_topk_prob  experts, clip_qkv           mlp.experts.E.gate_proj/down_proj/up_proj
 *
 * Everything numeric (sizes, flags) lives in model_config; this table holds names, defaults
 * and which config.json keys each family understands. */
#ifndef MOET_FAMILY_H
#define MOET_FAMILY_H

#include "model/config.h"

/* The three expert projections in the order of moet's LoRA targets W1, W2, W3:
 * gate (w1), down (w2), up (w3). */
enum { PROJ_GATE, PROJ_DOWN, PROJ_UP };

typedef struct {
    const char *model_type;   /* config.json model_type */
    const char *arch_class;   /* config.json architectures[0] */
    const char *experts_key;  /* num_local_experts / num_experts */
    const char *moe_prefix;   /* module of the MoE block: block_sparse_moe / mlp */
    const char *proj[3];      /* expert projection names, PROJ_* order */
    double aux_default;       /* router_aux_loss_coef when config.json has none */
    const char *gguf_arch;    /* llama.cpp general.architecture */
    const char *const *keys;  /* config.json keys it understands (NULL-terminated) */
} model_family;

const model_family *model_family_get(int fam);
/* FAM_* for a model_type, -1 if none. */
int model_family_parse(const char *model_type);
/* "mixtral, qwen3_moe, qwen2_moe, olmoe" */
const char *model_family_list(void);
/* Every config.json key some family understands, NULL-terminated (the YAML model.arch
 * check, which suggests near misses from it). */
const char *const *model_config_all_keys(void);
/* The family (FAM_*) whose own key this is when fam does not know it, or -1. */
int model_family_owning_key(int fam, const char *key);

#endif
