/* moet export: a checkpoint (or any HF model dir) to a release directory: HF weights,
 * a PEFT adapter, merged weights or GGUF, with tokenizer, model card, LICENSE and
 * SHA256SUMS; built in a temp dir and renamed into place. */
#include "checkpoints/ckpt.h"
#include "checkpoints/export.h"
#include "checkpoints/gguf.h"
#include "checkpoints/hf.h"
#include "checkpoints/peft.h"
#include "model/family.h"
#include "common/err.h"
#include "data/chat.h"
#include "common/fsutil.h"
#include "train/cmd.h"
#include "train/load.h"

#include <cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char usage[] =
    "usage: moet export CHECKPOINT OUT_DIR --format hf|peft|merged|gguf [--dtype f32|bf16|f16]\n"
    "                   [--max-shard-size 5GB] [--tokenizer tokenizer.json] [--force]\n"
    "                   [--name NAME] [--base-model HUB_ID] [--base DIR] [--chat-template mistral|chatml]\n"
    "  CHECKPOINT: a training checkpoint (RUN_DIR/checkpoints/step_N), an HF model dir, or a PEFT\n"
    "  adapter dir (on --base DIR, else its base_model_name_or_path).\n"
    "  --name: the release's name (model card title, GGUF general.name); default the run's name.\n"
    "  --base-model: the Hub id of the base model for the card, PEFT's base_model_name_or_path\n"
    "  and GGUF general.basename; default the base config.json's _name_or_path when it is a Hub id\n"
    "  (never a local path).\n"
    "  hf / merged: config.json, generation_config.json, safetensors shards + index, tokenizer,\n"
    "  README.md model card, LICENSE (Apache-2.0), SHA256SUMS. merged folds a LoRA adapter into\n"
    "  the base weights; peft writes adapter_config.json + adapter_model.safetensors; gguf writes\n"
    "  model-<dtype>.gguf for llama.cpp. OUT_DIR must not exist unless --force.\n"
    "  The chat template (tokenizer_config.json chat_template, GGUF tokenizer.chat_template) is\n"
    "  --chat-template, else the one the run's shards were prepped with (trainer_state.json), else\n"
    "  the source's own chat_template when it has one, else the tokenizer's family's (chatml when it\n"
    "  has <|im_start|>, else mistral).\n";

typedef struct {
    model m;
    int have_model;
    lora *lo;                 /* LoRA checkpoint: the adapter, attached to m */
    char *state;              /* trainer_state.json text, or NULL */
    char tokenizer[4096];     /* "" if none found */
    char base[4096];          /* the base model's Hub id (card, PEFT, GGUF), "" if none */
    char name[256];           /* the release's name */
} source;

/* "org/name" as the Hub spells a repository id (and not a path that exists here). */
static int is_hub_id(const char *s)
{
    const char *slash = strchr(s, '/');
    if (!slash || slash == s || !slash[1] || strchr(slash + 1, '/') || s[0] == '.' || fs_exists(s)) return 0;
    for (const char *p = s; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.' || *p == '/')) return 0;
    return 1;
}

/* The base's Hub id: given, else _name_or_path of the base dir's config.json if a Hub id. */
static void base_hub_id(const char *base_dir, const char *given, char *out, size_t cap)
{
    char p[4096], *text, e[ERR_MAX];
    size_t len;
    out[0] = 0;
    if (given) {
        snprintf(out, cap, "%s", given);
        return;
    }
    if (!base_dir[0] || fs_path_join(p, sizeof p, base_dir, "config.json") || fs_read_file(p, &text, &len, e)) return;
    cJSON *o = cJSON_Parse(text);
    free(text);
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, "_name_or_path");
    if (cJSON_IsString(n) && is_hub_id(n->valuestring)) snprintf(out, cap, "%s", n->valuestring);
    cJSON_Delete(o);
}

/* A 16-bit base stays as stored (mapped): every format writes it tensor by tensor, row block
 * by row block, adding a LoRA checkpoint's adapters on the way, without an fp32 copy. */
static int load_source(source *s, const char *path, const char *tokenizer, const char *base_dir,
                       const char *name, const char *hub_id, char *err)
{
    memset(s, 0, sizeof *s);
    if (load_any_model_ex(path, CKPT_BASE_AUTO, base_dir, &s->m, &s->lo, &s->state, err))
        return -1;
    s->have_model = 1;
    char bdir[4096];
    load_base_dir(path, s->state, base_dir, bdir, sizeof bdir);
    base_hub_id(bdir, hub_id, s->base, sizeof s->base);
    cJSON *st = s->state ? cJSON_Parse(s->state) : NULL;
    const cJSON *rn = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(st, "config"), "run"), "name");
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    fs_trim_slashes(tmp);
    const char *slash = strrchr(tmp, '/');
    if (name) snprintf(s->name, sizeof s->name, "%s", name);
    else if (cJSON_IsString(rn)) snprintf(s->name, sizeof s->name, "%.255s", rn->valuestring);
    else snprintf(s->name, sizeof s->name, "%.255s", slash ? slash + 1 : tmp);
    cJSON_Delete(st);
    return load_find_tokenizer(path, s->state, tokenizer, s->tokenizer, sizeof s->tokenizer, err);
}

/* The chat template to write: given, else the run's (trainer_state.json), else none (NULL:
 * the source tokenizer_config.json's own chat_template stays) when the source has one, else
 * the tokenizer's family's. */
static int chat_jinja(const source *s, const tok *t, const chat_template *given, char **out, char *err)
{
    chat_template tpl = chat_template_default(t);
    *out = NULL;
    if (given) tpl = *given;
    else {
        cJSON *st = s->state ? cJSON_Parse(s->state) : NULL;
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(st, "chat_template");
        int recorded = cJSON_IsString(ct) && chat_template_parse(ct->valuestring, &tpl, NULL) == 0;
        cJSON_Delete(st);
        if (!recorded && (*out = load_tokenizer_chat_template(s->tokenizer)))
            return 0; /* the source's own template stays; the GGUF gets it too */
    }
    return chat_template_jinja(t, tpl, out, err);
}

static int parse_size(const char *s, size_t *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || !(v > 0) || v > 1e15) return -1; /* NaN, inf and absurd sizes too */
    double mul = 1;
    if (!strcasecmp(end, "KB")) mul = 1e3;
    else if (!strcasecmp(end, "MB")) mul = 1e6;
    else if (!strcasecmp(end, "GB")) mul = 1e9;
    else if (!strcasecmp(end, "KiB")) mul = 1024.0;
    else if (!strcasecmp(end, "MiB")) mul = 1048576.0;
    else if (!strcasecmp(end, "GiB")) mul = 1073741824.0;
    else if (*end) return -1;
    if (v * mul < 1 || v * mul > 1e15) return -1;
    *out = (size_t)(v * mul);
    return 0;
}

int cmd_export(int argc, char **argv)
{
    if (cmd_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    const char *in = NULL, *out = NULL, *format = NULL, *dtype_s = "f32", *tokenizer = NULL;
    const char *name = NULL, *hub_id = NULL, *base_dir = NULL, *chat = NULL;
    size_t max_shard = 5000000000ULL;
    int force = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--format") && i + 1 < argc) format = argv[++i];
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) dtype_s = argv[++i];
        else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) tokenizer = argv[++i];
        else if (!strcmp(argv[i], "--force")) force = 1;
        else if (!strcmp(argv[i], "--name") && i + 1 < argc) name = argv[++i];
        else if (!strcmp(argv[i], "--base-model") && i + 1 < argc) hub_id = argv[++i];
        else if (!strcmp(argv[i], "--base") && i + 1 < argc) base_dir = argv[++i];
        else if (!strcmp(argv[i], "--chat-template") && i + 1 < argc) chat = argv[++i];
        else if (!strcmp(argv[i], "--max-shard-size") && i + 1 < argc) {
            if (parse_size(argv[++i], &max_shard)) {
                fprintf(stderr, "moet export: --max-shard-size '%s' is not a size like 5GB or 500MB\n", err_q(argv[i], -1));
                return 2;
            }
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "moet export: unknown option '%s'\n%s", err_q(argv[i], -1), usage);
            return 2;
        } else if (!in) in = argv[i];
        else if (!out) out = argv[i];
        else {
            fprintf(stderr, "moet export: unexpected argument '%s'\n%s", err_q(argv[i], -1), usage);
            return 2;
        }
    }
    if (!in || !out || !format) {
        fputs(usage, stderr);
        return 2;
    }
    char outbuf[4096]; /* OUT_DIR/ is OUT_DIR: the temp dir and the rename go next to it */
    snprintf(outbuf, sizeof outbuf, "%s", out);
    fs_trim_slashes(outbuf);
    out = outbuf;
    st_dtype dt;
    if (!strcmp(dtype_s, "f32")) dt = ST_F32;
    else if (!strcmp(dtype_s, "bf16")) dt = ST_BF16;
    else if (!strcmp(dtype_s, "f16")) dt = ST_F16;
    else {
        fprintf(stderr, "moet export: --dtype must be f32, bf16 or f16, not '%s'\n", err_q(dtype_s, -1));
        return 2;
    }
    if (strcmp(format, "hf") && strcmp(format, "merged") && strcmp(format, "peft") && strcmp(format, "gguf")) {
        fprintf(stderr, "moet export: --format must be hf, peft, merged or gguf, not '%s'\n", err_q(format, -1));
        return 2;
    }
    char err[ERR_MAX], tmp[4096], p[4096], *jinja = NULL;
    chat_template tpl;
    if (chat && chat_template_parse(chat, &tpl, err)) {
        fprintf(stderr, "moet export: --chat-template: %s\n", err);
        return 2;
    }
    source s;
    tok *t = NULL;
    int rc = 1, begun = 0;
    if (hub_id && !is_hub_id(hub_id)) {
        fprintf(stderr, "moet export: --base-model '%s' is not a Hub id like org/name (a release names its base by "
                        "its public id, never a local path)\n", hub_id);
        return 2;
    }
    if (load_source(&s, in, tokenizer, base_dir, name, hub_id, err)) goto fail;
    int peft = !strcmp(format, "peft");
    if (peft && !s.lo) {
        err_set(err, "%s is a full model, not a LoRA checkpoint: use --format hf", in);
        goto fail;
    }
    /* hf, merged, gguf of a LoRA run: the merged model (in place on an fp32 store, else tensor
     * by tensor as it is written) */
    if (s.lo && !peft && s.m.base_dtype == MODEL_F32 && lora_merge(&s.m, err)) goto fail;
    if (!strcmp(format, "gguf") && gguf_check_model(&s.m.c, err)) { /* before anything is written */
        err_wrap(err, "%s", in);
        goto fail;
    }
    if (!strcmp(format, "gguf") && !s.tokenizer[0]) {
        err_set(err, "no tokenizer.json found for %s (GGUF embeds the tokenizer): pass --tokenizer", in);
        goto fail;
    }
    if (s.tokenizer[0] && tok_load(&t, s.tokenizer, err)) goto fail;
    if (t && tok_vocab_size(t) > s.m.c.vocab) {
        err_set(err, "tokenizer %s has %d tokens, more than the model's vocab_size %d", s.tokenizer,
                tok_vocab_size(t), s.m.c.vocab);
        goto fail;
    }
    if (t && chat_jinja(&s, t, chat ? &tpl : NULL, &jinja, err)) goto fail;
    if (export_begin(out, in, force, tmp, sizeof tmp, err)) goto fail;
    begun = 1;
    if (!strcmp(format, "gguf")) {
        const char *dn = dt == ST_F32 ? "f32" : dt == ST_BF16 ? "bf16" : "f16";
        char fname[64];
        snprintf(fname, sizeof fname, "model-%s.gguf", dn);
        fs_path_join(p, sizeof p, tmp, fname);
        if (gguf_write_model_ex(p, &s.m, t, dt, s.name, jinja, err)) goto fail;
    } else {
        if (peft ? peft_save(s.lo, tmp, s.base[0] ? s.base : NULL, dt, err)
                 : ckpt_save_merged(&s.m, s.m.lora, tmp, dt, max_shard, err))
            goto fail;
        if (s.tokenizer[0] && export_tokenizer(tmp, s.tokenizer, s.m.c.max_pos, t, jinja, err)) goto fail;
    }
    size_t total, active;
    model_param_counts(&s.m.c, &total, &active);
    char summary[256];
    snprintf(summary, sizeof summary,
             "%s: %d layers, hidden %d, %d experts (top-%d), %.1f M parameters (%.1f M active per token).",
             model_family_get(s.m.c.family)->arch_class, s.m.c.n_layers, s.m.c.dim, s.m.c.n_experts, s.m.c.top_k, total / 1e6, active / 1e6);
    export_card card = {format, ckpt_dtype_torch_name(dt), s.base[0] ? s.base : NULL, s.state, s.name, summary};
    if (export_card_write(tmp, &card, err) || export_sums(tmp, err) || export_commit(tmp, out, force, err)) goto fail;
    begun = 0;
    printf("exported %s -> %s (%s, %s)%s\n", in, out, format, dtype_s, s.tokenizer[0] ? "" : " [no tokenizer found]");
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "moet export: %s\n", err);
    if (begun) fs_rm_rf(tmp, NULL);
done:
    tok_free(t);
    free(jinja);
    free(s.state);
    if (s.have_model) model_free(&s.m);
    lora_free(s.lo);
    return rc;
}
