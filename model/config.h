/* model_config: an MoE architecture as Hugging Face's config.json describes it, for every
 * family moet knows (model/family.h says what differs between them).
 * model/ never reads files: callers hand over the JSON text. */
#ifndef MOET_MODEL_CONFIG_H
#define MOET_MODEL_CONFIG_H

#define MODEL_MAX_LAYERS 512
/* Experts of all MoE layers together (MoE layers x experts): 2^18, over 10x Kimi K2's
 * (60 x 384) or DeepSeek-V3's count. Every expert MLP is 3 tensors of the parameter table
 * (model.h), 170 bytes each even before its weights: a config.json of 31 layers x 26,384
 * experts took 15 s and 1 GB under the fuzzer (tests/fuzz), where 512 x 512 now take 5 s. */
#define MODEL_MAX_EXPERT_MLPS (1 << 18)

/* Families (config.json model_type). */
enum { FAM_MIXTRAL, FAM_QWEN3_MOE, FAM_QWEN2_MOE, FAM_OLMOE, FAM_N };
/* RMSNorm on the q and k projections before RoPE: none, per head (Qwen3-MoE, over head_dim),
 * or over the whole projection (OLMoE, over H*hd and KV*hd). */
enum { QK_NORM_NONE, QK_NORM_HEAD, QK_NORM_FULL };

typedef struct {
    int family;         /* FAM_* from model_type */
    int vocab;          /* vocab_size */
    int dim;            /* hidden_size */
    int ffn;            /* an expert's intermediate size (Mixtral, OLMoE: intermediate_size;
                           Qwen: moe_intermediate_size) */
    int dense_ffn;      /* intermediate size of the dense-MLP layers (Qwen: intermediate_size) */
    int shared_ffn;     /* shared_expert_intermediate_size (Qwen2-MoE), 0 = no shared expert */
    int n_layers;       /* num_hidden_layers */
    int n_heads;        /* num_attention_heads */
    int n_kv_heads;     /* num_key_value_heads (GQA) */
    int head_dim;       /* head_dim, may differ from dim / n_heads */
    int n_experts;      /* num_local_experts / num_experts */
    int top_k;          /* num_experts_per_tok */
    int topk_raw;       /* 1: the top-k weights are the probabilities as they are (norm_topk_prob
                           false); 0: renormalised to sum 1 (Mixtral; norm_topk_prob true) */
    int qk_norm;        /* QK_NORM_* (implied by the family) */
    int qkv_bias;       /* bias on q, k, v (Qwen2-MoE qkv_bias; Qwen3-MoE / OLMoE attention_bias) */
    int o_bias;         /* bias on o_proj (Qwen3-MoE / OLMoE attention_bias) */
    double clip_qkv;    /* OLMoE clip_qkv: q, k, v clamped to [-c, c] after the norms; 0 = off */
    double norm_eps;    /* rms_norm_eps */
    double rope_theta;  /* rope_theta or rope_parameters.rope_theta */
    double aux_coef;    /* router_aux_loss_coef (family default when absent) */
    int tie_embeddings; /* tie_word_embeddings */
    int sliding_window; /* 0 = none (Mixtral only) */
    int max_pos;        /* max_position_embeddings */
    int bos_id, eos_id; /* -1 when absent */
    int pad_id;         /* pad_token_id: the embedding's padding_idx (its row gets no gradient); -1 none */
    double init_std;    /* initializer_range */
    int sparse_step;    /* decoder_sparse_step (Qwen); 0 or 1: every layer */
    int max_window_layers; /* Qwen's max_window_layers, kept for config.json only (no sliding
                              window is used); 0 absent (Qwen2-MoE then writes its default 28) */
    unsigned char mlp_only[MODEL_MAX_LAYERS]; /* 1: listed in mlp_only_layers (Qwen) */
} model_config;

/* Layer l has a router and experts (else it is a dense MLP layer, Qwen's mlp_only_layers /
 * decoder_sparse_step). */
int model_layer_is_moe(const model_config *c, int l);
/* Size of layer l's dense MLP: the whole MLP of a dense layer, or the shared expert of an
 * MoE layer (Qwen2-MoE); 0 when the layer has none. */
int model_layer_dense_ffn(const model_config *c, int l);
/* Number of MoE layers. */
int model_moe_layers(const model_config *c);

/* Parse a config.json text. model_type picks the family (absent: mixtral); keys the family
 * does not know, keys of another family and values moet does not implement are errors that
 * name the key; missing optional fields take the family's transformers defaults; shapes are
 * checked for consistency. */
int model_config_from_json(model_config *c, const char *json, char *err);

/* config.json text as save_pretrained writes it for the family (both rope_theta and
 * rope_parameters, architectures, dtype). Returns a malloc'd string. */
char *model_config_to_json(const model_config *c, const char *dtype);

#endif
