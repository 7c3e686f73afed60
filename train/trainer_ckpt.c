/* trainer_ckpt: the trainer's checkpoints: what goes into one, and a resume from one. */
#include "train/trainer_int.h"
#include "checkpoints/ckpt.h"
#include "checkpoints/hf.h"
#include "checkpoints/peft.h"
#include "common/err.h"
#include "common/fsutil.h"

#include <cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* mom, vel: the whole buffer's AdamW moments (under ZeRO-1 gathered from the ranks' shards) */
static st_out *moment_list(const trainer *tr, const float *mom, const float *vel, char (**names)[160])
{
    int n = tr->tv.n;
    st_out *o = calloc(2 * (size_t)n, sizeof *o);
    *names = calloc(2 * (size_t)n, 160);
    for (int i = 0; i < 2 * n; i++) {
        const model_tensor *t = &tr->tv.t[i % n];
        snprintf((*names)[i], 160, "%s.%s", i < n ? "exp_avg" : "exp_avg_sq", t->name);
        o[i].name = (*names)[i];
        o[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) o[i].shape[d] = t->shape[d];
        o[i].dtype = ST_F32;
        o[i].f32 = (i < n ? mom : vel) + t->offset;
    }
    return o;
}

static int write_checkpoint(trainer *tr, const float *mom, const float *vel, char *err)
{
    const cfg *c = tr->c;
    char *cfg_json = cfg_to_json(c), rng_hex[4][24];
    loader_pos pos = loader_cursor(tr->train);
    cJSON *st = cJSON_CreateObject();
    cJSON_AddStringToObject(st, "format", "moet-trainer-state-1");
    cJSON_AddNumberToObject(st, "step", tr->step);
    cJSON_AddStringToObject(st, "kind", tr->lo ? "lora" : "full");
    cJSON *d = cJSON_AddObjectToObject(st, "data");
    cJSON_AddNumberToObject(d, "epoch", (double)pos.epoch);
    cJSON_AddNumberToObject(d, "index", (double)pos.index);
    cJSON *r = cJSON_AddArrayToObject(st, "rng");
    for (int i = 0; i < 4; i++) {
        snprintf(rng_hex[i], sizeof rng_hex[i], "%016llx", (unsigned long long)tr->rng.s[i]);
        cJSON_AddItemToArray(r, cJSON_CreateString(rng_hex[i]));
    }
    cJSON_AddNumberToObject(st, "tokens_seen", (double)tr->tokens_seen);
    cJSON_AddNumberToObject(st, "elapsed_s", round(trainer_elapsed(tr) * 1e3) / 1e3); /* over resumes */
    if (tr->chat_template[0]) cJSON_AddStringToObject(st, "chat_template", tr->chat_template);
    char cwd[PATH_MAX], base_abs[PATH_MAX]; /* the config's relative paths are relative to this */
    if (getcwd(cwd, sizeof cwd)) cJSON_AddStringToObject(st, "cwd", cwd);
    cJSON *last = cJSON_AddObjectToObject(st, "last");
    if (isfinite(tr->last_loss)) cJSON_AddNumberToObject(last, "loss", tr->last_loss);
    if (isfinite(tr->last_val_loss)) cJSON_AddNumberToObject(last, "val_loss", tr->last_val_loss);
    cJSON_AddItemToObject(st, "config", cJSON_Parse(cfg_json));
    char *state = cJSON_Print(st);
    cJSON_Delete(st);
    free(cfg_json);

    char(*mnames)[160];
    st_out *mv = moment_list(tr, mom, vel, &mnames);
    char *mcfg;
    st_out *w;
    ckpt_file files[3];
    if (tr->lo) { /* the adapter in PEFT format; the base is model.init_from, unchanged */
        const char *base = c->model.init_from && realpath(c->model.init_from, base_abs) ? base_abs : c->model.init_from;
        mcfg = peft_config_json(&tr->lo->lc, tr->lo->family, base);
        w = peft_weight_list(tr->lo, ST_F32);
        files[0] = (ckpt_file){"adapter_config.json", NULL, 0, mcfg};
        files[1] = (ckpt_file){"adapter_model.safetensors", w, tr->lo->tab.n, NULL};
    } else {
        mcfg = model_config_to_json(&tr->m.c, "float32");
        w = ckpt_weight_list(&tr->m, ST_F32);
        files[0] = (ckpt_file){"config.json", NULL, 0, mcfg};
        files[1] = (ckpt_file){"model.safetensors", w, tr->m.tab.n, NULL};
    }
    files[2] = (ckpt_file){"optimizer.safetensors", mv, 2 * tr->tv.n, NULL};
    int rc = ckpt_save(tr->ckpt_root, tr->step, files, 3, state, c->train.keep_checkpoints, tr->last_ckpt, err);
    free(state), free(mcfg), free(w), free(mv), free(mnames);
    return rc;
}

/* Rank 0 writes; under ZeRO-1 it first gathers every rank's shard of m and v (the format is the
 * one-process one, so a run resumes on any number of ranks). Every rank returns the same status. */
int trainer_save_checkpoint(trainer *tr, char *err)
{
    float *mom = tr->mom, *vel = tr->vel;
    int rc = 0, r0 = dist_rank(tr->d) == 0;
    if (dist_zero(tr->d)) {
        size_t n = tr->tv.total;
        mom = vel = NULL;
        if (r0 && (!(mom = malloc(n * sizeof *mom)) || !(vel = malloc(n * sizeof *vel))))
            rc = err_set(err, "out of memory gathering the AdamW state (%.2f GiB) to save it", 8.0 * n / 1073741824.0);
        if (!(rc = dist_agree(tr->d, rc, err))) {
            dist_gather(tr->d, tr->mom, mom);
            dist_gather(tr->d, tr->vel, vel);
        }
    }
    if (!rc && r0) rc = write_checkpoint(tr, mom, vel, err);
    if (tr->d) rc = dist_agree(tr->d, rc, err);
    dist_bcast(tr->d, tr->last_ckpt, sizeof tr->last_ckpt); /* for the other ranks' messages */
    if (mom != tr->mom) free(mom), free(vel);
    return rc;
}

/* Every rank: rank 0 verifies the checkpoint and hands its state to the others; each rank reads
 * the moments of its own part of the buffer. */
int trainer_restore_state(trainer *tr, const char *dir, char *err)
{
    char *text = NULL;
    if (dist_agree(tr->d, dist_rank(tr->d) == 0 ? ckpt_read_state(dir, &text, err) : 0, err)) return -1;
    dist_bcast_text(tr->d, &text);
    ckpt_state st;
    int rc = ckpt_state_parse(text, &st, err);
    free(text);
    if (rc) return err_wrap(err, "%s/trainer_state.json", dir);
    rc = -1;
    tr->step = st.step;
    tr->tokens_seen = st.tokens_seen;
    tr->elapsed0 = st.elapsed_s;
    for (int i = 0; i < 4; i++) tr->rng.s[i] = st.rng[i];
    if (loader_seek(tr->train, (loader_pos){st.epoch, st.index}, err)) goto out;
    /* optimizer moments */
    char p[4096];
    fs_path_join(p, sizeof p, dir, "optimizer.safetensors");
    st_file *f;
    if (st_open(&f, p, err)) goto out;
    size_t lo = tr->opt_lo, hi = lo + tr->nopt;
    for (int i = 0; i < 2 * tr->tv.n; i++) {
        const model_tensor *t = &tr->tv.t[i % tr->tv.n];
        size_t a = t->offset > lo ? t->offset : lo, b = t->offset + t->numel < hi ? t->offset + t->numel : hi;
        if (a >= b) continue; /* in another rank's shard */
        char name[160];
        snprintf(name, sizeof name, "%s.%s", i < tr->tv.n ? "exp_avg" : "exp_avg_sq", t->name);
        const st_tensor *s = st_find(f, name);
        float *dst = (i < tr->tv.n ? tr->mom : tr->vel) + (a - lo);
        int whole = a == t->offset && b == t->offset + t->numel;
        if (!s || s->numel != (int64_t)t->numel || (!whole && s->dtype != ST_F32)) {
            err_set(err, "%s: missing or misshapen '%s'", p, name);
            st_close(f);
            goto out;
        }
        if (whole ? st_read_f32(s, dst, s->numel, err) : 0) {
            st_close(f);
            goto out;
        }
        if (!whole) memcpy(dst, (const float *)s->data + (a - t->offset), (b - a) * sizeof *dst);
    }
    st_close(f);
    rc = 0;
out:
    return rc;
}

/* metrics.jsonl of a resumed run: drop lines of steps after the checkpoint (the killed
 * run logged them but the resumed run will log them again). */
int trainer_trim_metrics(const char *path, int step, char *err)
{
    char *text;
    size_t len;
    if (!fs_exists(path)) return 0;
    if (fs_read_file(path, &text, &len, err)) return -1;
    char *out = malloc(len + 1), *line = text;
    size_t n = 0;
    while (*line) {
        char *end = strchr(line, '\n');
        size_t l = end ? (size_t)(end - line + 1) : strlen(line);
        cJSON *j = cJSON_ParseWithLength(line, l);
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "step");
        if (j && cJSON_IsNumber(s) && s->valueint <= step && end) {
            memcpy(out + n, line, l);
            n += l;
        }
        cJSON_Delete(j);
        line += l;
    }
    int rc = fs_write_atomic(path, out, n, err);
    free(out);
    free(text);
    return rc;
}

