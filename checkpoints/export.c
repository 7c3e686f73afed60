/* export: model card, license, checksums and the atomic swap of an export directory. */
#include "checkpoints/export.h"
#include "common/err.h"
#include "common/fsutil.h"
#include "common/sha256.h"
#include "data/tok.h"

#include <cJSON.h>
#include <dirent.h>
#include <glob.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <unistd.h>

static int copy_file(const char *src, const char *dst, char *err)
{
    char *buf;
    size_t len;
    if (fs_read_file(src, &buf, &len, err)) return -1;
    int rc = fs_write_atomic(dst, buf, len, err);
    free(buf);
    return rc;
}

/* tokenizer_config.json: the source's with chat_template set, or a minimal one. */
static int tokenizer_config(const char *src, const char *dst, int model_max_length, const tok *t,
                            const char *chat_template, char *err)
{
    cJSON *c = NULL;
    if (fs_exists(src)) {
        char *text;
        size_t len;
        if (fs_read_file(src, &text, &len, err)) return -1;
        c = cJSON_ParseWithLength(text, len);
        free(text);
        if (!cJSON_IsObject(c)) {
            cJSON_Delete(c);
            return err_set(err, "%s is not a JSON object", src);
        }
    } else {
        int bos = t ? tok_bos_id(t) : 1, eos = t ? tok_eos_id(t) : 2, unk = t ? tok_unk_id(t) : 0;
        const char *bp = t && bos >= 0 ? tok_piece(t, bos) : "<s>", *ep = t && eos >= 0 ? tok_piece(t, eos) : "</s>";
        c = cJSON_CreateObject();
        cJSON_AddBoolToObject(c, "add_bos_token", bos >= 0);
        cJSON_AddBoolToObject(c, "add_eos_token", 0);
        if (bos >= 0) cJSON_AddStringToObject(c, "bos_token", bp);
        else cJSON_AddNullToObject(c, "bos_token");
        if (eos >= 0) cJSON_AddStringToObject(c, "eos_token", ep);
        if (unk >= 0) cJSON_AddStringToObject(c, "unk_token", t ? tok_piece(t, unk) : "<unk>");
        cJSON_AddNumberToObject(c, "model_max_length", model_max_length);
        cJSON_AddStringToObject(c, "tokenizer_class",
                                t && tok_is_bytelevel(t) ? "PreTrainedTokenizerFast" : "LlamaTokenizerFast");
    }
    if (chat_template) {
        cJSON_DeleteItemFromObjectCaseSensitive(c, "chat_template");
        cJSON_AddStringToObject(c, "chat_template", chat_template);
    }
    char *out = cJSON_Print(c);
    cJSON_Delete(c);
    if (!out) return err_set(err, "out of memory");
    size_t n = strlen(out);
    out[n] = '\n'; /* cJSON_Print leaves no newline; its buffer has the NUL's byte */
    int rc = fs_write_atomic(dst, out, n + 1, err);
    free(out);
    return rc;
}

int export_tokenizer(const char *dir, const char *tokenizer_json, int model_max_length, const tok *t,
                     const char *chat_template, char *err)
{
    char dst[4096], src[4096], srcdir[4096];
    fs_path_join(dst, sizeof dst, dir, "tokenizer.json");
    if (copy_file(tokenizer_json, dst, err)) return err_wrap(err, "tokenizer");
    snprintf(srcdir, sizeof srcdir, "%s", tokenizer_json);
    char *slash = strrchr(srcdir, '/');
    if (slash) *slash = 0;
    else snprintf(srcdir, sizeof srcdir, ".");
    fs_path_join(src, sizeof src, srcdir, "tokenizer_config.json");
    fs_path_join(dst, sizeof dst, dir, "tokenizer_config.json");
    if (tokenizer_config(src, dst, model_max_length, t, chat_template, err)) return -1;
    fs_path_join(src, sizeof src, srcdir, "special_tokens_map.json");
    fs_path_join(dst, sizeof dst, dir, "special_tokens_map.json");
    return fs_exists(src) ? copy_file(src, dst, err) : 0;
}

static const cJSON *path_get(const cJSON *o, const char *a, const char *b)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
    return b ? cJSON_GetObjectItemCaseSensitive(x, b) : x;
}

/* Training data section of the card: every shard with its sha256. */
static void card_data(FILE *f, const cJSON *list)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, list)
    {
        if (!cJSON_IsString(it)) continue;
        glob_t g;
        if (glob(it->valuestring, 0, NULL, &g) == 0) {
            for (size_t i = 0; i < g.gl_pathc; i++) {
                char hex[65] = "(unreadable)";
                sha256_file(g.gl_pathv[i], hex, NULL);
                fprintf(f, "| `%s` | `%s` |\n", g.gl_pathv[i], hex);
            }
            globfree(&g);
        } else {
            fprintf(f, "| `%s` | (not found at export time) |\n", it->valuestring);
        }
    }
}

int export_card_write(const char *dir, const export_card *c, char *err)
{
    char *text = NULL, p[4096];
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cJSON *st = c->state_json ? cJSON_Parse(c->state_json) : NULL;
    const cJSON *cfg = path_get(st, "config", NULL);
    int lora = !strcmp(c->format, "peft");
    fprintf(f, "---\nlicense: apache-2.0\n");
    if (c->base_model) fprintf(f, "base_model: %s\n", c->base_model);
    fprintf(f, "library_name: %s\n", lora ? "peft" : "transformers");
    fprintf(f, "pipeline_tag: text-generation\ntags:\n- moet\n- mixtral\n- moe\n");
    if (lora) fprintf(f, "- lora\n");
    if (!strcmp(c->format, "gguf")) fprintf(f, "- gguf\n");
    fprintf(f, "---\n\n# %s\n\n", c->source);
    fprintf(f, "Exported by moet as `%s` (%s). %s\n\n", c->format, c->dtype,
             c->model_summary ? c->model_summary : "");
    if (st) {
        const cJSON *step = path_get(st, "step", NULL), *tok = path_get(st, "tokens_seen", NULL);
        const cJSON *loss = path_get(st, "last", "loss"), *vl = path_get(st, "last", "val_loss");
        fprintf(f, "## Training\n\n");
        fprintf(f, "| | |\n|---|---|\n");
        if (cJSON_IsNumber(step)) fprintf(f, "| optimizer steps | %d |\n", step->valueint);
        if (cJSON_IsNumber(tok)) fprintf(f, "| tokens seen | %.0f |\n", tok->valuedouble);
        if (cJSON_IsNumber(loss)) fprintf(f, "| final train loss | %.4f |\n", loss->valuedouble);
        if (cJSON_IsNumber(vl)) fprintf(f, "| final val loss | %.4f (ppl %.2f) |\n", vl->valuedouble, exp(vl->valuedouble));
        const cJSON *lr = path_get(cfg, "optim", "lr"), *bs = path_get(cfg, "train", "batch_size");
        const cJSON *sl = path_get(cfg, "data", "seq_len");
        if (cJSON_IsNumber(lr)) fprintf(f, "| peak learning rate | %g |\n", lr->valuedouble);
        if (cJSON_IsNumber(bs) && cJSON_IsNumber(sl))
            fprintf(f, "| batch | %d x %d tokens |\n", bs->valueint, sl->valueint);
        const cJSON *le = path_get(cfg, "lora", "enabled");
        if (cJSON_IsTrue(le)) {
            const cJSON *r = path_get(cfg, "lora", "r"), *al = path_get(cfg, "lora", "alpha");
            fprintf(f, "| LoRA | r %d, alpha %g |\n", cJSON_IsNumber(r) ? r->valueint : 0,
                    cJSON_IsNumber(al) ? al->valuedouble : 0);
        }
        fprintf(f, "\n### Data\n\n| shard | sha256 |\n|---|---|\n");
        card_data(f, path_get(cfg, "data", "train"));
        fprintf(f, "\n### Config\n\n```json\n");
        char *cj = cfg ? cJSON_Print(cfg) : NULL;
        fprintf(f, "%s\n```\n\n", cj ? cj : "{}");
        free(cj);
    } else {
        fprintf(f, "Converted from a Hugging Face model directory without training.\n\n");
    }
    fprintf(f, "## License\n\nApache-2.0 (see LICENSE). Check that the base model's license allows this release.\n");
    fclose(f);
    cJSON_Delete(st);
    fs_path_join(p, sizeof p, dir, "README.md");
    int rc = fs_write_atomic(p, text, len, err);
    free(text);
    if (rc) return -1;
    fs_path_join(p, sizeof p, dir, "LICENSE");
    return fs_write_atomic(p, export_apache2_text, strlen(export_apache2_text), err);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int export_sums(const char *dir, char *err)
{
    DIR *d = opendir(dir);
    if (!d) return err_set(err, "%s: cannot list", dir);
    char *names[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096)
        if (e->d_name[0] != '.' && strcmp(e->d_name, "SHA256SUMS")) names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    char *text = NULL, p[4096];
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        char hex[65];
        fs_path_join(p, sizeof p, dir, names[i]);
        if (!rc && fs_is_dir(p)) continue;
        if (!rc && sha256_file(p, hex, err)) rc = -1;
        if (!rc) fprintf(f, "%s  %s\n", hex, names[i]);
        free(names[i]);
    }
    fclose(f);
    fs_path_join(p, sizeof p, dir, "SHA256SUMS");
    if (!rc) rc = fs_write_atomic(p, text, len, err);
    free(text);
    return rc;
}

/* 1 when directory `outer` is `inner` or holds it (both resolved; inner must exist) */
static int dir_holds(const char *outer, const char *inner)
{
    char a[PATH_MAX], b[PATH_MAX];
    if (!realpath(outer, a) || !realpath(inner, b)) return 0;
    size_t n = strlen(a);
    return !strncmp(a, b, n) && (b[n] == 0 || b[n] == '/' || (n == 1 && a[0] == '/'));
}

/* What killed exports left next to out: OUT.tmp-PID (an unfinished export) is removed;
 * OUT.old-PID (the previous export, moved aside by --force) is put back when out is missing
 * (killed mid-swap) and removed otherwise. */
static void clean_stale(const char *out)
{
    char parent[PATH_MAX], prefix[300], p[PATH_MAX + 300];
    fs_parent_dir(out, parent, sizeof parent);
    const char *base = strrchr(out, '/') ? strrchr(out, '/') + 1 : out;
    if (snprintf(prefix, sizeof prefix, "%s.tmp-", base) >= (int)sizeof prefix) return;
    fs_remove_stale(parent, prefix);
    snprintf(prefix, sizeof prefix, "%s.old-", base);
    DIR *d = opendir(parent);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (!fs_stale_pid_name(e->d_name, prefix) || fs_path_join(p, sizeof p, parent, e->d_name)) continue;
        if (fs_exists(out)) fs_rm_rf(p, NULL);
        else rename(p, out); /* if that fails too, the old export stays where it is */
    }
    if (d) closedir(d);
}

int export_begin(const char *out, const char *src, int force, char *tmp, size_t cap, char *err)
{
    clean_stale(out);
    if (fs_exists(out)) {
        if (dir_holds(out, src))
            return err_set(err, "%s is or holds the source %s: export somewhere else", out, src);
        if (!force) return err_set(err, "%s already exists (use --force to replace it)", out);
        char sums[4200];
        fs_path_join(sums, sizeof sums, out, "SHA256SUMS");
        if (!fs_is_dir(out) || !fs_exists(sums))
            return err_set(err, "%s exists and is not a moet export (no SHA256SUMS): --force replaces only an earlier "
                                "export",
                           out);
    }
    return fs_dir_begin(out, tmp, cap, err);
}

int export_commit(const char *tmp, const char *out, int force, char *err)
{
    char old[4200];
    if (force && fs_exists(out)) { /* move the old one aside first: never a moment with neither */
        snprintf(old, sizeof old, "%s.old-%d", out, (int)getpid());
        if (rename(out, old)) return err_set(err, "%s: cannot move the old export aside", out);
        if (fs_dir_commit(tmp, out, err)) {
            rename(old, out);
            return -1;
        }
        return fs_rm_rf(old, err);
    }
    return fs_dir_commit(tmp, out, err);
}
