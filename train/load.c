/* load: HF dirs, full checkpoints and LoRA checkpoints, opened the same way. */
#include "train/load.h"
#include "checkpoints/ckpt.h"
#include "checkpoints/hf.h"
#include "checkpoints/peft.h"
#include "common/err.h"
#include "common/fsutil.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* config.json of init_from with model.arch keys laid over it (arch wins). */
int load_run_config(const cfg *c, model_config *mc, char *err)
{
    cJSON *base = NULL;
    if (c->model.init_from) {
        char p[4096], *text;
        size_t len;
        fs_path_join(p, sizeof p, c->model.init_from, "config.json");
        if (!fs_is_dir(c->model.init_from))
            return err_set(err, "model.init_from '%s': not a model directory", c->model.init_from);
        if (fs_read_file(p, &text, &len, err)) return err_wrap(err, "model.init_from");
        base = cJSON_Parse(text);
        free(text);
        if (!base) return err_set(err, "%s: not valid JSON", p);
    } else {
        base = cJSON_CreateObject();
    }
    if (c->model.arch_json) {
        cJSON *arch = cJSON_Parse(c->model.arch_json), *it;
        cJSON_ArrayForEach(it, arch)
        {
            cJSON_DeleteItemFromObjectCaseSensitive(base, it->string);
            cJSON_AddItemToObject(base, it->string, cJSON_Duplicate(it, 1));
        }
        cJSON_Delete(arch);
    }
    char *s = cJSON_PrintUnformatted(base);
    cJSON_Delete(base);
    int rc = model_config_from_json(mc, s, err);
    free(s);
    if (rc && c->model.init_from) return err_wrap(err, "model (%s with model.arch over it)", c->model.init_from);
    return rc ? err_wrap(err, "model.arch") : 0;
}

int load_run_base(const cfg *c, model *m, int with_grads, char *err)
{
    model_config mc;
    if (load_run_config(c, &mc, err) || model_create(m, &mc, with_grads, err)) return -1;
    if (!c->model.init_from) {
        model_init_random(m, c->run.seed);
        return 0;
    }
    if (ckpt_load_weights(m, c->model.init_from, err)) {
        model_free(m);
        return -1;
    }
    return 0;
}

int load_any_model(const char *path, model *m, lora **lo, char **state, char *err)
{
    char *st = NULL;
    *lo = NULL;
    if (state) *state = NULL;
    if (!fs_is_dir(path)) return err_set(err, "%s: not a model directory or checkpoint", path);
    if (ckpt_is_checkpoint(path) && ckpt_read_state(path, &st, err)) return -1;
    cJSON *js = st ? cJSON_Parse(st) : NULL;
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(js, "kind");
    int rc = -1;
    if (!(cJSON_IsString(kind) && !strcmp(kind->valuestring, "lora"))) {
        rc = ckpt_load_model(m, path, 0, err);
        goto out;
    }
    /* LoRA checkpoint: rebuild the run's base, then the adapter on top */
    cfg c;
    char *cj = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(js, "config"));
    int crc = cfg_from_json(&c, cj, err);
    free(cj);
    if (crc) {
        err_wrap(err, "%s/trainer_state.json: config", path);
        goto out;
    }
    lora_config lc;
    if (load_run_base(&c, m, 0, err)) {
        cfg_free(&c);
        goto out;
    }
    cfg_free(&c);
    if (peft_read_config(path, &lc, NULL, 0, err) || lora_create(lo, m, &lc, 0, err) || peft_load_weights(*lo, path, err)) {
        lora_free(*lo);
        *lo = NULL;
        model_free(m);
        goto out;
    }
    lora_attach(m, *lo);
    rc = 0;
out:
    cJSON_Delete(js);
    if (rc == 0 && state) *state = st;
    else free(st);
    return rc;
}

int load_find_tokenizer(const char *path, const char *state_json, const char *given, char *out, size_t cap,
                        char *err)
{
    char cand[3][4096] = {"", "", ""};
    out[0] = 0;
    if (given) {
        if (!fs_exists(given)) return err_set(err, "tokenizer %s (from --tokenizer) does not exist", given);
        snprintf(out, cap, "%s", given);
        return 0;
    }
    cJSON *st = state_json ? cJSON_Parse(state_json) : NULL;
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(st, "config");
    const cJSON *tk = cJSON_GetObjectItemCaseSensitive(cfg, "tokenizer");
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(cfg, "model"), "init_from");
    if (cJSON_IsString(tk)) snprintf(cand[0], sizeof cand[0], "%s", tk->valuestring);
    if (cJSON_IsString(init)) fs_path_join(cand[1], sizeof cand[1], init->valuestring, "tokenizer.json");
    cJSON_Delete(st);
    fs_path_join(cand[2], sizeof cand[2], path, "tokenizer.json");
    for (int i = 0; i < 3; i++)
        if (cand[i][0] && fs_exists(cand[i])) {
            snprintf(out, cap, "%s", cand[i]);
            break;
        }
    return 0;
}
