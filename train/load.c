/* load: HF dirs, full checkpoints and LoRA checkpoints, opened the same way. */
#include "train/load.h"
#include "checkpoints/ckpt.h"
#include "checkpoints/hf.h"
#include "checkpoints/peft.h"
#include "common/err.h"
#include "common/fsutil.h"

#include <cJSON.h>
#include <limits.h>
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
            return err_set(err, "model.init_from '%s': not a model directory", err_q(c->model.init_from, -1));
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

/* MODEL_* the base's big matrices are kept in: fp32 for a trained model, else as
 * model.base_dtype says (auto: the files' own 16-bit dtype; a random base is fp32). */
static int base_store(const cfg *c, int with_grads, int *dtype, char *err)
{
    static const int of_cfg[] = {[CFG_BASE_F32] = MODEL_F32, [CFG_BASE_BF16] = MODEL_BF16, [CFG_BASE_F16] = MODEL_F16};
    *dtype = MODEL_F32;
    if (with_grads) return 0;
    if (c->model.base_dtype != CFG_BASE_AUTO) {
        *dtype = of_cfg[c->model.base_dtype];
        return 0;
    }
    if (c->model.init_from && ckpt_disk_dtype(c->model.init_from, dtype, err))
        return err_wrap(err, "model.init_from");
    return 0;
}

int load_run_base(const cfg *c, model *m, int with_grads, char *err)
{
    model_config mc;
    int dtype;
    if (load_run_config(c, &mc, err) || base_store(c, with_grads, &dtype, err)) return -1;
    if (dtype == MODEL_F32 ? model_create(m, &mc, with_grads, err) : model_create_low(m, &mc, dtype, err)) return -1;
    if (!c->model.init_from) {
        if (dtype != MODEL_F32 && model_alloc_low(m, err)) {
            model_free(m);
            return -1;
        }
        model_init_random(m, c->run.seed);
        return 0;
    }
    if (ckpt_load_weights(m, c->model.init_from, err)) {
        model_free(m);
        return -1;
    }
    return 0;
}

/* The run's config as a checkpoint's trainer_state.json (parsed: state) records it. */
static int state_config(const cJSON *state, const char *dir, cfg *c, char *err)
{
    char *cj = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(state, "config"));
    if (!cj) return err_set(err, "%s/trainer_state.json: no config", dir);
    int rc = cfg_from_json(c, cj, err);
    free(cj);
    return rc ? err_wrap(err, "%s/trainer_state.json: config", dir) : 0;
}

/* A path from a checkpoint's config, opened from wherever a command runs now: absolute as is;
 * relative against the directory the run was started in (trainer_state.json "cwd"; a
 * checkpoint of an earlier build: where the run dir sits, minus run.dir as typed), and only
 * then against the working directory. */
static void resolve_run_path(const cJSON *state, const char *ckpt_dir, const char *p, char *out, size_t cap)
{
    snprintf(out, cap, "%s", p);
    if (!p[0] || p[0] == '/') return;
    char base[PATH_MAX] = "", cand[PATH_MAX], abs_ck[PATH_MAX];
    const cJSON *cwd = cJSON_GetObjectItemCaseSensitive(state, "cwd");
    if (cJSON_IsString(cwd)) snprintf(base, sizeof base, "%s", cwd->valuestring);
    else if (ckpt_dir && realpath(ckpt_dir, abs_ck)) { /* RUN_DIR/checkpoints/step_N */
        const cJSON *rd = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(state, "config"), "run"), "dir");
        char run[PATH_MAX], typed[PATH_MAX];
        snprintf(run, sizeof run, "%s", abs_ck);
        for (int up = 0; up < 2; up++) {
            char *slash = strrchr(run, '/');
            if (slash) *slash = 0;
        }
        if (cJSON_IsString(rd) && rd->valuestring[0] != '/') {
            snprintf(typed, sizeof typed, "%s", rd->valuestring);
            fs_trim_slashes(typed);
            size_t lr = strlen(run), lt = strlen(typed);
            if (lt < lr && run[lr - lt - 1] == '/' && !strcmp(run + lr - lt, typed)) {
                run[lr - lt - 1] = 0;
                snprintf(base, sizeof base, "%s", run);
            }
        }
    }
    if (base[0] && fs_path_join(cand, sizeof cand, base, p) == 0 && fs_exists(cand)) snprintf(out, cap, "%s", cand);
}

/* The base model dir of a PEFT adapter dir: --base, else its base_model_name_or_path as a
 * directory beside the adapter (PEFT writes paths relative to it) or from here. */
static int adapter_base(const char *dir, const char *given, char *out, size_t cap, char *err)
{
    lora_config lc;
    char named[4096], cand[PATH_MAX];
    if (given) {
        if (!fs_is_dir(given)) return err_set(err, "--base %s: no such model directory", given);
        snprintf(out, cap, "%s", given);
        return 0;
    }
    if (peft_read_config(dir, &lc, named, sizeof named, err)) return -1;
    if (named[0]) {
        if (named[0] != '/' && fs_path_join(cand, sizeof cand, dir, named) == 0 && fs_is_dir(cand)) {
            snprintf(out, cap, "%s", cand);
            return 0;
        }
        if (fs_is_dir(named)) {
            snprintf(out, cap, "%s", named);
            return 0;
        }
        return err_set(err, "%s is a PEFT adapter whose base_model_name_or_path '%s' is not a model directory here: "
                            "pass --base DIR (the base model's HF directory)", dir, err_q(named, -1));
    }
    return err_set(err, "%s is a PEFT adapter that names no base model: pass --base DIR (the base model's HF directory)",
                   dir);
}

static int is_adapter_dir(const char *dir)
{
    char p[4096];
    return fs_path_join(p, sizeof p, dir, "adapter_config.json") == 0 && fs_exists(p) && !ckpt_is_checkpoint(dir);
}

int load_base_dir(const char *path, const char *state_json, const char *given, char *out, size_t cap)
{
    char e[ERR_MAX];
    out[0] = 0;
    if (is_adapter_dir(path)) {
        if (adapter_base(path, given, out, cap, e)) out[0] = 0;
        return 0;
    }
    if (given) {
        snprintf(out, cap, "%s", given);
        return 0;
    }
    cJSON *st = state_json ? cJSON_Parse(state_json) : NULL;
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(st, "config"), "model"), "init_from");
    if (cJSON_IsString(init)) resolve_run_path(st, path, init->valuestring, out, cap);
    else if (!st) snprintf(out, cap, "%s", path); /* an HF dir is its own base */
    cJSON_Delete(st);
    return 0;
}

int load_any_model(const char *path, model *m, lora **lo, char **state, char *err)
{
    return load_any_model_ex(path, CKPT_BASE_AUTO, NULL, m, lo, state, err);
}

int load_any_model_as(const char *path, int base_dtype, model *m, lora **lo, char **state, char *err)
{
    return load_any_model_ex(path, base_dtype, NULL, m, lo, state, err);
}

int load_any_model_ex(const char *path, int base_dtype, const char *base, model *m, lora **lo, char **state,
                      char *err)
{
    char *st = NULL;
    *lo = NULL;
    if (state) *state = NULL;
    if (!fs_exists(path)) return err_set(err, "%s: no such file or directory", path);
    if (!fs_is_dir(path)) return err_set(err, "%s: not a model directory or checkpoint", path);
    if (is_adapter_dir(path)) { /* a PEFT adapter (moet's peft export, or PEFT's own) on its base */
        char bdir[PATH_MAX];
        lora_config lc;
        if (adapter_base(path, base, bdir, sizeof bdir, err) ||
            ckpt_load_model_as(m, bdir, 0, base_dtype, err))
            return -1;
        if (peft_read_config(path, &lc, NULL, 0, err) || lora_create(lo, m, &lc, 0, err) ||
            peft_load_weights(*lo, path, err)) {
            lora_free(*lo);
            *lo = NULL;
            model_free(m);
            return -1;
        }
        lora_attach(m, *lo);
        return 0;
    }
    if (ckpt_is_checkpoint(path) && ckpt_read_state(path, &st, err)) return -1;
    cJSON *js = st ? cJSON_Parse(st) : NULL;
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(js, "kind");
    int rc = -1;
    if (!(cJSON_IsString(kind) && !strcmp(kind->valuestring, "lora"))) {
        rc = ckpt_load_model_as(m, path, 0, base_dtype, err);
        goto out;
    }
    /* LoRA checkpoint: rebuild the run's base (its path as the run saw it), then the adapter */
    cfg c;
    if (state_config(js, path, &c, err)) goto out;
    if (base_dtype == MODEL_F32) c.model.base_dtype = CFG_BASE_F32;
    if (base) {
        free(c.model.init_from);
        c.model.init_from = strdup(base);
    } else if (c.model.init_from) {
        char abs[PATH_MAX];
        resolve_run_path(js, path, c.model.init_from, abs, sizeof abs);
        free(c.model.init_from);
        c.model.init_from = strdup(abs);
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

static int same_str(const char *a, const char *b) { return (!a && !b) || (a && b && !strcmp(a, b)); }

static int same_list(char **a, int na, char **b, int nb)
{
    if (na != nb) return 0;
    for (int i = 0; i < na; i++)
        if (strcmp(a[i], b[i])) return 0;
    return 1;
}

/* The same network: shapes, routing, RoPE, norm (not loss weights, ids or init) */
static int same_model(const model_config *a, const model_config *b)
{
    return a->vocab == b->vocab && a->dim == b->dim && a->ffn == b->ffn && a->n_layers == b->n_layers &&
           a->n_heads == b->n_heads && a->n_kv_heads == b->n_kv_heads && a->head_dim == b->head_dim &&
           a->n_experts == b->n_experts && a->top_k == b->top_k && a->norm_eps == b->norm_eps &&
           a->rope_theta == b->rope_theta && a->tie_embeddings == b->tie_embeddings &&
           a->sliding_window == b->sliding_window && a->family == b->family && a->dense_ffn == b->dense_ffn &&
           a->shared_ffn == b->shared_ffn && a->topk_raw == b->topk_raw && a->qk_norm == b->qk_norm &&
           a->qkv_bias == b->qkv_bias && a->o_bias == b->o_bias && a->clip_qkv == b->clip_qkv &&
           a->sparse_step == b->sparse_step && !memcmp(a->mlp_only, b->mlp_only, sizeof a->mlp_only);
}

int load_lora_config(const cfg *c, lora_config *lc, char *err)
{
    memset(lc, 0, sizeof *lc);
    lc->r = c->lora.r;
    lc->alpha = c->lora.alpha;
    lc->rslora = c->lora.rslora;
    lc->dropout = c->lora.dropout;
    lc->train_router = c->lora.train_router;
    for (int i = 0; i < c->lora.n_targets; i++) {
        int t = lora_target_parse(c->lora.targets[i]);
        if (t < 0) return err_set(err, "lora.targets: unknown target '%s'", err_q(c->lora.targets[i], -1));
        lc->targets |= 1u << t;
    }
    return 0;
}

/* A resumed run must be the same run: the model, the data and its order, and the batch come
 * from the checkpoint's config (trainer_state.json); the optimizer, max_steps, eval and
 * logging may change. Names the first key that differs. */
int load_check_resume(const cfg *now, const char *dir, char *err)
{
    char *text;
    if (ckpt_read_state(dir, &text, err)) return -1;
    cJSON *st = cJSON_Parse(text);
    free(text);
    cfg was;
    int rc = state_config(st, dir, &was, err);
    cJSON_Delete(st);
    if (rc) return -1;
    /* The model as resolved (init_from's config.json with model.arch over it), so the same
     * network written differently resumes. A full run's weights come from the checkpoint, whose
     * config.json is the truth, and its init_from may since have moved or gone. A LoRA run's
     * base comes from init_from: a different base there (same shapes, other weights) is another
     * run, unless the old one is gone (moved). */
    model_config mnow, mwas;
    char e2[ERR_MAX], a[PATH_MAX], b[PATH_MAX];
    int have_was = !was.lora.enabled && ckpt_read_config(dir, &mwas, e2) == 0;
    if (!have_was) have_was = load_run_config(&was, &mwas, e2) == 0;
    int same_source = same_str(now->model.init_from, was.model.init_from) &&
                      same_str(now->model.arch_json, was.model.arch_json);
    int have_now = load_run_config(now, &mnow, e2) == 0;
    if (!have_now && !(same_source && !was.lora.enabled)) { /* a full run may resume with its base gone */
        cfg_free(&was);
        return err_set(err, "%s", e2);
    }
    const char *key = NULL;
    if (have_now && have_was && !same_model(&mnow, &mwas)) key = "model (model.init_from / model.arch)";
    else if (was.lora.enabled && !same_str(now->model.init_from, was.model.init_from) &&
             (!was.model.init_from || !now->model.init_from || /* a random base vs a given one */
              (realpath(was.model.init_from, a) && !(realpath(now->model.init_from, b) && !strcmp(a, b)))))
        key = "model.init_from (the LoRA base)";
    else if (!same_list(now->data.train, now->data.n_train, was.data.train, was.data.n_train)) key = "data.train";
    else if (now->data.seq_len != was.data.seq_len) key = "data.seq_len";
    else if (now->data.shuffle != was.data.shuffle) key = "data.shuffle";
    else if (now->data.document_mask != was.data.document_mask) key = "data.document_mask";
    else if (now->train.batch_size != was.train.batch_size) key = "train.batch_size";
    else if (now->train.grad_accum != was.train.grad_accum) key = "train.grad_accum";
    else if (now->run.seed != was.run.seed) key = "run.seed";
    else if (now->lora.enabled != was.lora.enabled) key = "lora.enabled";
    else if (now->model.base_dtype != was.model.base_dtype) key = "model.base_dtype";
    else if (now->lora.enabled) { /* the same adapter: shape, scale and what it trains */
        lora_config ln, lw;
        if (load_lora_config(now, &ln, e2) || load_lora_config(&was, &lw, e2) || ln.r != lw.r || ln.alpha != lw.alpha ||
            ln.rslora != lw.rslora || ln.train_router != lw.train_router || ln.targets != lw.targets)
            key = "lora (r, alpha, rslora, targets, train_router)";
        else if (ln.dropout != lw.dropout)
            key = "lora.dropout";
    }
    cfg_free(&was);
    if (key)
        return err_set(err, "train.resume: %s was trained with another %s than this config: a resumed run keeps its "
                            "model, data and batch (only optim, max_steps, eval, save and log settings may change); "
                            "use the original value or another run.dir",
                       dir, key);
    return 0;
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
    char abs[PATH_MAX];
    if (cJSON_IsString(tk)) resolve_run_path(st, path, tk->valuestring, cand[0], sizeof cand[0]);
    if (cJSON_IsString(init)) {
        resolve_run_path(st, path, init->valuestring, abs, sizeof abs);
        fs_path_join(cand[1], sizeof cand[1], abs, "tokenizer.json");
    }
    cJSON_Delete(st);
    fs_path_join(cand[2], sizeof cand[2], path, "tokenizer.json");
    for (int i = 0; i < 3; i++)
        if (cand[i][0] && fs_exists(cand[i])) {
            snprintf(out, cap, "%s", cand[i]);
            break;
        }
    return 0;
}

char *load_tokenizer_chat_template(const char *tok_path)
{
    char dir[4096], p[4096], *text, e[ERR_MAX];
    size_t len;
    fs_parent_dir(tok_path, dir, sizeof dir);
    fs_path_join(p, sizeof p, dir, "tokenizer_config.json");
    if (!fs_exists(p) || fs_read_file(p, &text, &len, e)) return NULL;
    cJSON *c = cJSON_ParseWithLength(text, len);
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(c, "chat_template");
    char *out = cJSON_IsString(j) ? strdup(j->valuestring) : NULL;
    cJSON_Delete(c);
    free(text);
    return out;
}
