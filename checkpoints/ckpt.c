/* ckpt: atomic, verified training checkpoints and their rotation. */
#include "checkpoints/ckpt.h"
#include "common/err.h"
#include "common/fsutil.h"
#include "common/sha256.h"
#include "data/chat.h"

#include <cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Parse "step_%08d" (exactly, no suffix); -1 otherwise. */
static long step_of(const char *name)
{
    if (strncmp(name, "step_", 5)) return -1;
    char *end;
    long s = strtol(name + 5, &end, 10);
    return (*end || end == name + 5 || s < 0) ? -1 : s;
}

/* Sorted (descending) list of step numbers of step_* dirs in root; also removes temp
 * dirs (step_*.tmp-*) left by interrupted saves. */
static int list_steps(const char *root, long **steps, int *n, char *err)
{
    *steps = NULL;
    *n = 0;
    DIR *d = opendir(root);
    if (!d) return 0; /* no checkpoints yet */
    struct dirent *e;
    int cap = 0;
    while ((e = readdir(d))) {
        if (!strncmp(e->d_name, "step_", 5) && strstr(e->d_name, ".tmp-")) {
            char p[4096];
            fs_path_join(p, sizeof p, root, e->d_name);
            fs_rm_rf(p, NULL);
            continue;
        }
        long s = step_of(e->d_name);
        if (s < 0) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            *steps = realloc(*steps, (size_t)cap * sizeof **steps);
        }
        (*steps)[(*n)++] = s;
    }
    closedir(d);
    for (int i = 1; i < *n; i++) /* insertion sort, descending */
        for (int j = i; j > 0 && (*steps)[j] > (*steps)[j - 1]; j--) {
            long t = (*steps)[j];
            (*steps)[j] = (*steps)[j - 1];
            (*steps)[j - 1] = t;
        }
    return 0;
}

int ckpt_save(const char *root, int step, const ckpt_file *files, int n, const char *state_json, int keep,
              char *path_out, char *err)
{
    char final[4096], tmp[4096], name[32], p[4096];
    snprintf(name, sizeof name, "step_%08d", step);
    if (fs_mkdir_p(root, err)) return -1;
    fs_path_join(final, sizeof final, root, name);
    if (fs_exists(final) && fs_rm_rf(final, err)) return -1; /* a re-save of the same step */
    if (fs_dir_begin(final, tmp, sizeof tmp, err)) return -1;
    cJSON *state = cJSON_Parse(state_json);
    cJSON *sums = cJSON_CreateObject();
    int rc = -1;
    if (!state) {
        err_set(err, "internal: trainer state is not JSON");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        fs_path_join(p, sizeof p, tmp, files[i].name);
        if (files[i].tensors ? st_write(p, files[i].tensors, files[i].n, NULL, err)
                             : fs_write_atomic(p, files[i].text, strlen(files[i].text), err))
            goto out;
        char hex[65];
        if (sha256_file(p, hex, err)) goto out;
        cJSON_AddStringToObject(sums, files[i].name, hex);
    }
    cJSON_AddItemToObject(state, "files", sums);
    sums = NULL;
    char *text = cJSON_Print(state);
    fs_path_join(p, sizeof p, tmp, "trainer_state.json");
    int w = fs_write_atomic(p, text, strlen(text), err);
    free(text);
    if (w || fs_dir_commit(tmp, final, err)) goto out;
    snprintf(path_out, 4096, "%s", final);
    rc = 0;
    if (keep > 0) { /* rotation: only after the new one is safely in place */
        long *steps;
        int ns;
        list_steps(root, &steps, &ns, NULL);
        for (int i = keep; i < ns; i++) {
            snprintf(name, sizeof name, "step_%08ld", steps[i]);
            fs_path_join(p, sizeof p, root, name);
            fs_rm_rf(p, NULL);
        }
        free(steps);
    }
out:
    if (rc) {
        err_wrap(err, "saving checkpoint %s", final);
        fs_rm_rf(tmp, NULL);
    }
    cJSON_Delete(state);
    cJSON_Delete(sums);
    return rc;
}

int ckpt_is_checkpoint(const char *dir)
{
    char p[4096];
    fs_path_join(p, sizeof p, dir, "trainer_state.json");
    return fs_exists(p);
}

/* A "files" key names a file inside the checkpoint itself (moet writes plain ASCII names):
 * no path, no control bytes, not the state file. */
static int plain_name(const char *s)
{
    for (const char *c = s; *c; c++)
        if (*c < 0x20 || *c > 0x7e || *c == '/') return 0;
    return s[0] && strcmp(s, ".") && strcmp(s, "..") && strcmp(s, "trainer_state.json");
}

int ckpt_read_state(const char *dir, char **state_json, char *err)
{
    char sp[4096], p[4096];
    char *text;
    size_t len;
    *state_json = NULL;
    fs_path_join(sp, sizeof sp, dir, "trainer_state.json");
    if (fs_read_file(sp, &text, &len, err)) return -1;
    cJSON *s = cJSON_Parse(text);
    const cJSON *files = s ? cJSON_GetObjectItemCaseSensitive(s, "files") : NULL;
    int rc = -1;
    if (!cJSON_IsObject(files)) {
        err_set(err, "%s: not a valid trainer_state.json (%s)", sp, s ? "no \"files\" object" : "not JSON");
        goto out;
    }
    const cJSON *f;
    cJSON_ArrayForEach(f, files)
    {
        char hex[65] = "";
        if (!plain_name(f->string) || !cJSON_IsString(f)) {
            err_set(err, "%s: \"files\" entry '%s' is not a file name of the checkpoint with a sha256 string", sp,
                    err_q(f->string, -1));
            goto out;
        }
        if (fs_path_join(p, sizeof p, dir, f->string)) {
            err_set(err, "%s: path of '%s' is too long", sp, err_q(f->string, -1));
            goto out;
        }
        if (sha256_file(p, hex, err)) goto out; /* "P: cannot open: ..." */
        if (strcmp(hex, f->valuestring)) {
            err_set(err, "%s: sha256 does not match trainer_state.json (damaged checkpoint)", p);
            goto out;
        }
    }
    *state_json = text;
    text = NULL;
    rc = 0;
out:
    cJSON_Delete(s);
    free(text);
    return rc;
}

/* An exact integer in [0, max] (max < 2^53), or -1. */
static long long json_count(const cJSON *v, double max)
{
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= max) || v->valuedouble != floor(v->valuedouble))
        return -1;
    return (long long)v->valuedouble;
}

int ckpt_state_parse(const char *json, ckpt_state *st, char *err)
{
    memset(st, 0, sizeof *st);
    cJSON *o = cJSON_Parse(json);
    const char *bad = NULL;
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "data"), *r = cJSON_GetObjectItemCaseSensitive(o, "rng");
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(o, "tokens_seen"), *kind = cJSON_GetObjectItemCaseSensitive(o, "kind");
    const cJSON *el = cJSON_GetObjectItemCaseSensitive(o, "elapsed_s"), *ct = cJSON_GetObjectItemCaseSensitive(o, "chat_template");
    chat_template tpl;
    long long step = json_count(cJSON_GetObjectItemCaseSensitive(o, "step"), 1e9);
    st->epoch = json_count(cJSON_GetObjectItemCaseSensitive(d, "epoch"), 9007199254740991.0);
    st->index = json_count(cJSON_GetObjectItemCaseSensitive(d, "index"), 9007199254740991.0);
    st->tokens_seen = tok ? json_count(tok, 9007199254740991.0) : 0;
    if (!cJSON_IsObject(o)) bad = "not a JSON object";
    else if (step < 0) bad = "step is not an integer in [0, 1e9]";
    else if (st->epoch < 0 || st->index < 0) bad = "data.epoch / data.index are not integers >= 0";
    else if (st->tokens_seen < 0) bad = "tokens_seen is not an integer >= 0";
    else if (el && !(cJSON_IsNumber(el) && isfinite(el->valuedouble) && el->valuedouble >= 0))
        bad = "elapsed_s is not a number >= 0";
    else if (ct && !(cJSON_IsString(ct) && chat_template_parse(ct->valuestring, &tpl, NULL) == 0))
        bad = "chat_template is not mistral or chatml";
    else if (!cJSON_IsArray(r) || cJSON_GetArraySize(r) != 4) bad = "rng is not a list of 4 states";
    for (int i = 0; !bad && i < 4; i++) {
        const cJSON *h = cJSON_GetArrayItem(r, i);
        const char *x = cJSON_IsString(h) ? h->valuestring : "";
        if (strlen(x) != 16 || strspn(x, "0123456789abcdefABCDEF") != 16) bad = "rng holds a value that is not 16 hex digits";
        else st->rng[i] = strtoull(x, NULL, 16);
    }
    if (!bad && !(st->rng[0] | st->rng[1] | st->rng[2] | st->rng[3])) bad = "rng is all zero";
    st->step = (int)step;
    st->lora = cJSON_IsString(kind) && !strcmp(kind->valuestring, "lora");
    if (!bad && el) st->elapsed_s = el->valuedouble;
    if (!bad && ct) snprintf(st->chat_template, sizeof st->chat_template, "%s", ct->valuestring);
    cJSON_Delete(o);
    return bad ? err_set(err, "step, data position or rng missing or out of range: %s", bad) : 0;
}

int ckpt_find_latest(const char *root, char *path_out, size_t cap, int *skipped, char *err)
{
    long *steps;
    int n;
    path_out[0] = 0;
    if (skipped) *skipped = 0;
    if (list_steps(root, &steps, &n, err)) return -1;
    for (int i = 0; i < n; i++) {
        char name[32], p[4096], e2[ERR_MAX];
        char *state;
        snprintf(name, sizeof name, "step_%08ld", steps[i]);
        fs_path_join(p, sizeof p, root, name);
        if (ckpt_read_state(p, &state, e2) == 0) {
            free(state);
            snprintf(path_out, cap, "%s", p);
            break;
        }
        if (skipped) (*skipped)++;
    }
    free(steps);
    return 0;
}
