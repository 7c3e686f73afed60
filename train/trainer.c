/* trainer: the training loop of `moet train`. */
#include "train/trainer.h"
#include "train/eval.h"
#include "train/load.h"
#include "train/plan.h"
#include "checkpoints/ckpt.h"
#include "checkpoints/hf.h"
#include "checkpoints/peft.h"
#include "common/blas.h"
#include "common/err.h"
#include "common/fsutil.h"
#include "common/rng.h"
#include "common/sha256.h"
#include "data/loader.h"
#include "data/tok.h"
#include "model/lora.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/sched.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) { stop_signal = sig; }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* What the optimizer updates: one flat buffer described by named tensors. */
typedef struct {
    const model_tensor *t;
    int n;
    float *w, *g;
    size_t total;
} tview;

typedef struct {
    const cfg *c;
    const trainer_opts *o;
    model m;
    int have_model;
    lora *lo;              /* LoRA runs: the adapters (the base is frozen) */
    model_acts *acts;
    loader *train, *val;
    loader_batch *mb;      /* grad_accum micro-batches */
    int32_t *labels;       /* (B*T) scratch */
    tview tv;
    float *mom, *vel;      /* AdamW moments over tv */
    adamw_seg *segs;
    int nseg;
    adamw_cfg ac;
    sched_cfg sc;
    double aux_coef, z_coef;
    int step;              /* optimizer steps completed */
    long long tokens_seen;
    rng_state rng;
    FILE *metrics;
    char run_dir[4096], ckpt_root[4096], last_ckpt[4096];
    long *load;            /* (L, E) expert picks of the current step */
    double last_loss, last_val_loss; /* for trainer_state.json and the model card */
    model_prof prof;       /* --profile: kernel times */
    double t_opt, t_step, t_data; /* --profile: optimizer, whole steps, data wait */
    double t_fb;           /* wall time inside model_forward_backward */
    int prof_steps;
    int lock_fd;           /* RUN_DIR/.moet-train.lock, flock'ed while training (-1: none) */
    int made_run_dir;      /* levels of run_dir this process created (it holds the lock; removed if setup fails) */
    int warned_no_targets; /* a step without target tokens was reported */
    plan_in plan_in;       /* the run as the memory planner sees it */
    size_t planned_bytes;  /* its planned peak (0: not planned) */
} trainer;

/* ------------------------------------------------------------------ setup */

/* "q_proj,v_proj" for the target bits */
static void target_names(unsigned bits, int family, char *buf, size_t n)
{
    buf[0] = 0;
    for (int t = 0; t < LORA_NT; t++)
        if (bits >> t & 1)
            snprintf(buf + strlen(buf), n - strlen(buf), "%s%s", buf[0] ? "," : "", lora_target_name(t, family));
}

/* An adapter loaded from disk must be the one the config describes. */
static int same_lora(const lora_config *want, const lora_config *got, int family, const char *dir, char *err)
{
    char a[64] = "", b[64] = "";
    const char *what = NULL;
    if (want->r != got->r) what = "r", snprintf(a, sizeof a, "%d", got->r), snprintf(b, sizeof b, "%d", want->r);
    else if (want->alpha != got->alpha)
        what = "alpha", snprintf(a, sizeof a, "%g", got->alpha), snprintf(b, sizeof b, "%g", want->alpha);
    else if (want->rslora != got->rslora)
        what = "rslora", snprintf(a, sizeof a, "%s", got->rslora ? "true" : "false"),
        snprintf(b, sizeof b, "%s", want->rslora ? "true" : "false");
    else if (want->train_router != got->train_router)
        what = "train_router", snprintf(a, sizeof a, "%s", got->train_router ? "true" : "false"),
        snprintf(b, sizeof b, "%s", want->train_router ? "true" : "false");
    else if (want->targets != got->targets)
        what = "targets", target_names(got->targets, family, a, sizeof a),
        target_names(want->targets, family, b, sizeof b);
    if (what) return err_set(err, "%s: the adapter's %s is %s, the config's lora.%s is %s", dir, what, a, what, b);
    return 0;
}

static int build_model(trainer *tr, const char *resume_dir, char *err)
{
    const cfg *c = tr->c;
    int use_lora = c->lora.enabled;
    if (resume_dir && !use_lora) {
        if (ckpt_load_model(&tr->m, resume_dir, 1, err)) return -1;
        tr->have_model = 1;
    } else { /* fresh full run, or any LoRA run (its base never changes) */
        if (load_run_base(c, &tr->m, !use_lora, err)) return -1;
        tr->have_model = 1;
    }
    tr->aux_coef = c->model.aux_coef_set ? c->model.aux_coef : tr->m.c.aux_coef;
    tr->z_coef = c->model.z_coef;
    tr->plan_in = (plan_in){.B = c->train.batch_size, .T = c->data.seq_len, .grad_accum = c->train.grad_accum,
                            .ckpt = c->train.activation_checkpointing, .base_dtype = tr->m.base_dtype, .ranks = 1};
    if (!use_lora) {
        tr->tv = (tview){tr->m.tab.t, tr->m.tab.n, tr->m.w, tr->m.g, tr->m.tab.total};
        return 0;
    }
    lora_config lc, got;
    const char *from = resume_dir ? resume_dir : c->lora.init_from;
    if (load_lora_config(c, &lc, err) ||
        lora_targets_check((const char *const *)c->lora.targets, c->lora.n_targets, tr->m.c.family, err) ||
        lora_create(&tr->lo, &tr->m, &lc, c->run.seed, err))
        return -1;
    if (from) {
        if (peft_read_config(from, &got, NULL, 0, err) || same_lora(&lc, &got, tr->m.c.family, from, err) ||
            peft_load_weights(tr->lo, from, err))
            return -1;
    }
    lora_attach(&tr->m, tr->lo);
    tr->tv = (tview){tr->lo->tab.t, tr->lo->tab.n, tr->lo->w, tr->lo->g, tr->lo->tab.total};
    tr->plan_in.lora = 1;
    tr->plan_in.lc = lc;
    return 0;
}

static int setup_optimizer(trainer *tr, char *err)
{
    size_t n = tr->tv.total;
    tr->mom = calloc(n, sizeof(float));
    tr->vel = calloc(n, sizeof(float));
    tr->segs = calloc((size_t)tr->tv.n, sizeof *tr->segs);
    if (!tr->mom || !tr->vel || !tr->segs)
        return err_set(err, "out of memory for AdamW state (%.2f GiB)", 2.0 * n * 4 / 1073741824.0);
    /* merge neighbouring tensors with the same decay flag into one segment */
    for (int i = 0; i < tr->tv.n; i++) {
        const model_tensor *t = &tr->tv.t[i];
        int decay = t->ndim >= 2;
        if (tr->nseg && tr->segs[tr->nseg - 1].decay == decay &&
            tr->segs[tr->nseg - 1].offset + tr->segs[tr->nseg - 1].n == t->offset)
            tr->segs[tr->nseg - 1].n += t->numel;
        else
            tr->segs[tr->nseg++] = (adamw_seg){t->offset, t->numel, decay};
    }
    cfg_adamw(tr->c, &tr->ac);
    cfg_sched(tr->c, &tr->sc);
    return 0;
}

static int setup_data(trainer *tr, char *err)
{
    const cfg *c = tr->c;
    int B = c->train.batch_size, T = c->data.seq_len;
    if (loader_open(&tr->train, (const char *const *)c->data.train, c->data.n_train, T, tr->m.c.vocab, B,
                    c->data.shuffle, c->run.seed, err))
        return err_wrap(err, "data.train");
    if (c->data.n_val &&
        loader_open(&tr->val, (const char *const *)c->data.val, c->data.n_val, T, tr->m.c.vocab, B, 0, 0, err))
        return err_wrap(err, "data.val");
    if (c->tokenizer) { /* a tokenizer the model can use, and the shards must come from it */
        char hex[65];
        tok *t;
        if (tok_load(&t, c->tokenizer, err)) return err_wrap(err, "tokenizer");
        int nv = tok_vocab_size(t);
        tok_free(t);
        if (nv > tr->m.c.vocab)
            return err_set(err, "tokenizer: %s has %d tokens, more than the model's vocab_size %d", c->tokenizer, nv,
                           tr->m.c.vocab);
        if (sha256_file(c->tokenizer, hex, err)) return err_wrap(err, "tokenizer");
        loader *ls[2] = {tr->train, tr->val};
        for (int k = 0; k < 2 && ls[k]; k++)
            for (int i = 0; i < loader_n_files(ls[k]); i++) {
                const shard_info *si = loader_file_info(ls[k], i);
                if (si->tokenizer_sha256[0] && strcmp(si->tokenizer_sha256, hex))
                    return err_set(err,
                                   "data.%s: %s was made with a different tokenizer than %s (sha256 %.12s vs %.12s)",
                                   k ? "val" : "train", loader_file_path(ls[k], i), c->tokenizer, si->tokenizer_sha256,
                                   hex);
            }
    }
    int k = c->train.grad_accum;
    tr->mb = calloc((size_t)k, sizeof *tr->mb);
    tr->labels = malloc((size_t)B * T * sizeof *tr->labels);
    tr->load = calloc((size_t)tr->m.c.n_layers * tr->m.c.n_experts, sizeof *tr->load);
    if (!tr->mb || !tr->labels || !tr->load) return err_set(err, "out of memory");
    for (int i = 0; i < k; i++)
        if (loader_batch_alloc(&tr->mb[i], B, T, err)) return -1;
    return model_acts_create_ckpt(&tr->acts, &tr->m, B, T, c->train.activation_checkpointing, err);
}

/* ------------------------------------------------------------------ checkpoints */

static st_out *moment_list(const trainer *tr, char (**names)[160])
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
        o[i].f32 = (i < n ? tr->mom : tr->vel) + t->offset;
    }
    return o;
}

static int save_checkpoint(trainer *tr, char *err)
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
    st_out *mv = moment_list(tr, &mnames);
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

static int restore_state(trainer *tr, const char *dir, char *err)
{
    char *text;
    if (ckpt_read_state(dir, &text, err)) return -1;
    ckpt_state st;
    int rc = ckpt_state_parse(text, &st, err);
    free(text);
    if (rc) return err_wrap(err, "%s/trainer_state.json", dir);
    rc = -1;
    tr->step = st.step;
    tr->tokens_seen = st.tokens_seen;
    for (int i = 0; i < 4; i++) tr->rng.s[i] = st.rng[i];
    if (loader_seek(tr->train, (loader_pos){st.epoch, st.index}, err)) goto out;
    /* optimizer moments */
    char p[4096];
    fs_path_join(p, sizeof p, dir, "optimizer.safetensors");
    st_file *f;
    if (st_open(&f, p, err)) goto out;
    for (int i = 0; i < 2 * tr->tv.n; i++) {
        const model_tensor *t = &tr->tv.t[i % tr->tv.n];
        char name[160];
        snprintf(name, sizeof name, "%s.%s", i < tr->tv.n ? "exp_avg" : "exp_avg_sq", t->name);
        const st_tensor *s = st_find(f, name);
        if (!s || s->numel != (int64_t)t->numel) {
            err_set(err, "%s: missing or misshapen '%s'", p, name);
            st_close(f);
            goto out;
        }
        if (st_read_f32(s, (i < tr->tv.n ? tr->mom : tr->vel) + t->offset, s->numel, err)) {
            st_close(f);
            goto out;
        }
    }
    st_close(f);
    rc = 0;
out:
    return rc;
}

/* metrics.jsonl of a resumed run: drop lines of steps after the checkpoint (the killed
 * run logged them but the resumed run will log them again). */
static int trim_metrics(const char *path, int step, char *err)
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

/* ------------------------------------------------------------------ eval */

static int evaluate(trainer *tr, double *val_loss, long *targets, char *err)
{
    model_prof *prof = tr->m.prof; /* --profile times training steps, not evaluation */
    tr->m.prof = NULL;
    eval_result r = {.loss = NAN};
    int rc = eval_run(&tr->m, tr->acts, tr->val, tr->c->train.eval_batches, tr->c->data.document_mask, &tr->mb[0],
                      tr->labels, &r, err);
    tr->m.prof = prof;
    if (rc) err_wrap(err, "data.val");
    *val_loss = r.loss;
    *targets = r.targets;
    return rc;
}

/* ------------------------------------------------------------------ the loop */

static void fmt_duration(char *buf, size_t n, double s)
{
    if (!isfinite(s) || s < 0) snprintf(buf, n, "?");
    else if (s < 60) snprintf(buf, n, "%.0fs", s);
    else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(buf, n, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

typedef struct {
    double loss, ce, aux, z, grad_norm, lr, seconds;
    long targets;
    int tokens;
} step_result;

static int train_step(trainer *tr, step_result *res, char *err)
{
    const cfg *c = tr->c;
    int k = c->train.grad_accum, L = tr->m.c.n_layers, E = tr->m.c.n_experts;
    double t0 = now();
    long total = 0;
    for (int i = 0; i < k; i++) { /* all micro-batches first: the CE mean spans them all */
        if (loader_next(tr->train, &tr->mb[i], err)) return err_wrap(err, "data.train");
        const loader_batch *b = &tr->mb[i];
        for (int j = 0; j < b->batch_size * b->seq_len; j++) total += b->loss_mask[j] && j % b->seq_len;
    }
    memset(tr->tv.g, 0, tr->tv.total * sizeof(float));
    memset(tr->load, 0, (size_t)L * E * sizeof *tr->load);
    double ce_sum = 0, aux = 0, z = 0;
    for (int i = 0; i < k; i++) {
        const loader_batch *b = &tr->mb[i];
        loader_batch_labels(b, b->batch_size, tr->labels);
        model_batch mb = {b->batch_size, b->seq_len, b->tokens, tr->labels, b->doc_start, c->data.document_mask};
        model_stats st;
        if (tr->lo) lora_set_dropout_key(tr->lo, c->run.seed, (uint64_t)tr->step, i);
        double t_fb = now();
        if (model_forward_backward(&tr->m, tr->acts, &mb, total ? 1.0 / total : 0, tr->aux_coef, tr->z_coef, k, &st,
                                   err))
            return -1;
        tr->t_fb += now() - t_fb;
        ce_sum += st.ce_sum;
        aux += st.aux / k;
        z += st.z / k;
        const int *cnt = model_expert_counts(tr->acts);
        for (int j = 0; j < L * E; j++) tr->load[j] += cnt[j];
        res->tokens += b->batch_size * b->seq_len;
    }
    res->targets = total;
    if (!total && !tr->warned_no_targets) { /* the CE gradient is zero: say so once, not per step */
        fprintf(stderr, "moet train: step %d has no target tokens (every loss_mask 0 in its batch): its update is "
                        "weight decay and momentum only (said once)\n", tr->step + 1);
        tr->warned_no_targets = 1;
    }
    res->ce = total ? ce_sum / total : 0;
    res->aux = aux;
    res->z = z;
    res->loss = res->ce + tr->aux_coef * aux + tr->z_coef * z;
    double t_opt = now();
    res->grad_norm = clip_norm(tr->tv.g, tr->tv.total); /* clipping is applied inside AdamW */
    if (!isfinite(res->loss) || !isfinite(res->grad_norm))
        return err_set(err, "non-finite %s at step %d (loss %g, grad_norm %g): stopping; %s",
                       isfinite(res->loss) ? "gradient norm" : "loss", tr->step + 1, res->loss, res->grad_norm,
                       tr->last_ckpt[0] ? "the last good checkpoint is kept" : "no checkpoint was written");
    res->lr = sched_lr(&tr->sc, tr->step + 1);
    adamw_step_scaled(&tr->ac, tr->tv.w, tr->tv.g, tr->mom, tr->vel, tr->segs, tr->nseg, tr->step + 1,
                      (float)res->lr, clip_coef(res->grad_norm, c->optim.grad_clip));
    tr->t_opt += now() - t_opt;
    tr->step++;
    tr->tokens_seen += res->tokens;
    res->seconds = now() - t0;
    return 0;
}

static void log_step(trainer *tr, const step_result *r, double elapsed, double avg_step)
{
    const cfg *c = tr->c;
    int L = tr->m.c.n_layers, E = tr->m.c.n_experts, k = tr->m.c.top_k;
    double tps = r->tokens / r->seconds;
    if (!tr->o->quiet) {
        char eta[32];
        fmt_duration(eta, sizeof eta, avg_step * (c->train.max_steps - tr->step));
        printf("step %*d/%d | loss %.4f | ce %.4f | aux %.4f | lr %.2e | grad_norm %.3f | %.0f tok/s | ETA %s\n",
               (int)snprintf(NULL, 0, "%d", c->train.max_steps), tr->step, c->train.max_steps, r->loss, r->ce, r->aux,
               r->lr, r->grad_norm, tps, eta);
        fflush(stdout);
    }
    if (!tr->metrics) return;
    fprintf(tr->metrics,
            "{\"step\": %d, \"loss\": %.9g, \"ce_loss\": %.9g, \"aux_loss\": %.9g, \"z_loss\": %.9g, \"lr\": %.9g, "
            "\"grad_norm\": %.9g, \"tokens_per_s\": %.1f, \"tokens\": %lld, \"elapsed_s\": %.3f, \"expert_load\": [",
            tr->step, r->loss, r->ce, r->aux, r->z, r->lr, r->grad_norm, tps, tr->tokens_seen, elapsed);
    /* MoE layers only (a dense MLP layer routes nothing), in layer order; moe_layers names them */
    double picks = (double)r->tokens * k;
    const char *sep = "";
    for (int l = 0; l < L; l++) {
        if (!model_layer_is_moe(&tr->m.c, l)) continue;
        fprintf(tr->metrics, "%s[", sep);
        for (int e = 0; e < E; e++) fprintf(tr->metrics, "%s%.4f", e ? ", " : "", tr->load[l * E + e] / picks);
        fprintf(tr->metrics, "]");
        sep = ", ";
    }
    fprintf(tr->metrics, "], \"load_imbalance\": [");
    sep = "";
    for (int l = 0; l < L; l++) {
        if (!model_layer_is_moe(&tr->m.c, l)) continue;
        long mx = 0;
        for (int e = 0; e < E; e++) mx = tr->load[l * E + e] > mx ? tr->load[l * E + e] : mx;
        fprintf(tr->metrics, "%s%.4f", sep, mx / (picks / E));
        sep = ", ";
    }
    fprintf(tr->metrics, "], \"moe_layers\": [");
    sep = "";
    for (int l = 0; l < L; l++)
        if (model_layer_is_moe(&tr->m.c, l)) fprintf(tr->metrics, "%s%d", sep, l), sep = ", ";
    fprintf(tr->metrics, "]}\n");
    fflush(tr->metrics);
}

static int log_eval(trainer *tr, char *err)
{
    double vl = 0, t0 = now();
    long n = 0;
    int rc = evaluate(tr, &vl, &n, err);
    if (rc < 0) return -1;
    if (rc > 0) { /* no number (no targets, or not finite): say so, log null, keep training */
        fprintf(stderr, "moet train: eval at step %d: %s\n", tr->step, err);
        tr->last_val_loss = NAN; /* the card and trainer_state.json do not carry an older number */
        if (tr->metrics) {
            fprintf(tr->metrics, "{\"step\": %d, \"val_loss\": null, \"val_ppl\": null}\n", tr->step);
            fflush(tr->metrics);
        }
        return 0;
    }
    tr->last_val_loss = vl;
    if (!tr->o->quiet) printf("eval step %d | val_loss %.4f | val_ppl %.3f | %ld targets, %.1fs\n", tr->step, vl, exp(vl), n,
                              now() - t0);
    if (tr->metrics) {
        fprintf(tr->metrics, "{\"step\": %d, \"val_loss\": %.9g, \"val_ppl\": %.9g}\n", tr->step, vl, exp(vl));
        fflush(tr->metrics);
    }
    return 0;
}

static void print_summary(trainer *tr, const char *resumed)
{
    const cfg *c = tr->c;
    double G = 1073741824.0;
    plan_out pl;
    char perr[ERR_MAX];
    int planned = plan_make(&tr->m.c, &tr->plan_in, &pl, perr) == 0;
    printf("model: %zu parameters (%.1f M active per token), %zu trainable%s\n", pl.parameters, pl.active / 1e6,
           tr->tv.total, tr->lo ? " (LoRA; base frozen: no gradients or AdamW state for it)" : "");
    if (planned)
        printf("memory plan: %.3f GiB = weights %.3f (%s base) + trainable %.3f + grads %.3f + AdamW %.3f + "
               "activations %.3f%s + scratch %.3f\n",
               pl.total / G, pl.weights / G, model_dtype_name(tr->m.base_dtype), pl.trainable / G, pl.grads / G,
               pl.optimizer / G, pl.activations / G, c->train.activation_checkpointing ? " (checkpointed)" : "",
               pl.scratch / G);
    tr->planned_bytes = planned ? pl.total : 0;
    printf("data: %lld rows in %d file(s), %lld batches of %dx%d per epoch, grad_accum %d\n",
           (long long)loader_rows(tr->train), loader_n_files(tr->train), (long long)loader_batches_per_epoch(tr->train),
           c->train.batch_size, c->data.seq_len, c->train.grad_accum);
    char blas[256];
    blas_describe(blas, sizeof blas);
    printf("compute: %s\n", blas);
    if (resumed) printf("resuming from %s (step %d)\n", resumed, tr->step);
    fflush(stdout);
}

/* --profile: where the time of a step went, per kernel family. */
static void print_profile(trainer *tr)
{
    static const char *names[PROF_NFAM] = {"embedding", "norms", "attention", "router", "experts", "lm_head+loss",
                                           "lora"};
    if (!tr->prof_steps) { /* e.g. resumed at max_steps, or stopped in the first step */
        printf("\nprofile: no steps were timed (the first step is a warm-up and is not counted)\n");
        return;
    }
    int n = tr->prof_steps;
    double fwd = 0, bwd = 0, total = tr->t_step / n * 1e3;
    for (int f = 0; f < PROF_NFAM; f++) fwd += tr->prof.fwd[f], bwd += tr->prof.bwd[f];
    printf("\nprofile over %d steps (ms per optimizer step; lm_head+loss runs fused forward+backward):\n", tr->prof_steps);
    printf("  %-14s %10s %10s %10s %6s\n", "family", "forward", "backward", "total", "share");
    for (int f = 0; f < PROF_NFAM; f++) {
        double a = tr->prof.fwd[f] / n * 1e3, b = tr->prof.bwd[f] / n * 1e3;
        if (a + b > 0) printf("  %-14s %10.2f %10.2f %10.2f %5.1f%%\n", names[f], a, b, a + b, 100 * (a + b) / total);
    }
    double opt = tr->t_opt / n * 1e3, data = tr->t_data / n * 1e3;
    double other = total - (fwd + bwd) / n * 1e3 - opt - data;
    printf("  %-14s %10s %10s %10.2f %5.1f%%\n", "optimizer", "", "", opt, 100 * opt / total);
    printf("  %-14s %10s %10s %10.2f %5.1f%%\n", "data wait", "", "", data, 100 * data / total);
    printf("  %-14s %10s %10s %10.2f %5.1f%%\n", "other", "", "", other, 100 * other / total);
    printf("  %-14s %10.2f %10.2f %10.2f\n", "step", fwd / n * 1e3, bwd / n * 1e3, total);
    printf("PROFILE fwd_ms=%.3f bwd_ms=%.3f opt_ms=%.3f data_ms=%.3f step_ms=%.3f\n", fwd / n * 1e3, bwd / n * 1e3,
           opt, data, total);
}

static void trainer_free(trainer *tr)
{
    if (tr->metrics) fclose(tr->metrics);
    for (int i = 0; tr->mb && i < tr->c->train.grad_accum; i++) loader_batch_free(&tr->mb[i]);
    free(tr->mb), free(tr->labels), free(tr->load), free(tr->mom), free(tr->vel), free(tr->segs);
    loader_close(tr->train);
    loader_close(tr->val);
    model_acts_free(tr->acts);
    if (tr->have_model) model_free(&tr->m);
    lora_free(tr->lo);
}

int trainer_run(const cfg *c, const trainer_opts *o, char *err)
{
    trainer tr = {.c = c, .o = o, .last_loss = NAN, .last_val_loss = NAN, .lock_fd = -1};
    int rc = -1;
    char resume[4096] = "", p[4096], *yaml = NULL;
    snprintf(tr.run_dir, sizeof tr.run_dir, "%s", c->run.dir);
    fs_path_join(tr.ckpt_root, sizeof tr.ckpt_root, tr.run_dir, "checkpoints");
    /* one trainer per run dir, decided before looking for checkpoints to resume: a flock on
     * RUN_DIR/.moet-train.lock, opened for writing (NFS emulates flock with fcntl locks, which
     * need that). The file is unlinked only by a holder that made the run dir and failed its
     * setup; so a lock won on a file no longer at that path (dev/ino differ) means another
     * trainer came and went in between: refused like a busy one. */
    int made = fs_missing_levels(tr.run_dir);
    if (fs_mkdir_p(tr.run_dir, err)) {
        err_wrap(err, "run.dir");
        goto out;
    }
    fs_path_join(p, sizeof p, tr.run_dir, ".moet-train.lock");
    tr.lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (tr.lock_fd < 0) {
        err_set(err, "run.dir %s: %s", tr.run_dir, strerror(errno));
        goto out;
    }
    if (flock(tr.lock_fd, LOCK_EX | LOCK_NB)) {
        if (errno == EWOULDBLOCK) {
            err_set(err, "run.dir %s: another moet train is using it (wait for it, or use another run.dir)",
                    tr.run_dir);
            goto out;
        } /* a filesystem without flock: train, but say it is unguarded */
        fprintf(stderr, "moet train: run.dir %s: cannot lock it (%s): nothing stops a second trainer there\n",
                tr.run_dir, strerror(errno));
    } else {
        struct stat held, now_at;
        if (fstat(tr.lock_fd, &held) || stat(p, &now_at) || held.st_dev != now_at.st_dev ||
            held.st_ino != now_at.st_ino) {
            err_set(err, "run.dir %s: another moet train used it while this one started: try again", tr.run_dir);
            goto out;
        }
        tr.made_run_dir = made;
    }
    if (c->train.resume == CFG_RESUME_PATH) {
        snprintf(resume, sizeof resume, "%s", c->train.resume_path);
        if (!ckpt_is_checkpoint(resume)) {
            err_set(err, "train.resume: '%s' is not a training checkpoint", err_q(resume, -1));
            goto out;
        }
        /* this run will save into ckpt_root: any checkpoint there but the one resumed from
         * would be overwritten or rotated away */
        char latest[4096], a[PATH_MAX], b[PATH_MAX];
        int skipped;
        if (ckpt_find_latest(tr.ckpt_root, latest, sizeof latest, &skipped, err)) goto out;
        int other = latest[0] && !(realpath(latest, a) && realpath(resume, b) && !strcmp(a, b));
        if (other || skipped) {
            err_set(err, "train.resume: %s already holds %s, which this run would overwrite: set train.resume: "
                         "auto to continue this run from its newest checkpoint, or use another run.dir",
                    tr.ckpt_root, other ? "newer or other checkpoints than the one given" : "damaged checkpoints");
            goto out;
        }
    } else {
        int skipped;
        if (ckpt_find_latest(tr.ckpt_root, resume, sizeof resume, &skipped, err)) goto out;
        if (c->train.resume == CFG_RESUME_NEVER && (resume[0] || skipped)) { /* never overwrite a run */
            err_set(err, "train.resume is never but %s already holds checkpoints: use another run.dir or remove them",
                    tr.ckpt_root);
            goto out;
        }
        if (skipped && !resume[0]) { /* starting over would overwrite them: let a person look first */
            err_set(err, "every checkpoint in %s is damaged (%d): not starting over them; move them away, or set "
                         "train.resume to a checkpoint",
                    tr.ckpt_root, skipped);
            goto out;
        }
        if (skipped) fprintf(stderr, "moet train: skipped %d damaged checkpoint(s) in %s\n", skipped, tr.ckpt_root);
    }
    /* the resolved config, printed now and written once the run is set up (a config that
     * fails below never replaces the run's good config.yaml) */
    size_t ylen = 0;
    FILE *ym = open_memstream(&yaml, &ylen);
    cfg_print_yaml(c, ym);
    fclose(ym);
    if (!o->quiet) printf("%s", yaml);

    if ((resume[0] && load_check_resume(c, resume, err)) || build_model(&tr, resume[0] ? resume : NULL, err) ||
        setup_optimizer(&tr, err) || setup_data(&tr, err))
        goto out;
    tr.made_run_dir = 0; /* from here on the run dir is the run's */
    rng_seed(&tr.rng, c->run.seed, 0x7261696eULL);
    fs_path_join(p, sizeof p, tr.run_dir, "metrics.jsonl");
    if (resume[0]) {
        if (restore_state(&tr, resume, err) || trim_metrics(p, tr.step, err)) goto out;
        snprintf(tr.last_ckpt, sizeof tr.last_ckpt, "%s", resume);
    } else if (fs_exists(p) && trim_metrics(p, 0, err)) { /* a fresh run starts a fresh log */
        goto out;
    }
    fs_path_join(p, sizeof p, tr.run_dir, "config.yaml");
    if (fs_write_atomic(p, yaml, ylen, err)) goto out;
    fs_path_join(p, sizeof p, tr.run_dir, "metrics.jsonl");
    tr.metrics = fopen(p, "a");
    if (!tr.metrics) {
        err_set(err, "%s: %s", p, strerror(errno));
        goto out;
    }
    if (!o->quiet) print_summary(&tr, resume[0] ? resume : NULL);

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND; /* a second Ctrl-C kills at once */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    stop_signal = 0;

    double t_start = now(), avg = 0;
    int first = tr.step;
    if (o->profile) tr.m.prof = &tr.prof;
    while (tr.step < c->train.max_steps && !stop_signal) {
        step_result r = {0};
        double wait0 = loader_wait_seconds(tr.train);
        if (o->profile && tr.step - first == 1) { /* the first step warms caches and threads: not counted */
            memset(&tr.prof, 0, sizeof tr.prof);
            tr.t_opt = tr.t_step = tr.t_data = 0;
            tr.prof_steps = 0;
        }
        double fwd0 = 0, fb0 = tr.t_fb, opt0 = tr.t_opt;
        for (int f = 0; f < PROF_NFAM; f++) fwd0 += tr.prof.fwd[f];
        if (train_step(&tr, &r, err)) goto out;
        if (o->profile) { /* one line per step: forward = its kernels, backward = the rest of the pass */
            double fwd1 = 0;
            for (int f = 0; f < PROF_NFAM; f++) fwd1 += tr.prof.fwd[f];
            double F = (fwd1 - fwd0) * 1e3, B = (tr.t_fb - fb0) * 1e3 - F, O = (tr.t_opt - opt0) * 1e3;
            printf("profile step=%d fwd_ms=%.2f bwd_ms=%.2f opt_ms=%.2f step_ms=%.2f\n", tr.step, F, B, O,
                   r.seconds * 1e3);
        }
        tr.t_step += r.seconds;
        tr.t_data += loader_wait_seconds(tr.train) - wait0;
        tr.prof_steps++;
        tr.last_loss = r.loss;
        avg = tr.step - first == 1 ? r.seconds : 0.9 * avg + 0.1 * r.seconds;
        if (tr.step % c->train.log_every == 0 || tr.step == c->train.max_steps)
            log_step(&tr, &r, now() - t_start, avg);
        if (tr.val && c->train.eval_every > 0 && tr.step % c->train.eval_every == 0 && log_eval(&tr, err)) {
            char e2[ERR_MAX]; /* the val data failed: keep this step's weights before stopping */
            if (save_checkpoint(&tr, e2) == 0 && !o->quiet) printf("saved %s\n", tr.last_ckpt);
            goto out;
        }
        int last = tr.step == c->train.max_steps;
        if ((c->train.save_every > 0 && tr.step % c->train.save_every == 0) || last || stop_signal) {
            if (save_checkpoint(&tr, err)) goto out;
            if (!o->quiet) printf("saved %s\n", tr.last_ckpt);
        }
    }
    if (stop_signal) printf("stopped by signal %d at step %d; resume with the same command\n", (int)stop_signal, tr.step);
    else if (!o->quiet) {
        double G = 1073741824.0, peak = (double)plan_peak_rss();
        printf("done: %d steps in %.1fs; peak RSS %.3f GiB", tr.step - first, now() - t_start, peak / G);
        if (tr.planned_bytes) printf(" (planned %.3f GiB, %+.1f%%)", tr.planned_bytes / G, 100.0 * (peak / tr.planned_bytes - 1));
        printf("\n");
    }
    if (o->profile) print_profile(&tr);
    rc = 0;
out:
    free(yaml);
    trainer_free(&tr);
    if (tr.made_run_dir) { /* setup failed in a run dir this process made (and locked): leave nothing */
        fs_path_join(p, sizeof p, tr.run_dir, ".moet-train.lock");
        unlink(p);
        fs_remove_levels(tr.run_dir, tr.made_run_dir);
    }
    if (tr.lock_fd >= 0) close(tr.lock_fd);
    return rc;
}
