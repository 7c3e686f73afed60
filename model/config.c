/* model_config: HF config.json <-> struct, with the checks that keep shapes consistent. */
#include "model/config.h"
#include "common/err.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* Integer field: absent or null -> def; present but not a whole number -> error. */
static int get_int(const cJSON *o, const char *key, int def, int required, int *out, char *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return err_set(err, "config.json: missing required key '%s'", key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 2e9)
        return err_set(err, "config.json: '%s' must be an integer", key);
    *out = (int)v->valuedouble;
    return 0;
}

static int get_num(const cJSON *o, const char *key, double def, double *out, char *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v)) return err_set(err, "config.json: '%s' must be a number", key);
    *out = v->valuedouble;
    return 0;
}

int model_config_from_json(model_config *c, const char *json, char *err)
{
    memset(c, 0, sizeof *c);
    cJSON *o = cJSON_Parse(json);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return err_set(err, "config.json: not a JSON object");
    }
    int rc = -1;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(o, "model_type");
    if (cJSON_IsString(mt) && strcmp(mt->valuestring, "mixtral") != 0) {
        err_set(err, "config.json: model_type '%s' is not supported (moet trains Mixtral-family MoE models)",
                mt->valuestring);
        goto out;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(o, "hidden_act");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "silu") != 0) {
        err_set(err, "config.json: hidden_act '%s' is not supported (only silu)", act->valuestring);
        goto out;
    }
    double eps, theta, aux, std;
    if (get_int(o, "vocab_size", 0, 1, &c->vocab, err) || get_int(o, "hidden_size", 0, 1, &c->dim, err) ||
        get_int(o, "intermediate_size", 0, 1, &c->ffn, err) ||
        get_int(o, "num_hidden_layers", 0, 1, &c->n_layers, err) ||
        get_int(o, "num_attention_heads", 0, 1, &c->n_heads, err) ||
        get_int(o, "num_key_value_heads", c->n_heads, 0, &c->n_kv_heads, err) ||
        get_int(o, "head_dim", c->n_heads > 0 ? c->dim / c->n_heads : 0, 0, &c->head_dim, err) ||
        get_int(o, "num_local_experts", 8, 0, &c->n_experts, err) ||
        get_int(o, "num_experts_per_tok", 2, 0, &c->top_k, err) ||
        get_int(o, "sliding_window", 0, 0, &c->sliding_window, err) ||
        get_int(o, "max_position_embeddings", 32768, 0, &c->max_pos, err) ||
        get_int(o, "bos_token_id", -1, 0, &c->bos_id, err) || get_int(o, "eos_token_id", -1, 0, &c->eos_id, err) ||
        get_num(o, "rms_norm_eps", 1e-5, &eps, err) || get_num(o, "router_aux_loss_coef", 0.02, &aux, err) ||
        get_num(o, "initializer_range", 0.02, &std, err))
        goto out;
    /* rope_theta moved into rope_parameters in transformers 5; accept either. */
    if (get_num(o, "rope_theta", 1e6, &theta, err)) goto out;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(o, "rope_scaling");
    if (rs && !cJSON_IsNull(rs)) {
        err_set(err, "config.json: rope_scaling is not supported (only default RoPE)");
        goto out;
    }
    /* HF applies these in training only; moet has neither, so a non-zero value would train
     * another model than the config says */
    const char *zero_only[] = {"router_jitter_noise", "attention_dropout"};
    for (int i = 0; i < 2; i++) {
        double v;
        if (get_num(o, zero_only[i], 0, &v, err)) goto out;
        if (v != 0) {
            err_set(err, "config.json: %s %g is not supported (moet trains without it): set it to 0", zero_only[i], v);
            goto out;
        }
    }
    const cJSON *tie_v = cJSON_GetObjectItemCaseSensitive(o, "tie_word_embeddings");
    if (tie_v && !cJSON_IsNull(tie_v) && !cJSON_IsBool(tie_v)) {
        err_set(err, "config.json: 'tie_word_embeddings' must be true or false");
        goto out;
    }
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "rope_parameters");
    if (cJSON_IsObject(rp)) {
        const cJSON *rt = cJSON_GetObjectItemCaseSensitive(rp, "rope_type");
        if (cJSON_IsString(rt) && strcmp(rt->valuestring, "default") != 0) {
            err_set(err, "config.json: rope_type '%s' is not supported (only default RoPE)", rt->valuestring);
            goto out;
        }
        if (get_num(rp, "rope_theta", theta, &theta, err)) goto out;
    }
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(o, "tie_word_embeddings");
    c->tie_embeddings = cJSON_IsTrue(tie);
    c->norm_eps = eps;
    c->rope_theta = theta;
    c->aux_coef = aux;
    c->init_std = std;
    if (c->sliding_window < 0) c->sliding_window = 0;

    const struct {
        const char *key;
        int v;
    } sizes[] = {{"vocab_size", c->vocab}, {"hidden_size", c->dim}, {"intermediate_size", c->ffn},
                 {"num_hidden_layers", c->n_layers}, {"num_attention_heads", c->n_heads},
                 {"num_key_value_heads", c->n_kv_heads}, {"head_dim", c->head_dim}};
    const char *bad = NULL;
    int badv = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes && !bad; i++)
        if (sizes[i].v < 1) bad = sizes[i].key, badv = sizes[i].v;
    if (bad)
        err_set(err, "config.json: %s is %d, must be positive", bad, badv);
    else if (c->max_pos < 1)
        err_set(err, "config.json: max_position_embeddings is %d, must be positive", c->max_pos);
    else if (c->head_dim % 2)
        err_set(err, "config.json: head_dim %d must be even for RoPE", c->head_dim);
    else if (c->n_heads % c->n_kv_heads)
        err_set(err, "config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d", c->n_heads,
                c->n_kv_heads);
    else if (c->n_experts < 1 || c->top_k < 1 || c->top_k > c->n_experts)
        err_set(err, "config.json: need 1 <= num_experts_per_tok (%d) <= num_local_experts (%d)", c->top_k,
                c->n_experts);
    else if (!(c->norm_eps > 0) || !(c->rope_theta > 0))
        err_set(err, "config.json: rms_norm_eps and rope_theta must be positive");
    else
        rc = 0;
out:
    cJSON_Delete(o);
    return rc;
}

char *model_config_to_json(const model_config *c, const char *dtype)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("MixtralForCausalLM"));
    cJSON_AddNumberToObject(o, "attention_dropout", 0.0);
    if (c->bos_id >= 0) cJSON_AddNumberToObject(o, "bos_token_id", c->bos_id);
    else cJSON_AddNullToObject(o, "bos_token_id");
    cJSON_AddStringToObject(o, "dtype", dtype ? dtype : "float32");
    if (c->eos_id >= 0) cJSON_AddNumberToObject(o, "eos_token_id", c->eos_id);
    else cJSON_AddNullToObject(o, "eos_token_id");
    cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    cJSON_AddNumberToObject(o, "hidden_size", c->dim);
    cJSON_AddNumberToObject(o, "initializer_range", c->init_std);
    cJSON_AddNumberToObject(o, "intermediate_size", c->ffn);
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_pos);
    cJSON_AddStringToObject(o, "model_type", "mixtral");
    cJSON_AddNumberToObject(o, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(o, "num_experts_per_tok", c->top_k);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(o, "num_local_experts", c->n_experts);
    cJSON_AddBoolToObject(o, "output_router_logits", 1);
    cJSON_AddNullToObject(o, "pad_token_id");
    cJSON_AddNumberToObject(o, "rms_norm_eps", c->norm_eps);
    cJSON *rp = cJSON_AddObjectToObject(o, "rope_parameters");
    cJSON_AddNumberToObject(rp, "rope_theta", c->rope_theta);
    cJSON_AddStringToObject(rp, "rope_type", "default");
    cJSON_AddNumberToObject(o, "rope_theta", c->rope_theta);
    cJSON_AddNumberToObject(o, "router_aux_loss_coef", c->aux_coef);
    cJSON_AddNumberToObject(o, "router_jitter_noise", 0.0);
    if (c->sliding_window > 0) cJSON_AddNumberToObject(o, "sliding_window", c->sliding_window);
    else cJSON_AddNullToObject(o, "sliding_window");
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_embeddings);
    cJSON_AddStringToObject(o, "transformers_version", "5.17.0");
    cJSON_AddBoolToObject(o, "use_cache", 1);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab);
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}
