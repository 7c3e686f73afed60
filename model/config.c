/* model_config: HF config.json <-> struct for every family, with the checks that keep
 * shapes consistent and refuse what moet does not implement. */
#include "model/config.h"
#include "common/err.h"
#include "model/family.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

int model_layer_is_moe(const model_config *c, int l)
{
    if (l < 0 || l >= c->n_layers || l >= MODEL_MAX_LAYERS) return 0;
    return !c->mlp_only[l] && (c->sparse_step <= 1 || (l + 1) % c->sparse_step == 0);
}

int model_layer_dense_ffn(const model_config *c, int l)
{
    return model_layer_is_moe(c, l) ? c->shared_ffn : c->dense_ffn;
}

int model_moe_layers(const model_config *c)
{
    int n = 0;
    for (int l = 0; l < c->n_layers; l++) n += model_layer_is_moe(c, l);
    return n;
}

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
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return err_set(err, "config.json: '%s' must be a number", key);
    *out = v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *o, const char *key, int def, int *out, char *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) return err_set(err, "config.json: '%s' must be true or false", key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Every key must be one the family understands; another family's key says which. */
static int check_keys(const cJSON *o, int fam, char *err)
{
    const model_family *F = model_family_get(fam);
    const cJSON *it;
    cJSON_ArrayForEach(it, o)
    {
        int known = 0;
        for (const char *const *k = F->keys; *k && !known; k++) known = !strcmp(*k, it->string);
        if (known) continue;
        int other = model_family_owning_key(fam, it->string);
        if (other >= 0)
            return err_set(err, "config.json: '%s' is a %s key, not one of model_type %s (mixed families?)",
                           err_q(it->string, -1), model_family_get(other)->model_type, F->model_type);
        return err_set(err, "config.json: unknown key '%s' for model_type %s (moet refuses keys it does not implement)",
                       err_q(it->string, -1), F->model_type);
    }
    return 0;
}

/* The family from model_type, else from architectures[0], else Mixtral (older moet
 * snapshots and hand-written test configs carry neither). */
static int read_family(const cJSON *o, int *fam, char *err)
{
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(o, "model_type");
    if (mt && !cJSON_IsNull(mt)) {
        if (!cJSON_IsString(mt)) return err_set(err, "config.json: 'model_type' must be a string");
        *fam = model_family_parse(mt->valuestring);
        if (*fam < 0)
            return err_set(err, "config.json: model_type '%s' is not supported (moet trains %s)",
                           err_q(mt->valuestring, -1), model_family_list());
        return 0;
    }
    const cJSON *ar = cJSON_GetObjectItemCaseSensitive(o, "architectures");
    const cJSON *a0 = cJSON_IsArray(ar) ? cJSON_GetArrayItem(ar, 0) : NULL;
    *fam = FAM_MIXTRAL;
    if (cJSON_IsString(a0)) {
        for (int f = 0; f < FAM_N; f++)
            if (!strcmp(a0->valuestring, model_family_get(f)->arch_class)) *fam = f;
    }
    return 0;
}

/* Values that change the maths in ways moet does not implement, refused by name. */
static int check_unsupported(const cJSON *o, int fam, char *err)
{
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(o, "hidden_act");
    if (act && !cJSON_IsNull(act) && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0))
        return err_set(err, "config.json: hidden_act '%s' is not supported (only silu)",
                       cJSON_IsString(act) ? err_q(act->valuestring, -1) : "?");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(o, "rope_scaling");
    if (rs && !cJSON_IsNull(rs)) {
        const cJSON *rt = cJSON_IsObject(rs) ? cJSON_GetObjectItemCaseSensitive(rs, "rope_type") : NULL;
        if (!rt) rt = cJSON_IsObject(rs) ? cJSON_GetObjectItemCaseSensitive(rs, "type") : NULL;
        if (!cJSON_IsString(rt) || strcmp(rt->valuestring, "default") != 0)
            return err_set(err, "config.json: rope_scaling is not supported (only default RoPE)");
    }
    /* HF applies these in training only; moet has neither, so a non-zero value would train
     * another model than the config says */
    const char *zero_only[] = {"router_jitter_noise", "attention_dropout"};
    for (int i = 0; i < 2; i++) {
        double v = 0;
        if (get_num(o, zero_only[i], 0, &v, err)) return -1;
        if (v != 0)
            return err_set(err, "config.json: %s %g is not supported (moet trains without it): set it to 0",
                           zero_only[i], v);
    }
    int sw = 0;
    if (get_bool(o, "use_sliding_window", 0, &sw, err)) return -1;
    if (sw) return err_set(err, "config.json: use_sliding_window true is not supported for %s (sliding-window layers)",
                           model_family_get(fam)->model_type);
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(o, "layer_types"), *it;
    if (lt && !cJSON_IsNull(lt)) {
        if (!cJSON_IsArray(lt)) return err_set(err, "config.json: 'layer_types' must be a list");
        cJSON_ArrayForEach(it, lt) if (!cJSON_IsString(it) || strcmp(it->valuestring, "full_attention") != 0)
            return err_set(err, "config.json: layer_types '%s' is not supported (only full_attention)",
                           cJSON_IsString(it) ? err_q(it->valuestring, -1) : "?");
    }
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "rope_parameters");
    if (rp && !cJSON_IsNull(rp)) {
        if (!cJSON_IsObject(rp)) return err_set(err, "config.json: 'rope_parameters' must be an object");
        cJSON_ArrayForEach(it, rp)
        {
            if (!strcmp(it->string, "rope_theta")) continue;
            if (!strcmp(it->string, "rope_type") && cJSON_IsString(it) && !strcmp(it->valuestring, "default"))
                continue;
            if (!strcmp(it->string, "partial_rotary_factor") && cJSON_IsNumber(it) && it->valuedouble == 1.0)
                continue;
            return err_set(err, "config.json: rope_parameters '%s' is not supported (only default RoPE)",
                           err_q(it->string, -1));   /* quoted: the key is the file's text */
        }
    }
    return 0;
}

/* Family-specific keys: expert sizes, dense layers, router and attention options. */
static int read_family_keys(const cJSON *o, model_config *c, char *err)
{
    const model_family *F = model_family_get(c->family);
    int topk_default = c->family == FAM_MIXTRAL ? 2 : c->family == FAM_QWEN2_MOE ? 4 : 8;
    int experts_default = c->family == FAM_MIXTRAL ? 8 : c->family == FAM_QWEN3_MOE ? 128
                          : c->family == FAM_QWEN2_MOE ? 60 : 64;
    int inter = 0;
    if (get_int(o, "intermediate_size", 0, 1, &inter, err) ||
        get_int(o, F->experts_key, experts_default, 0, &c->n_experts, err) ||
        get_int(o, "num_experts_per_tok", topk_default, 0, &c->top_k, err))
        return -1;
    int norm_topk = 1;
    c->sparse_step = 1;
    switch (c->family) {
    case FAM_MIXTRAL:
        c->ffn = inter;
        return get_int(o, "sliding_window", 0, 0, &c->sliding_window, err);
    case FAM_OLMOE: {
        int bias = 0;
        c->ffn = inter;
        c->qk_norm = QK_NORM_FULL;
        if (get_bool(o, "norm_topk_prob", 0, &norm_topk, err) || get_num(o, "clip_qkv", 0, &c->clip_qkv, err) ||
            get_bool(o, "attention_bias", 0, &bias, err))
            return -1;
        if (c->clip_qkv < 0) return err_set(err, "config.json: clip_qkv %g must be positive", c->clip_qkv);
        c->qkv_bias = c->o_bias = bias;
        c->topk_raw = !norm_topk;
        return 0;
    }
    default: { /* Qwen3-MoE, Qwen2-MoE */
        c->dense_ffn = inter;
        if (get_int(o, "moe_intermediate_size", 0, 1, &c->ffn, err) ||
            get_bool(o, "norm_topk_prob", 0, &norm_topk, err) ||
            get_int(o, "decoder_sparse_step", 1, 0, &c->sparse_step, err))
            return -1;
        if (c->sparse_step < 1) return err_set(err, "config.json: decoder_sparse_step %d must be >= 1", c->sparse_step);
        if (get_int(o, "max_window_layers", 0, 0, &c->max_window_layers, err)) return -1;
        const cJSON *ml = cJSON_GetObjectItemCaseSensitive(o, "mlp_only_layers"), *it;
        if (ml && !cJSON_IsNull(ml)) {
            if (!cJSON_IsArray(ml)) return err_set(err, "config.json: 'mlp_only_layers' must be a list of layer indices");
            cJSON_ArrayForEach(it, ml)
            {
                double v = cJSON_IsNumber(it) ? it->valuedouble : -1;
                if (v != floor(v) || v < 0 || v >= c->n_layers || v >= MODEL_MAX_LAYERS)
                    return err_set(err, "config.json: mlp_only_layers holds %s, not a layer index below %d",
                                   cJSON_IsNumber(it) ? "a number out of range" : "a non-number", c->n_layers);
                c->mlp_only[(int)v] = 1;
            }
        }
        if (c->family == FAM_QWEN3_MOE) {
            int bias = 0;
            c->qk_norm = QK_NORM_HEAD;
            if (get_bool(o, "attention_bias", 0, &bias, err)) return -1;
            c->qkv_bias = c->o_bias = bias;
        } else {
            if (get_bool(o, "qkv_bias", 1, &c->qkv_bias, err) ||
                get_int(o, "shared_expert_intermediate_size", 0, 1, &c->shared_ffn, err))
                return -1;
            if (c->shared_ffn < 0)
                return err_set(err, "config.json: shared_expert_intermediate_size %d must be >= 0", c->shared_ffn);
        }
        c->topk_raw = !norm_topk;
        return 0;
    }
    }
}

int model_config_from_json(model_config *c, const char *json, char *err)
{
    memset(c, 0, sizeof *c);
    cJSON *o = cJSON_Parse(json);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return err_set(err, "config.json: not a JSON object");
    }
    int rc = -1, fam = FAM_MIXTRAL;
    double eps, theta, aux, std;
    if (read_family(o, &fam, err) || check_keys(o, fam, err) || check_unsupported(o, fam, err)) goto out;
    c->family = fam;
    const model_family *F = model_family_get(fam);
    double eps_default = fam == FAM_QWEN3_MOE || fam == FAM_QWEN2_MOE ? 1e-6 : 1e-5;
    double theta_default = fam == FAM_MIXTRAL ? 1e6 : 1e4;
    if (get_int(o, "vocab_size", 0, 1, &c->vocab, err) || get_int(o, "hidden_size", 0, 1, &c->dim, err) ||
        get_int(o, "num_hidden_layers", 0, 1, &c->n_layers, err) ||
        get_int(o, "num_attention_heads", 0, 1, &c->n_heads, err) ||
        get_int(o, "num_key_value_heads", c->n_heads, 0, &c->n_kv_heads, err) ||
        get_int(o, "head_dim", c->n_heads > 0 ? c->dim / c->n_heads : 0, 0, &c->head_dim, err) ||
        get_int(o, "max_position_embeddings", fam == FAM_OLMOE ? 4096 : 32768, 0, &c->max_pos, err) ||
        get_int(o, "bos_token_id", -1, 0, &c->bos_id, err) || get_int(o, "eos_token_id", -1, 0, &c->eos_id, err) ||
        get_int(o, "pad_token_id", -1, 0, &c->pad_id, err) || get_num(o, "rms_norm_eps", eps_default, &eps, err) ||
        get_num(o, "router_aux_loss_coef", F->aux_default, &aux, err) ||
        get_num(o, "initializer_range", 0.02, &std, err) || get_bool(o, "tie_word_embeddings", 0, &c->tie_embeddings, err))
        goto out;
    if (c->n_layers > MODEL_MAX_LAYERS) {
        err_set(err, "config.json: num_hidden_layers %d is more than moet's %d", c->n_layers, MODEL_MAX_LAYERS);
        goto out;
    }
    if (read_family_keys(o, c, err)) goto out;
    /* rope_theta moved into rope_parameters in transformers 5; accept either. */
    if (get_num(o, "rope_theta", theta_default, &theta, err)) goto out;
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "rope_parameters");
    if (cJSON_IsObject(rp) && get_num(rp, "rope_theta", theta, &theta, err)) goto out;
    c->norm_eps = eps;
    c->rope_theta = theta;
    c->aux_coef = aux;
    c->init_std = std;
    if (c->sliding_window < 0) c->sliding_window = 0;
    if (c->pad_id >= c->vocab || c->pad_id < -1) c->pad_id = -1; /* nn.Embedding would refuse it; no row to freeze */

    const struct {
        const char *key;
        int v;
    } sizes[] = {{"vocab_size", c->vocab}, {"hidden_size", c->dim}, {"num_hidden_layers", c->n_layers},
                 {"num_attention_heads", c->n_heads}, {"num_key_value_heads", c->n_kv_heads},
                 {"head_dim", c->head_dim}, {fam == FAM_QWEN3_MOE || fam == FAM_QWEN2_MOE ? "moe_intermediate_size"
                                                                                        : "intermediate_size", c->ffn}};
    const char *bad = NULL;
    int badv = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes && !bad; i++)
        if (sizes[i].v < 1) bad = sizes[i].key, badv = sizes[i].v;
    if (bad)
        err_set(err, "config.json: %s is %d, must be positive", bad, badv);
    else if (c->dense_ffn < 1 && model_moe_layers(c) < c->n_layers)
        err_set(err, "config.json: intermediate_size is %d, must be positive (dense layers use it)", c->dense_ffn);
    else if (c->max_pos < 1)
        err_set(err, "config.json: max_position_embeddings is %d, must be positive", c->max_pos);
    else if (c->head_dim % 2)
        err_set(err, "config.json: head_dim %d must be even for RoPE", c->head_dim);
    else if (c->n_heads % c->n_kv_heads)
        err_set(err, "config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d", c->n_heads,
                c->n_kv_heads);
    else if (c->n_experts < 1 || c->top_k < 1 || c->top_k > c->n_experts)
        err_set(err, "config.json: need 1 <= num_experts_per_tok (%d) <= %s (%d)", c->top_k, F->experts_key,
                c->n_experts);
    else if ((long)(model_moe_layers(c) > 0 ? model_moe_layers(c) : 1) * c->n_experts > MODEL_MAX_EXPERT_MLPS)
        err_set(err, "config.json: %s %d over %d MoE layer%s makes %ld expert MLPs, more than moet's %d",
                F->experts_key, c->n_experts, model_moe_layers(c), model_moe_layers(c) == 1 ? "" : "s",
                (long)model_moe_layers(c) * c->n_experts, MODEL_MAX_EXPERT_MLPS);
    else if (!(c->norm_eps > 0) || !(c->rope_theta > 0))
        err_set(err, "config.json: rms_norm_eps and rope_theta must be positive");
    else if (fam == FAM_OLMOE && c->n_heads * c->head_dim != c->dim)
        err_set(err, "config.json: olmoe needs head_dim * num_attention_heads == hidden_size (its q_norm has "
                     "hidden_size weights), got %d * %d != %d", c->head_dim, c->n_heads, c->dim);
    else
        rc = 0;
out:
    cJSON_Delete(o);
    return rc;
}

char *model_config_to_json(const model_config *c, const char *dtype)
{
    const model_family *F = model_family_get(c->family);
    int fam = c->family, qwen = fam == FAM_QWEN3_MOE || fam == FAM_QWEN2_MOE;
    cJSON *o = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString(F->arch_class));
    if (fam == FAM_QWEN3_MOE || fam == FAM_OLMOE) cJSON_AddBoolToObject(o, "attention_bias", c->qkv_bias);
    cJSON_AddNumberToObject(o, "attention_dropout", 0.0);
    if (c->bos_id >= 0) cJSON_AddNumberToObject(o, "bos_token_id", c->bos_id);
    else cJSON_AddNullToObject(o, "bos_token_id");
    if (fam == FAM_OLMOE) {
        if (c->clip_qkv > 0) cJSON_AddNumberToObject(o, "clip_qkv", c->clip_qkv);
        else cJSON_AddNullToObject(o, "clip_qkv");
    }
    if (qwen) cJSON_AddNumberToObject(o, "decoder_sparse_step", c->sparse_step);
    cJSON_AddStringToObject(o, "dtype", dtype ? dtype : "float32");
    if (c->eos_id >= 0) cJSON_AddNumberToObject(o, "eos_token_id", c->eos_id);
    else cJSON_AddNullToObject(o, "eos_token_id");
    /* Qwen2MoeConfig has no head_dim (attention falls back to hidden/heads): written only when
     * it differs; OLMoE's attention always uses hidden/heads */
    if (fam == FAM_MIXTRAL || fam == FAM_QWEN3_MOE || (fam == FAM_QWEN2_MOE && c->head_dim * c->n_heads != c->dim))
        cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    cJSON_AddNumberToObject(o, "hidden_size", c->dim);
    cJSON_AddNumberToObject(o, "initializer_range", c->init_std);
    cJSON_AddNumberToObject(o, "intermediate_size", qwen ? c->dense_ffn : c->ffn);
    if (fam == FAM_QWEN2_MOE) {
        cJSON *lt = cJSON_AddArrayToObject(o, "layer_types");
        for (int l = 0; l < c->n_layers; l++) cJSON_AddItemToArray(lt, cJSON_CreateString("full_attention"));
    }
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_pos);
    if (fam == FAM_QWEN2_MOE || (fam == FAM_QWEN3_MOE && c->max_window_layers > 0))
        cJSON_AddNumberToObject(o, "max_window_layers", c->max_window_layers > 0 ? c->max_window_layers : 28);
    if (qwen) {
        cJSON *ml = cJSON_AddArrayToObject(o, "mlp_only_layers");
        for (int l = 0; l < c->n_layers; l++)
            if (c->mlp_only[l]) cJSON_AddItemToArray(ml, cJSON_CreateNumber(l));
        cJSON_AddNumberToObject(o, "moe_intermediate_size", c->ffn);
    }
    cJSON_AddStringToObject(o, "model_type", F->model_type);
    if (fam != FAM_MIXTRAL) cJSON_AddBoolToObject(o, "norm_topk_prob", !c->topk_raw);
    cJSON_AddNumberToObject(o, "num_attention_heads", c->n_heads);
    if (fam != FAM_MIXTRAL) cJSON_AddNumberToObject(o, "num_experts", c->n_experts);
    cJSON_AddNumberToObject(o, "num_experts_per_tok", c->top_k);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->n_kv_heads);
    if (fam == FAM_MIXTRAL) cJSON_AddNumberToObject(o, "num_local_experts", c->n_experts);
    cJSON_AddBoolToObject(o, "output_router_logits", 1);
    if (c->pad_id >= 0) cJSON_AddNumberToObject(o, "pad_token_id", c->pad_id);
    else cJSON_AddNullToObject(o, "pad_token_id");
    if (fam == FAM_QWEN2_MOE) cJSON_AddBoolToObject(o, "qkv_bias", c->qkv_bias);
    cJSON_AddNumberToObject(o, "rms_norm_eps", c->norm_eps);
    cJSON *rp = cJSON_AddObjectToObject(o, "rope_parameters");
    cJSON_AddNumberToObject(rp, "rope_theta", c->rope_theta);
    cJSON_AddStringToObject(rp, "rope_type", "default");
    cJSON_AddNumberToObject(o, "rope_theta", c->rope_theta);
    cJSON_AddNumberToObject(o, "router_aux_loss_coef", c->aux_coef);
    if (fam == FAM_MIXTRAL) cJSON_AddNumberToObject(o, "router_jitter_noise", 0.0);
    if (fam == FAM_QWEN2_MOE) cJSON_AddNumberToObject(o, "shared_expert_intermediate_size", c->shared_ffn);
    /* without a window: null (MixtralConfig, Qwen3MoeConfig), 0 (Qwen2MoeConfig sets it so) */
    if (fam == FAM_QWEN2_MOE && c->sliding_window <= 0) cJSON_AddNumberToObject(o, "sliding_window", 0);
    else if (fam == FAM_MIXTRAL || qwen) {
        if (c->sliding_window > 0) cJSON_AddNumberToObject(o, "sliding_window", c->sliding_window);
        else cJSON_AddNullToObject(o, "sliding_window");
    }
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_embeddings);
    cJSON_AddStringToObject(o, "transformers_version", "5.17.0");
    cJSON_AddBoolToObject(o, "use_cache", 1);
    if (qwen) cJSON_AddBoolToObject(o, "use_sliding_window", 0);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab);
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}
