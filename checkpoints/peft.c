/* peft: read and write PEFT LoRA adapters. */
#include "checkpoints/peft.h"
#include "common/err.h"
#include "common/fsutil.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int nonempty(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v)) return 0;
    if (cJSON_IsArray(v) || cJSON_IsObject(v)) return cJSON_GetArraySize(v) > 0;
    return 1;
}

int peft_read_config(const char *dir, lora_config *lc, char *base, size_t cap, char *err)
{
    char p[4096], *text;
    size_t len;
    memset(lc, 0, sizeof *lc);
    fs_path_join(p, sizeof p, dir, "adapter_config.json");
    if (fs_read_file(p, &text, &len, err)) return -1;
    cJSON *o = cJSON_Parse(text);
    free(text);
    int rc = -1;
    if (!cJSON_IsObject(o)) {
        err_set(err, "%s: not a JSON object", p);
        goto out;
    }
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(o, "peft_type");
    if (cJSON_IsString(pt) && strcmp(pt->valuestring, "LORA")) {
        err_set(err, "%s: peft_type '%s' is not supported (only LORA)", p, err_q(pt->valuestring, -1));
        goto out;
    }
    const char *unsupported[] = {"use_dora", "rank_pattern", "alpha_pattern", "target_parameters",
                                 "layers_to_transform", "use_qalora", "lora_bias"};
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++)
        if (nonempty(o, unsupported[i])) {
            err_set(err, "%s: '%s' is not supported by moet", p, unsupported[i]);
            goto out;
        }
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "r"), *a = cJSON_GetObjectItemCaseSensitive(o, "lora_alpha");
    if (!cJSON_IsNumber(r) || !(r->valuedouble >= 1 && r->valuedouble <= 65536) || r->valuedouble != (int)r->valuedouble ||
        !cJSON_IsNumber(a) || !isfinite(a->valuedouble)) {
        err_set(err, "%s: needs an integer r in [1, 65536] and a numeric lora_alpha", p);
        goto out;
    }
    lc->r = r->valueint;
    lc->alpha = a->valuedouble;
    lc->rslora = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "use_rslora"));
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "lora_dropout");
    lc->dropout = cJSON_IsNumber(d) ? d->valuedouble : 0;
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(o, "target_modules"), *it;
    if (cJSON_IsString(tm)) {
        err_set(err, "%s: target_modules as a regex string is not supported; list the module names", p);
        goto out;
    }
    cJSON_ArrayForEach(it, tm)
    {
        int t = cJSON_IsString(it) ? lora_target_parse(it->valuestring) : -1;
        if (t < 0) {
            err_set(err, "%s: target module '%s' is not one moet adapts (q_proj k_proj v_proj o_proj, and w1 w2 w3 or "
                         "gate_proj down_proj up_proj)", p, cJSON_IsString(it) ? err_q(it->valuestring, -1) : "?");
            goto out;
        }
        lc->targets |= 1u << t;
    }
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(o, "modules_to_save");
    cJSON_ArrayForEach(it, ms)
    {
        if (cJSON_IsString(it) && !strcmp(it->valuestring, "gate")) lc->train_router = 1;
        else {
            err_set(err, "%s: modules_to_save '%s' is not supported (only the router 'gate')", p,
                    cJSON_IsString(it) ? err_q(it->valuestring, -1) : "?");
            goto out;
        }
    }
    if (!lc->targets && !lc->train_router) {
        err_set(err, "%s: no target_modules", p);
        goto out;
    }
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, "base_model_name_or_path");
    if (base) snprintf(base, cap, "%s", cJSON_IsString(b) ? b->valuestring : "");
    rc = 0;
out:
    cJSON_Delete(o);
    return rc;
}

int peft_load_weights(lora *lo, const char *dir, char *err)
{
    char p[4096];
    fs_path_join(p, sizeof p, dir, "adapter_model.safetensors");
    st_file *f;
    if (st_open(&f, p, err)) return -1;
    int rc = -1;
    for (int i = 0; i < lo->tab.n; i++) {
        const model_tensor *t = &lo->tab.t[i];
        const st_tensor *s = st_find(f, t->name);
        if (!s) {
            err_set(err, "%s: missing tensor '%s'", p, t->name);
            goto out;
        }
        if (s->ndim != 2 || s->shape[0] != t->shape[0] || s->shape[1] != t->shape[1]) {
            err_set(err, "%s: tensor '%s' has shape [%lld,%lld], expected [%lld,%lld]", p, t->name,
                    (long long)s->shape[0], (long long)(s->ndim > 1 ? s->shape[1] : 0), (long long)t->shape[0],
                    (long long)t->shape[1]);
            goto out;
        }
        if (st_check_finite(s, err) || st_read_f32(s, lo->w + t->offset, (int64_t)t->numel, err)) {
            err_wrap(err, "%s", p);
            goto out;
        }
    }
    for (int i = 0; i < st_count(f); i++) {
        const char *name = st_at(f, i)->name;
        int known = 0;
        for (int j = 0; j < lo->tab.n && !known; j++) known = !strcmp(lo->tab.t[j].name, name);
        if (!known) {
            err_set(err, "%s: unexpected tensor '%s' (adapter_config.json does not describe it)", p, err_q(name, -1));
            goto out;
        }
    }
    rc = 0;
out:
    st_close(f);
    return rc;
}

/* v as the shortest JSON number that reads back as v exactly. cJSON prints 15 digits when
 * they come within an epsilon of v, so a lora_alpha of 1/3 came back one bit off. */
static cJSON *exact_number(double v)
{
    char b[40];
    for (int prec = 15; isfinite(v) && prec <= 17; prec++) {
        snprintf(b, sizeof b, "%.*g", prec, v);
        if (strtod(b, NULL) == v) return cJSON_CreateRaw(b);
    }
    return cJSON_CreateNumber(v);
}

char *peft_config_json(const lora_config *lc, int family, const char *base_model)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddObjectToObject(o, "alpha_pattern");
    cJSON_AddNullToObject(o, "auto_mapping");
    cJSON_AddStringToObject(o, "base_model_name_or_path", base_model ? base_model : "");
    cJSON_AddStringToObject(o, "bias", "none");
    cJSON_AddBoolToObject(o, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(o, "inference_mode", 1);
    cJSON_AddBoolToObject(o, "init_lora_weights", 1);
    cJSON_AddNullToObject(o, "layers_pattern");
    cJSON_AddNullToObject(o, "layers_to_transform");
    cJSON_AddItemToObject(o, "lora_alpha", exact_number(lc->alpha));
    cJSON_AddItemToObject(o, "lora_dropout", exact_number(lc->dropout));
    if (lc->train_router) {
        cJSON *ms = cJSON_AddArrayToObject(o, "modules_to_save");
        cJSON_AddItemToArray(ms, cJSON_CreateString("gate"));
    } else {
        cJSON_AddNullToObject(o, "modules_to_save");
    }
    cJSON_AddStringToObject(o, "peft_type", "LORA");
    cJSON_AddNumberToObject(o, "r", lc->r);
    cJSON_AddObjectToObject(o, "rank_pattern");
    cJSON_AddNullToObject(o, "revision");
    cJSON *tm = cJSON_AddArrayToObject(o, "target_modules");
    for (int t = 0; t < LORA_NT; t++)
        if (lc->targets >> t & 1) cJSON_AddItemToArray(tm, cJSON_CreateString(lora_target_name(t, family)));
    cJSON_AddStringToObject(o, "task_type", "CAUSAL_LM");
    cJSON_AddBoolToObject(o, "use_dora", 0);
    cJSON_AddBoolToObject(o, "use_rslora", lc->rslora);
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

st_out *peft_weight_list(const lora *lo, st_dtype dt)
{
    st_out *o = calloc((size_t)lo->tab.n, sizeof *o);
    for (int i = 0; o && i < lo->tab.n; i++) {
        const model_tensor *t = &lo->tab.t[i];
        o[i] = (st_out){.name = t->name, .ndim = 2, .shape = {t->shape[0], t->shape[1]}, .dtype = dt,
                        .f32 = lo->w + t->offset};
    }
    return o;
}

int peft_save(const lora *lo, const char *dir, const char *base_model, st_dtype dt, char *err)
{
    char p[4096];
    char *cfg = peft_config_json(&lo->lc, lo->family, base_model);
    fs_path_join(p, sizeof p, dir, "adapter_config.json");
    int rc = fs_write_atomic(p, cfg, strlen(cfg), err);
    free(cfg);
    if (rc) return -1;
    st_out *o = peft_weight_list(lo, dt);
    fs_path_join(p, sizeof p, dir, "adapter_model.safetensors");
    rc = st_write(p, o, lo->tab.n, NULL, err);
    free(o);
    return rc;
}
