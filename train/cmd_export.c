/* moet export: a checkpoint (or any HF model dir) to a release directory: HF weights,
 * a PEFT adapter, merged weights or GGUF, with tokenizer, model card, LICENSE and
 * SHA256SUMS; built in a temp dir and renamed into place. */
#include "checkpoints/ckpt.h"
#include "checkpoints/export.h"
#include "checkpoints/gguf.h"
#include "checkpoints/hf.h"
#include "checkpoints/peft.h"
#include "common/err.h"
#include "common/fsutil.h"
#include "train/cmd.h"
#include "train/load.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char usage[] =
    "usage: moet export CHECKPOINT OUT_DIR --format hf|peft|merged|gguf [--dtype f32|bf16|f16]\n"
    "                   [--max-shard-size 5GB] [--tokenizer tokenizer.json] [--force]\n"
    "  CHECKPOINT: a training checkpoint (RUN_DIR/checkpoints/step_N) or an HF model dir.\n"
    "  hf / merged: config.json, generation_config.json, safetensors shards + index, tokenizer,\n"
    "  README.md model card, LICENSE (Apache-2.0), SHA256SUMS. merged folds a LoRA adapter into\n"
    "  the base weights; peft writes adapter_config.json + adapter_model.safetensors; gguf writes\n"
    "  model-<dtype>.gguf for llama.cpp. OUT_DIR must not exist unless --force.\n";

typedef struct {
    model m;
    int have_model;
    lora *lo;                 /* LoRA checkpoint: the adapter, attached to m */
    char *state;              /* trainer_state.json text, or NULL */
    char tokenizer[4096];     /* "" if none found */
    char base[4096];          /* base model name for the card */
} source;

/* GGUF's writer reads fp32 tensors: a 16-bit base is widened for it (hf, peft and merged
 * write a 16-bit base tensor by tensor, without an fp32 copy of the model). */
static int load_source(source *s, const char *path, const char *tokenizer, int fp32, char *err)
{
    memset(s, 0, sizeof *s);
    if (load_any_model_as(path, fp32 ? MODEL_F32 : CKPT_BASE_AUTO, &s->m, &s->lo, &s->state, err)) return -1;
    s->have_model = 1;
    cJSON *st = s->state ? cJSON_Parse(s->state) : NULL;
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(st, "config"), "model"), "init_from");
    if (cJSON_IsString(init)) snprintf(s->base, sizeof s->base, "%s", init->valuestring);
    cJSON_Delete(st);
    return load_find_tokenizer(path, s->state, tokenizer, s->tokenizer, sizeof s->tokenizer, err);
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
    size_t max_shard = 5000000000ULL;
    int force = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--format") && i + 1 < argc) format = argv[++i];
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) dtype_s = argv[++i];
        else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) tokenizer = argv[++i];
        else if (!strcmp(argv[i], "--force")) force = 1;
        else if (!strcmp(argv[i], "--max-shard-size") && i + 1 < argc) {
            if (parse_size(argv[++i], &max_shard)) {
                fprintf(stderr, "moet export: --max-shard-size '%s' is not a size like 5GB or 500MB\n", argv[i]);
                return 2;
            }
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "moet export: unknown option '%s'\n%s", argv[i], usage);
            return 2;
        } else if (!in) in = argv[i];
        else if (!out) out = argv[i];
        else {
            fprintf(stderr, "moet export: unexpected argument '%s'\n%s", argv[i], usage);
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
        fprintf(stderr, "moet export: --dtype must be f32, bf16 or f16, not '%s'\n", dtype_s);
        return 2;
    }
    if (strcmp(format, "hf") && strcmp(format, "merged") && strcmp(format, "peft") && strcmp(format, "gguf")) {
        fprintf(stderr, "moet export: --format must be hf, peft, merged or gguf, not '%s'\n", format);
        return 2;
    }
    char err[ERR_MAX], tmp[4096], p[4096];
    source s;
    tok *t = NULL;
    int rc = 1, begun = 0;
    if (load_source(&s, in, tokenizer, !strcmp(format, "gguf"), err)) goto fail;
    int peft = !strcmp(format, "peft");
    if (peft && !s.lo) {
        err_set(err, "%s is a full model, not a LoRA checkpoint: use --format hf", in);
        goto fail;
    }
    /* hf, merged, gguf of a LoRA run: the merged model (in place on an fp32 store, else tensor
     * by tensor as it is written) */
    if (s.lo && !peft && s.m.base_dtype == MODEL_F32 && lora_merge(&s.m, err)) goto fail;
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
    if (export_begin(out, in, force, tmp, sizeof tmp, err)) goto fail;
    begun = 1;
    if (!strcmp(format, "gguf")) {
        const char *dn = dt == ST_F32 ? "f32" : dt == ST_BF16 ? "bf16" : "f16";
        char fname[64];
        snprintf(fname, sizeof fname, "model-%s.gguf", dn);
        fs_path_join(p, sizeof p, tmp, fname);
        if (gguf_write_model(p, &s.m, t, dt, s.base[0] ? s.base : in, err)) goto fail;
    } else {
        if (peft ? peft_save(s.lo, tmp, s.base[0] ? s.base : NULL, dt, err)
                 : ckpt_save_merged(&s.m, s.m.lora, tmp, dt, max_shard, err))
            goto fail;
        if (s.tokenizer[0] && export_tokenizer(tmp, s.tokenizer, s.m.c.max_pos, err)) goto fail;
    }
    size_t total, active;
    model_param_counts(&s.m.c, &total, &active);
    char summary[256];
    snprintf(summary, sizeof summary,
             "Mixtral-style MoE: %d layers, hidden %d, %d experts (top-%d), %.1f M parameters (%.1f M active per token).",
             s.m.c.n_layers, s.m.c.dim, s.m.c.n_experts, s.m.c.top_k, total / 1e6, active / 1e6);
    export_card card = {format, ckpt_dtype_torch_name(dt), s.base[0] ? s.base : NULL, s.state, in, summary};
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
    free(s.state);
    if (s.have_model) model_free(&s.m);
    lora_free(s.lo);
    return rc;
}
