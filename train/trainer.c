/* trainer: the training loop of `moet train`. */
#include "train/trainer_int.h"
#include "train/eval.h"
#include "train/load.h"
#include "train/plan.h"
#include "checkpoints/ckpt.h"
#include "checkpoints/hf.h"
#include "checkpoints/peft.h"
#include "common/blas.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/fsutil.h"
#include "common/par.h"
#include "common/rng.h"
#include "common/sha256.h"
#include "data/loader.h"
#include "data/tok.h"
#include "model/layers.h"
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
#include <unistd.h>

static volatile sig_atomic_t stop_signal, stop_from_parent;

/* The sender matters under MPI: a launcher (our parent) signals every rank when it ends the job. */
static void on_signal(int sig, siginfo_t *si, void *uc)
{
    stop_signal = sig;
    stop_from_parent = si && si->si_pid == getppid();
}


/* Stop after this step: a signal (one process), or one to any rank (agreed under MPI). */
static int stopping(const trainer *tr) { return tr->d ? tr->stop : stop_signal != 0; }

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
    tr->plan_in = (plan_in){.B = c->train.batch_size / dist_size(tr->d), .T = c->data.seq_len,
                            .grad_accum = c->train.grad_accum, .ckpt = c->train.activation_checkpointing,
                            .base_dtype = tr->m.base_dtype, .ranks = dist_size(tr->d), .zero = c->dist.zero > 0};
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
    const cfg *c = tr->c;
    dist_opts dop = {c->dist.zero, c->dist.bucket_mb, c->dist.overlap, c->dist.timeout_s};
    if (dist_attach(tr->d, &tr->m, tr->tv.t, tr->tv.n, tr->tv.w, tr->tv.g, tr->tv.total, &dop, err)) return -1;
    size_t lo, hi;
    dist_shard(tr->d, tr->tv.total, &lo, &hi);
    tr->opt_lo = lo, tr->nopt = hi - lo;
    size_t n = tr->nopt + 1;
    tr->mom = malloc(n * sizeof(float));
    tr->vel = malloc(n * sizeof(float));
    tr->segs = calloc((size_t)tr->tv.n, sizeof *tr->segs);
    tr->sums = calloc(2 + (size_t)tr->m.c.n_layers * tr->m.c.n_experts, sizeof *tr->sums);
    if (!tr->mom || !tr->vel || !tr->segs || !tr->sums)
        return err_set(err, "out of memory for AdamW state (%.2f GiB)", 2.0 * n * 4 / 1073741824.0);
    /* Zeros written now, on every thread: AdamW reads each moment before it writes it, so
     * untouched pages (calloc's) were mapped to the zero page by the read and copied on the
     * write, each copy a second fault and a TLB flush on the other cores: the first step's
     * AdamW took 4.4-4.9 s on the small bench preset (180 M parameters) against 0.06-0.1 s after. */
    par_zero(tr->mom, n);
    par_zero(tr->vel, n);
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
    tr->nseg = adamw_segs_slice(tr->segs, tr->nseg, lo, hi, tr->segs); /* this rank's shard (ZeRO-1) */
    cfg_adamw(tr->c, &tr->ac);
    cfg_sched(tr->c, &tr->sc);
    return 0;
}

static int setup_data(trainer *tr, char *err)
{
    const cfg *c = tr->c;
    int B = c->train.batch_size, T = c->data.seq_len, r = dist_rank(tr->d), P = dist_size(tr->d);
    if (loader_open(&tr->train, (const char *const *)c->data.train, c->data.n_train, T, tr->m.c.vocab, B,
                    c->data.shuffle, c->run.seed, err) ||
        loader_set_slice(tr->train, r, P, err)) /* each rank reads only its rows of every batch */
        return err_wrap(err, "data.train");
    if (c->data.n_val &&
        (loader_open(&tr->val, (const char *const *)c->data.val, c->data.n_val, T, tr->m.c.vocab, B, 0, 0, err) ||
         loader_set_slice(tr->val, r, P, err)))
        return err_wrap(err, "data.val");
    for (int i = 0, first = -1; i < loader_n_files(tr->train); i++) { /* the template the shards were prepped with */
        const char *ct = loader_file_info(tr->train, i)->chat_template;
        if (!ct[0]) continue;
        if (first >= 0 && strcmp(ct, tr->chat_template))
            return err_set(err, "data.train: %s was prepped with chat template %s, %s with %s",
                           loader_file_path(tr->train, first), tr->chat_template, loader_file_path(tr->train, i), ct);
        if (first < 0) first = i, snprintf(tr->chat_template, sizeof tr->chat_template, "%s", ct);
    }
    B /= P;
    if (tr->lo) tr->lo->drop_row0 = (uint64_t)r * B * T; /* attention adapters drop as one process would */
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

double trainer_elapsed(const trainer *tr)
{
    return tr->elapsed0 + (tr->t_start > 0 ? clock_seconds() - tr->t_start : 0);
}

/* A seq_len past max_position_embeddings runs (RoPE has no table to overflow) but asks for
 * positions the model never saw: a warning, or with --strict an error. */
static int check_context(trainer *tr, char *err)
{
    int T = tr->c->data.seq_len, P = tr->m.c.max_pos;
    if (P <= 0 || T <= P) return 0;
    if (tr->o->strict)
        return err_set(err, "data.seq_len %d is more than the model's max_position_embeddings %d (--strict)", T, P);
    if (dist_rank(tr->d) == 0)
        fprintf(stderr, "moet train: warning: data.seq_len %d is more than the model's max_position_embeddings %d: "
                        "positions past %d were never trained (--strict makes this an error)\n", T, P, P);
    return 0;
}

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
    int k = c->train.grad_accum, L = tr->m.c.n_layers, E = tr->m.c.n_experts, rc = 0;
    double t0 = clock_seconds();
    long total = 0;
    for (int i = 0; i < k && !rc; i++) { /* all micro-batches first: the CE mean spans them all */
        if (loader_next(tr->train, &tr->mb[i], err)) rc = err_wrap(err, "data.train");
        const loader_batch *b = &tr->mb[i];
        for (int j = 0; !rc && j < b->batch_size * b->seq_len; j++) total += b->loss_mask[j] && j % b->seq_len;
    }
    if (tr->d) { /* the targets of all ranks' rows; a rank that could not read its rows stops them all */
        double v[2] = {(double)total, rc != 0};
        dist_sum(tr->d, v, 2);
        total = (long)v[0];
        if (v[1] > 0) return dist_agree(tr->d, rc, rc ? err : (err[0] = 0, err));
    } else if (rc) return -1;
    if (!tr->g_zeroed) par_zero(tr->tv.g, tr->tv.total); /* else the last AdamW left it zeroed */
    tr->g_zeroed = 0;
    memset(tr->load, 0, (size_t)L * E * sizeof *tr->load);
    double ce_sum = 0, aux = 0, z = 0;
    for (int i = 0; i < k; i++) {
        const loader_batch *b = &tr->mb[i];
        loader_batch_labels(b, b->batch_size, tr->labels);
        model_batch mb = {b->batch_size, b->seq_len, b->tokens, tr->labels, b->doc_start, c->data.document_mask};
        model_stats st;
        if (tr->lo) lora_set_dropout_key(tr->lo, c->run.seed, (uint64_t)tr->step, i);
        dist_micro(tr->d, i == k - 1); /* the last micro-batch's gradients go out as they complete */
        double t_fb = clock_seconds();
        if (model_forward_backward(&tr->m, tr->acts, &mb, total ? 1.0 / total : 0, tr->aux_coef, tr->z_coef, k, &st,
                                   err)) {
            if (tr->d) dist_fail(tr->d, err); /* mid-step: the other ranks cannot join this */
            return -1;
        }
        tr->t_fb += clock_seconds() - t_fb;
        ce_sum += st.ce_sum;
        aux += st.aux / k; /* aux and z are the global micro-batch's already (model_dp.sum) */
        z += st.z / k;
        const int *cnt = model_expert_counts(tr->acts);
        for (int j = 0; j < L * E; j++) tr->load[j] += cnt[j];
        res->tokens += b->batch_size * b->seq_len * dist_size(tr->d);
    }
    const float *g = tr->tv.g;
    if (tr->d) { /* reduced gradients (this rank's shard under ZeRO-1); loss, stop and load summed */
        g = dist_grads(tr->d);
        double *v = tr->sums;
        v[0] = ce_sum, v[1] = stop_signal != 0;
        for (int j = 0; j < L * E; j++) v[2 + j] = (double)tr->load[j];
        dist_sum(tr->d, v, 2 + L * E);
        ce_sum = v[0], tr->stop = v[1] > 0;
        for (int j = 0; j < L * E; j++) tr->load[j] = (long)v[2 + j];
    }
    res->targets = total;
    if (!total && !tr->warned_no_targets && dist_rank(tr->d) == 0) { /* the CE gradient is zero: say so once */
        fprintf(stderr, "moet train: step %d has no target tokens (every loss_mask 0 in its batch): its update is "
                        "weight decay and momentum only (said once)\n", tr->step + 1);
        tr->warned_no_targets = 1;
    }
    res->ce = total ? ce_sum / total : 0;
    res->aux = aux;
    res->z = z;
    res->loss = res->ce + tr->aux_coef * aux + tr->z_coef * z;
    double t_opt = clock_seconds();
    /* the norm over all ranks' gradients; clipping is applied inside AdamW */
    res->grad_norm = tr->d ? dist_grad_norm(tr->d) : clip_norm(tr->tv.g, tr->tv.total);
    if (!isfinite(res->loss) || !isfinite(res->grad_norm)) /* the same values, so the same stop, on every rank */
        return err_set(err, "non-finite %s at step %d (loss %g, grad_norm %g): stopping; %s",
                       isfinite(res->loss) ? "gradient norm" : "loss", tr->step + 1, res->loss, res->grad_norm,
                       tr->last_ckpt[0] ? "the last good checkpoint is kept" : "no checkpoint was written");
    res->lr = sched_lr(&tr->sc, tr->step + 1);
    float coef = clip_coef(res->grad_norm, c->optim.grad_clip);
    if (tr->d) /* g is the reduced copy (a shard under ZeRO-1): tv.g is zeroed at the next step */
        adamw_step_scaled(&tr->ac, tr->tv.w + tr->opt_lo, g, tr->mom, tr->vel, tr->segs, tr->nseg, tr->step + 1,
                          (float)res->lr, coef);
    else { /* one process: the segments cover every tensor of tv, so this zeroes every gradient */
        adamw_step_consume(&tr->ac, tr->tv.w, tr->tv.g, tr->mom, tr->vel, tr->segs, tr->nseg, tr->step + 1,
                           (float)res->lr, coef);
        tr->g_zeroed = 1;
    }
    tr->t_opt += clock_seconds() - t_opt;
    dist_params(tr->d); /* ZeRO-1: every rank's updated shard to every rank */
    tr->step++;
    tr->tokens_seen += res->tokens;
    res->seconds = clock_seconds() - t0;
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
    double vl = 0, t0 = clock_seconds();
    long n = 0;
    int rc = evaluate(tr, &vl, &n, err);
    if (rc < 0) return tr->d ? dist_agree(tr->d, rc, err) : -1; /* every rank returns -1: share the reason */
    if (rc > 0) { /* no number (no targets, or not finite): say so, log null, keep training */
        if (dist_rank(tr->d) == 0) fprintf(stderr, "moet train: eval at step %d: %s\n", tr->step, err);
        tr->last_val_loss = NAN; /* the card and trainer_state.json do not carry an older number */
        if (tr->metrics) {
            fprintf(tr->metrics, "{\"step\": %d, \"val_loss\": null, \"val_ppl\": null}\n", tr->step);
            fflush(tr->metrics);
        }
        return 0;
    }
    tr->last_val_loss = vl;
    if (!tr->o->quiet) printf("eval step %d | val_loss %.4f | val_ppl %.3f | %ld targets, %.1fs\n", tr->step, vl, exp(vl), n,
                              clock_seconds() - t0);
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
    int B = c->train.batch_size, P = dist_size(tr->d);
    plan_out pl;
    char perr[ERR_MAX];
    int planned = plan_make(&tr->m.c, &tr->plan_in, &pl, perr) == 0;
    printf("model: %zu parameters (%.1f M active per token), %zu trainable%s\n", pl.parameters, pl.active / 1e6,
           tr->tv.total, tr->lo ? " (LoRA; base frozen: no gradients or AdamW state for it)" : "");
    if (tr->d)
        printf("ranks: %d data-parallel (MPI), %d rows of each batch per rank, %s, gradients in %.3g MB buckets %s\n", P,
               B / P, dist_zero(tr->d) ? "ZeRO-1 (AdamW state and its update sharded)" : "no ZeRO",
               c->dist.bucket_mb, c->dist.overlap ? "reduced during the backward" : "reduced after the backward");
    if (planned)
        printf("memory plan%s: %.3f GiB = weights %.3f (%s base) + trainable %.3f + grads %.3f + AdamW %.3f + "
               "activations %.3f%s + scratch %.3f\n",
               tr->d ? " per rank" : "", pl.total / G, pl.weights / G, model_dtype_name(tr->m.base_dtype),
               pl.trainable / G, pl.grads / G, pl.optimizer / G, pl.activations / G,
               c->train.activation_checkpointing ? " (checkpointed)" : "", pl.scratch / G);
    tr->planned_bytes = planned ? pl.total : 0;
    printf("data: %lld rows in %d file(s), %lld batches of %dx%d per epoch, grad_accum %d\n",
           (long long)loader_rows(tr->train), loader_n_files(tr->train), (long long)loader_batches_per_epoch(tr->train),
           c->train.batch_size, c->data.seq_len, c->train.grad_accum);
    char blas[256];
    blas_describe(blas, sizeof blas);
    printf("compute: %s\n", blas);
    printf("kernels: %s\n", model_gemm_describe());
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
    if (!tr->d) return;
    dist_times t;
    dist_get_times(tr->d, &t);
    double gw = (t.grads_wait - tr->dt0.grads_wait) / n * 1e3, gf = (t.grads_flight - tr->dt0.grads_flight) / n * 1e3;
    double pw = (t.params_wait - tr->dt0.params_wait) / n * 1e3, sw = (t.sync_wait - tr->dt0.sync_wait) / n * 1e3;
    printf("communication, rank 0 (ms per step): gradient buckets in flight %.2f (launch to done, summed), waited "
           "for after the backward %.2f (not hidden: %.1f%% of the step); parameter all-gather %.2f; sums %.2f "
           "(router statistics, targets, losses, norm; they also wait for the slowest rank)\n",
           gf, gw, 100 * gw / total, pw, sw);
    printf("PROFILE_DIST ranks=%d zero=%d grads_flight_ms=%.3f grads_wait_ms=%.3f params_ms=%.3f sync_ms=%.3f\n",
           dist_size(tr->d), dist_zero(tr->d), gf, gw, pw, sw);
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

/* Rank 0 (or the one process): take the run dir's lock and find the checkpoint to resume
 * (resume = "" for a fresh run). */
static int claim_run_dir(trainer *tr, char *resume /* 4096 bytes */, char *err)
{
    const cfg *c = tr->c;
    char p[4096];
    /* one trainer per run dir, decided before looking for checkpoints to resume: a flock on
     * RUN_DIR/.moet-train.lock, opened for writing (NFS emulates flock with fcntl locks, which
     * need that). The file is unlinked only by a holder that made the run dir and failed its
     * setup; so a lock won on a file no longer at that path (dev/ino differ) means another
     * trainer came and went in between: refused like a busy one. */
    int made = fs_missing_levels(tr->run_dir);
    if (fs_mkdir_p(tr->run_dir, err)) {
        err_wrap(err, "run.dir");
        return -1;
    }
    fs_path_join(p, sizeof p, tr->run_dir, ".moet-train.lock");
    tr->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (tr->lock_fd < 0) {
        err_set(err, "run.dir %s: %s", tr->run_dir, strerror(errno));
        return -1;
    }
    if (flock(tr->lock_fd, LOCK_EX | LOCK_NB)) {
        if (errno == EWOULDBLOCK) {
            err_set(err, "run.dir %s: another moet train is using it (wait for it, or use another run.dir)",
                    tr->run_dir);
            return -1;
        } /* a filesystem without flock: train, but say it is unguarded */
        fprintf(stderr, "moet train: run.dir %s: cannot lock it (%s): nothing stops a second trainer there\n",
                tr->run_dir, strerror(errno));
    } else {
        struct stat held, now_at;
        if (fstat(tr->lock_fd, &held) || stat(p, &now_at) || held.st_dev != now_at.st_dev ||
            held.st_ino != now_at.st_ino) {
            err_set(err, "run.dir %s: another moet train used it while this one started: try again", tr->run_dir);
            return -1;
        }
        tr->made_run_dir = made;
    }
    if (c->train.resume == CFG_RESUME_PATH) {
        snprintf(resume, (size_t)4096, "%s", c->train.resume_path);
        if (!ckpt_is_checkpoint(resume)) {
            err_set(err, "train.resume: '%s' is not a training checkpoint", err_q(resume, -1));
            return -1;
        }
        /* this run will save into ckpt_root: any checkpoint there but the one resumed from
         * would be overwritten or rotated away */
        char latest[4096], a[PATH_MAX], b[PATH_MAX];
        int skipped;
        if (ckpt_find_latest(tr->ckpt_root, latest, sizeof latest, &skipped, err)) return -1;
        int other = latest[0] && !(realpath(latest, a) && realpath(resume, b) && !strcmp(a, b));
        if (other || skipped) {
            err_set(err, "train.resume: %s already holds %s, which this run would overwrite: set train.resume: "
                         "auto to continue this run from its newest checkpoint, or use another run.dir",
                    tr->ckpt_root, other ? "newer or other checkpoints than the one given" : "damaged checkpoints");
            return -1;
        }
    } else {
        int skipped;
        if (ckpt_find_latest(tr->ckpt_root, resume, (size_t)4096, &skipped, err)) return -1;
        if (c->train.resume == CFG_RESUME_NEVER && (resume[0] || skipped)) { /* never overwrite a run */
            err_set(err, "train.resume is never but %s already holds checkpoints: use another run.dir or remove them",
                    tr->ckpt_root);
            return -1;
        }
        if (skipped && !resume[0]) { /* starting over would overwrite them: let a person look first */
            err_set(err, "every checkpoint in %s is damaged (%d): not starting over them; move them away, or set "
                         "train.resume to a checkpoint",
                    tr->ckpt_root, skipped);
            return -1;
        }
        if (skipped) fprintf(stderr, "moet train: skipped %d damaged checkpoint(s) in %s\n", skipped, tr->ckpt_root);
    }
    return 0;
}

int trainer_run(const cfg *c, const trainer_opts *o, char *err)
{
    trainer tr = {.c = c, .o = o, .last_loss = NAN, .last_val_loss = NAN, .lock_fd = -1, .d = o->dist};
    int rc = -1, r0 = dist_rank(tr.d) == 0;
    char resume[4096] = "", p[4096], *yaml = NULL;
    trainer_opts quiet = *o; /* only rank 0 prints */
    if (!r0) quiet.quiet = 1, tr.o = o = &quiet;
    snprintf(tr.run_dir, sizeof tr.run_dir, "%s", c->run.dir);
    fs_path_join(tr.ckpt_root, sizeof tr.ckpt_root, tr.run_dir, "checkpoints");
    dist_watch(tr.d, &stop_signal, &stop_from_parent, &tr.step, tr.last_ckpt);
    if (c->train.batch_size % dist_size(tr.d)) { /* before anything is loaded */
        err_set(err, "train.batch_size %d does not split evenly over %d ranks (make it a multiple of %d)",
                c->train.batch_size, dist_size(tr.d), dist_size(tr.d));
        goto out;
    }
    if (dist_agree(tr.d, r0 ? claim_run_dir(&tr, resume, err) : 0, err)) goto out;
    dist_bcast(tr.d, resume, sizeof resume);
    /* the resolved config, printed now and written once the run is set up (a config that
     * fails below never replaces the run's good config.yaml) */
    size_t ylen = 0;
    FILE *ym = open_memstream(&yaml, &ylen);
    cfg_print_yaml(c, ym);
    fclose(ym);
    if (!o->quiet) printf("%s", yaml);

    /* every rank builds the model and its slice of the data (each phase ends with the ranks agreeing) */
    rc = (r0 && resume[0] && load_check_resume(c, resume, err)) || build_model(&tr, resume[0] ? resume : NULL, err) ||
         check_context(&tr, err) || setup_optimizer(&tr, err) || setup_data(&tr, err);
    if (dist_agree(tr.d, -rc, err)) goto fail;
    tr.made_run_dir = 0; /* from here on the run dir is the run's */
    rng_seed(&tr.rng, c->run.seed, 0x7261696eULL);
    fs_path_join(p, sizeof p, tr.run_dir, "metrics.jsonl");
    if (resume[0]) {
        if (trainer_restore_state(&tr, resume, err) ||
            dist_agree(tr.d, r0 ? trainer_trim_metrics(p, tr.step, err) : 0, err))
            goto fail;
        snprintf(tr.last_ckpt, sizeof tr.last_ckpt, "%s", resume);
    }
    rc = 0; /* rank 0 alone writes the run dir */
    if (r0 && !resume[0] && fs_exists(p)) rc = trainer_trim_metrics(p, 0, err); /* a fresh run starts a fresh log */
    fs_path_join(p, sizeof p, tr.run_dir, "config.yaml");
    if (r0 && !rc) rc = fs_write_atomic(p, yaml, ylen, err);
    fs_path_join(p, sizeof p, tr.run_dir, "metrics.jsonl");
    if (r0 && !rc && !(tr.metrics = fopen(p, "a"))) rc = err_set(err, "%s: %s", p, strerror(errno));
    if (dist_agree(tr.d, rc, err)) goto fail;
    if (!o->quiet) print_summary(&tr, resume[0] ? resume : NULL);

    struct sigaction sa = {0};
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_RESETHAND | SA_SIGINFO; /* a second Ctrl-C kills at once */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (tr.d) sigaction(SIGUSR1, &sa, NULL); /* mpirun forwards SIGUSR1 to every rank (and kills after SIGTERM) */
    stop_signal = stop_from_parent = 0;

    double t_start = tr.t_start = clock_seconds(), avg = 0;
    int first = tr.step;
    if (tr.val && c->train.eval_at_start && tr.step == 0 && log_eval(&tr, err)) /* the baseline; a resume has it */
        goto fail;
    if (o->profile) tr.m.prof = &tr.prof;
    while (tr.step < c->train.max_steps && !stopping(&tr)) {
        step_result r = {0};
        double wait0 = loader_wait_seconds(tr.train);
        if (o->profile && tr.step - first == 1) { /* the first step warms caches and threads: not counted */
            memset(&tr.prof, 0, sizeof tr.prof);
            tr.t_opt = tr.t_step = tr.t_data = 0;
            tr.prof_steps = 0;
            dist_get_times(tr.d, &tr.dt0);
        }
        double fwd0 = 0, fb0 = tr.t_fb, opt0 = tr.t_opt;
        for (int f = 0; f < PROF_NFAM; f++) fwd0 += tr.prof.fwd[f];
        dist_times c0, c1;
        dist_get_times(tr.d, &c0);
        if (train_step(&tr, &r, err)) goto fail;
        if (o->profile && r0) { /* one line per step: forward = its kernels, backward = the rest of the pass */
            double fwd1 = 0;
            for (int f = 0; f < PROF_NFAM; f++) fwd1 += tr.prof.fwd[f];
            double F = (fwd1 - fwd0) * 1e3, B = (tr.t_fb - fb0) * 1e3 - F, O = (tr.t_opt - opt0) * 1e3;
            printf("profile step=%d fwd_ms=%.2f bwd_ms=%.2f opt_ms=%.2f step_ms=%.2f", tr.step, F, B, O,
                   r.seconds * 1e3);
            dist_get_times(tr.d, &c1); /* MPI: waits for the gradients, the parameters, the small sums */
            if (tr.d)
                printf(" grads_wait_ms=%.2f params_ms=%.2f sync_ms=%.2f", (c1.grads_wait - c0.grads_wait) * 1e3,
                       (c1.params_wait - c0.params_wait) * 1e3, (c1.sync_wait - c0.sync_wait) * 1e3);
            printf("\n");
        }
        tr.t_step += r.seconds;
        tr.t_data += loader_wait_seconds(tr.train) - wait0;
        tr.prof_steps++;
        tr.last_loss = r.loss;
        avg = tr.step - first == 1 ? r.seconds : 0.9 * avg + 0.1 * r.seconds;
        if (tr.step % c->train.log_every == 0 || tr.step == c->train.max_steps)
            log_step(&tr, &r, trainer_elapsed(&tr), avg);
        if (tr.val && c->train.eval_every > 0 && tr.step % c->train.eval_every == 0 && log_eval(&tr, err)) {
            char e2[ERR_MAX]; /* the val data failed: keep this step's weights before stopping */
            if (trainer_save_checkpoint(&tr, e2) == 0 && !o->quiet) printf("saved %s\n", tr.last_ckpt);
            goto fail;
        }
        int last = tr.step == c->train.max_steps;
        if ((c->train.save_every > 0 && tr.step % c->train.save_every == 0) || last || stopping(&tr)) {
            if (trainer_save_checkpoint(&tr, err)) goto fail;
            if (!o->quiet) printf("saved %s\n", tr.last_ckpt);
        }
    }
    if (stopping(&tr) && r0) {
        if (stop_signal) printf("stopped by signal %d at step %d; resume with the same command\n", (int)stop_signal, tr.step);
        else printf("stopped by a signal to another rank at step %d; resume with the same command\n", tr.step);
    } else if (!o->quiet) {
        double G = 1073741824.0, peak = (double)plan_peak_rss();
        printf("done: %d steps in %.1fs", tr.step - first, clock_seconds() - t_start);
        if (first > 0) printf(" (all runs of this training: %d steps, %lld tokens, %.1fs)", tr.step, tr.tokens_seen,
                              trainer_elapsed(&tr));
        printf("; peak RSS %.3f GiB%s", peak / G, tr.d ? " (rank 0)" : "");
        if (tr.planned_bytes) printf(" (planned %.3f GiB, %+.1f%%)", tr.planned_bytes / G, 100.0 * (peak / tr.planned_bytes - 1));
        printf("\n");
    }
    if (o->profile && r0) print_profile(&tr);
    rc = 0;
    goto out;
fail:
    rc = -1;
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
