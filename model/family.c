/* family: the table of MoE families (names, defaults, config.json keys). */
#include "model/family.h"

#include <string.h>

/* Keys every family's config.json may carry: the shapes and settings moet reads, and what
 * PretrainedConfig writes without meaning for the maths. */
#define COMMON_KEYS                                                                                                   \
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path", "use_cache",     \
        "output_router_logits", "tie_word_embeddings", "pad_token_id", "bos_token_id", "eos_token_id", "vocab_size", \
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",       \
        "head_dim", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps", "rope_theta",       \
        "rope_scaling", "rope_parameters", "attention_dropout", "num_experts_per_tok", "router_aux_loss_coef",        \
        "return_dict", "output_hidden_states", "output_attentions", "torchscript", "use_bfloat16", "pruned_heads",   \
        "tie_encoder_decoder", "is_decoder", "is_encoder_decoder", "add_cross_attention", "chunk_size_feed_forward",  \
        "problem_type", "id2label", "label2id", "tokenizer_class", "_attn_implementation",                           \
        "_attn_implementation_autoset"

static const char *const mixtral_keys[] = {COMMON_KEYS, "num_local_experts", "sliding_window", "router_jitter_noise",
                                           NULL};
static const char *const qwen3_keys[] = {COMMON_KEYS,          "num_experts",       "moe_intermediate_size",
                                         "norm_topk_prob",     "decoder_sparse_step", "mlp_only_layers",
                                         "use_sliding_window", "sliding_window",    "max_window_layers",
                                         "attention_bias",     "layer_types",       NULL};
static const char *const qwen2_keys[] = {COMMON_KEYS,
                                         "num_experts",
                                         "moe_intermediate_size",
                                         "shared_expert_intermediate_size",
                                         "norm_topk_prob",
                                         "decoder_sparse_step",
                                         "mlp_only_layers",
                                         "use_sliding_window",
                                         "sliding_window",
                                         "max_window_layers",
                                         "qkv_bias",
                                         "layer_types",
                                         NULL};
static const char *const olmoe_keys[] = {COMMON_KEYS, "num_experts", "norm_topk_prob", "clip_qkv", "attention_bias",
                                         NULL};

static const model_family families[FAM_N] = {
    [FAM_MIXTRAL] = {"mixtral", "MixtralForCausalLM", "num_local_experts", "block_sparse_moe", {"w1", "w2", "w3"},
                     0.02, "llama", mixtral_keys},
    [FAM_QWEN3_MOE] = {"qwen3_moe", "Qwen3MoeForCausalLM", "num_experts", "mlp",
                       {"gate_proj", "down_proj", "up_proj"}, 0.001, "qwen3moe", qwen3_keys},
    [FAM_QWEN2_MOE] = {"qwen2_moe", "Qwen2MoeForCausalLM", "num_experts", "mlp",
                       {"gate_proj", "down_proj", "up_proj"}, 0.001, "qwen2moe", qwen2_keys},
    [FAM_OLMOE] = {"olmoe", "OlmoeForCausalLM", "num_experts", "mlp", {"gate_proj", "down_proj", "up_proj"}, 0.01,
                   "olmoe", olmoe_keys},
};

const model_family *model_family_get(int fam) { return fam >= 0 && fam < FAM_N ? &families[fam] : &families[0]; }

int model_family_parse(const char *model_type)
{
    for (int f = 0; f < FAM_N; f++)
        if (!strcmp(model_type, families[f].model_type)) return f;
    return -1;
}

const char *model_family_list(void) { return "mixtral, qwen3_moe, qwen2_moe, olmoe"; }

static int has_key(const char *const *keys, const char *key)
{
    for (; *keys; keys++)
        if (!strcmp(*keys, key)) return 1;
    return 0;
}

const char *const *model_config_all_keys(void)
{
    static const char *all[128];
    static int built;
    if (!__atomic_load_n(&built, __ATOMIC_ACQUIRE)) { /* the union, built once */
        int n = 0;
        for (int f = 0; f < FAM_N; f++)
            for (const char *const *k = families[f].keys; *k; k++) {
                int seen = 0;
                for (int i = 0; i < n && !seen; i++) seen = !strcmp(all[i], *k);
                if (!seen && n < 127) all[n++] = *k;
            }
        all[n] = NULL; /* a concurrent first call writes the same values */
        __atomic_store_n(&built, 1, __ATOMIC_RELEASE);
    }
    return all;
}

int model_family_owning_key(int fam, const char *key)
{
    if (has_key(families[fam].keys, key)) return -1;
    for (int f = 0; f < FAM_N; f++)
        if (f != fam && has_key(families[f].keys, key)) return f;
    return -1;
}
