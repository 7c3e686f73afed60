/* model_config: the Mixtral architecture as Hugging Face's config.json describes it.
 * model/ never reads files: callers hand over the JSON text. */
#ifndef MOET_MODEL_CONFIG_H
#define MOET_MODEL_CONFIG_H

typedef struct {
    int vocab;          /* vocab_size */
    int dim;            /* hidden_size */
    int ffn;            /* intermediate_size (per expert) */
    int n_layers;       /* num_hidden_layers */
    int n_heads;        /* num_attention_heads */
    int n_kv_heads;     /* num_key_value_heads (GQA) */
    int head_dim;       /* head_dim, may differ from dim / n_heads */
    int n_experts;      /* num_local_experts */
    int top_k;          /* num_experts_per_tok */
    double norm_eps;    /* rms_norm_eps */
    double rope_theta;  /* rope_theta or rope_parameters.rope_theta */
    double aux_coef;    /* router_aux_loss_coef */
    int tie_embeddings; /* tie_word_embeddings */
    int sliding_window; /* 0 = none */
    int max_pos;        /* max_position_embeddings */
    int bos_id, eos_id; /* -1 when absent */
    double init_std;    /* initializer_range */
} model_config;

/* Parse a config.json text. Missing optional fields take Mixtral's defaults
 * (kv_heads = heads, head_dim = hidden/heads, eps 1e-5, theta 1e6, 8 experts, top-2,
 * aux 0.02); shapes are checked for consistency. */
int model_config_from_json(model_config *c, const char *json, char *err);

/* config.json text as save_pretrained writes it (both rope_theta and rope_parameters,
 * architectures, dtype). Returns a malloc'd string. */
char *model_config_to_json(const model_config *c, const char *dtype);

#endif
