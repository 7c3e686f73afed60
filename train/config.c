/* cfg: the schema of the run config and its checks.  The YAML (or JSON) becomes a tree
 * (config_tree.c), overrides edit the tree, then one walk over the schema below fills the
 * typed struct, so file values and overrides get the same messages. */
#include "train/config.h"

#include "common/err.h"
#include "model/family.h"
#include "model/lora.h"
#include "train/config_tree.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* ---- schema ---- */

typedef enum {
    KT_STR,      /* non-empty string, NULL when absent */
    KT_INT,      /* int in [lo, hi] */
    KT_SEED,     /* uint64 in [0, 2^53] */
    KT_NUM,      /* double in the range of lo, hi and the OPEN flags */
    KT_BOOL,
    KT_LIST,     /* list of non-empty strings (one string is a list of one); off2: count */
    KT_BETAS,    /* [b1, b2] */
    KT_SCHED,
    KT_RESUME,
    KT_ARCH,     /* any mapping, kept as JSON */
    KT_AUX,      /* number >= 0 or null (unset); off2: the set flag */
    KT_DTYPE,    /* auto | float32 | bfloat16 | float16 */
} ktype;

enum { REQUIRED = 1, LO_OPEN = 2, HI_OPEN = 4 };

typedef struct {
    const char *sec, *key;    /* sec NULL: a top-level scalar (tokenizer) */
    ktype t;
    size_t off, off2;
    double lo, hi;
    unsigned flags;
} ckey;

#define F(field) offsetof(cfg, field)
#define BIG 1e300
static const ckey keys[] = {
    {"run", "name", KT_STR, F(run.name), 0, 0, 0, 0},
    {"run", "dir", KT_STR, F(run.dir), 0, 0, 0, 0},
    {"run", "seed", KT_SEED, F(run.seed), 0, 0, 0, 0},
    {"model", "init_from", KT_STR, F(model.init_from), 0, 0, 0, 0},
    {"model", "arch", KT_ARCH, F(model.arch_json), 0, 0, 0, 0},
    {"model", "router_aux_loss_coef", KT_AUX, F(model.aux_coef), F(model.aux_coef_set), 0, BIG, 0},
    {"model", "router_z_loss_coef", KT_NUM, F(model.z_coef), 0, 0, BIG, 0},
    {"model", "base_dtype", KT_DTYPE, F(model.base_dtype), 0, 0, 0, 0},
    {NULL, "tokenizer", KT_STR, F(tokenizer), 0, 0, 0, 0},
    {"data", "train", KT_LIST, F(data.train), F(data.n_train), 0, 0, REQUIRED},
    {"data", "val", KT_LIST, F(data.val), F(data.n_val), 0, 0, 0},
    {"data", "seq_len", KT_INT, F(data.seq_len), 0, 2, INT_MAX, REQUIRED},
    {"data", "shuffle", KT_BOOL, F(data.shuffle), 0, 0, 0, 0},
    {"data", "document_mask", KT_BOOL, F(data.document_mask), 0, 0, 0, 0},
    {"train", "batch_size", KT_INT, F(train.batch_size), 0, 1, INT_MAX, REQUIRED},
    {"train", "grad_accum", KT_INT, F(train.grad_accum), 0, 1, INT_MAX, 0},
    {"train", "max_steps", KT_INT, F(train.max_steps), 0, 1, INT_MAX, REQUIRED},
    {"train", "log_every", KT_INT, F(train.log_every), 0, 1, INT_MAX, 0},
    {"train", "eval_every", KT_INT, F(train.eval_every), 0, 0, INT_MAX, 0},
    {"train", "eval_batches", KT_INT, F(train.eval_batches), 0, 0, INT_MAX, 0},
    {"train", "save_every", KT_INT, F(train.save_every), 0, 0, INT_MAX, 0},
    {"train", "keep_checkpoints", KT_INT, F(train.keep_checkpoints), 0, 0, INT_MAX, 0},
    {"train", "resume", KT_RESUME, F(train.resume), F(train.resume_path), 0, 0, 0},
    {"train", "activation_checkpointing", KT_BOOL, F(train.activation_checkpointing), 0, 0, 0, 0},
    {"train", "eval_at_start", KT_BOOL, F(train.eval_at_start), 0, 0, 0, 0},
    {"optim", "lr", KT_NUM, F(optim.lr), 0, 0, BIG, REQUIRED | LO_OPEN},
    {"optim", "betas", KT_BETAS, F(optim.beta1), F(optim.beta2), 0, 1, HI_OPEN},
    {"optim", "eps", KT_NUM, F(optim.eps), 0, 0, BIG, LO_OPEN},
    {"optim", "weight_decay", KT_NUM, F(optim.weight_decay), 0, 0, BIG, 0},
    {"optim", "grad_clip", KT_NUM, F(optim.grad_clip), 0, 0, BIG, 0},
    {"optim", "schedule", KT_SCHED, F(optim.schedule), 0, 0, 0, 0},
    {"optim", "warmup_steps", KT_INT, F(optim.warmup_steps), 0, 0, INT_MAX, 0},
    {"optim", "min_lr_ratio", KT_NUM, F(optim.min_lr_ratio), 0, 0, 1, 0},
    {"optim", "decay_steps", KT_INT, F(optim.decay_steps), 0, 0, INT_MAX, 0},
    {"lora", "enabled", KT_BOOL, F(lora.enabled), 0, 0, 0, 0},
    {"lora", "r", KT_INT, F(lora.r), 0, 1, 65536, 0}, /* beyond any layer's width; bounds the memory */
    {"lora", "alpha", KT_NUM, F(lora.alpha), 0, 0, BIG, LO_OPEN},
    {"lora", "dropout", KT_NUM, F(lora.dropout), 0, 0, 1, HI_OPEN},
    {"lora", "rslora", KT_BOOL, F(lora.rslora), 0, 0, 0, 0},
    {"lora", "targets", KT_LIST, F(lora.targets), F(lora.n_targets), 0, 0, 0},
    {"lora", "init_from", KT_STR, F(lora.init_from), 0, 0, 0, 0},
    {"lora", "train_router", KT_BOOL, F(lora.train_router), 0, 0, 0, 0},
    {"dist", "zero", KT_INT, F(dist.zero), 0, 0, 1, 0},
    {"dist", "bucket_mb", KT_NUM, F(dist.bucket_mb), 0, 0, 4096, LO_OPEN},
    {"dist", "overlap", KT_BOOL, F(dist.overlap), 0, 0, 0, 0},
    {"dist", "timeout_s", KT_NUM, F(dist.timeout_s), 0, 0, 1e9, LO_OPEN},
};
#define NKEYS (int)(sizeof keys / sizeof keys[0])

static const char *const sections[] = {"run", "model", "tokenizer", "data", "train", "optim", "lora", "dist"};
#define NSECTIONS (int)(sizeof sections / sizeof sections[0])


/* Names users of HF / axolotl / torchtune / mistral-finetune / nanoGPT reach for. */
static const struct { const char *name, *path; } aliases[] = {
    {"learning_rate", "optim.lr"}, {"beta1", "optim.betas"}, {"beta2", "optim.betas"},
    {"adam_beta1", "optim.betas"}, {"adam_beta2", "optim.betas"}, {"epsilon", "optim.eps"},
    {"adam_epsilon", "optim.eps"}, {"wd", "optim.weight_decay"},
    {"max_grad_norm", "optim.grad_clip"}, {"clip_grad_norm", "optim.grad_clip"},
    {"gradient_clipping", "optim.grad_clip"}, {"lr_scheduler", "optim.schedule"},
    {"lr_scheduler_type", "optim.schedule"}, {"scheduler", "optim.schedule"},
    {"num_warmup_steps", "optim.warmup_steps"}, {"warmup_iters", "optim.warmup_steps"},
    {"min_lr", "optim.min_lr_ratio"}, {"micro_batch_size", "train.batch_size"},
    {"per_device_train_batch_size", "train.batch_size"},
    {"gradient_accumulation_steps", "train.grad_accum"}, {"max_iters", "train.max_steps"},
    {"num_steps", "train.max_steps"}, {"max_train_steps", "train.max_steps"},
    {"logging_steps", "train.log_every"}, {"log_interval", "train.log_every"},
    {"eval_steps", "train.eval_every"}, {"eval_interval", "train.eval_every"},
    {"save_steps", "train.save_every"}, {"ckpt_every", "train.save_every"},
    {"save_total_limit", "train.keep_checkpoints"}, {"num_ckpt_keep", "train.keep_checkpoints"},
    {"resume_from_checkpoint", "train.resume"}, {"sequence_len", "data.seq_len"},
    {"seq_length", "data.seq_len"}, {"max_seq_len", "data.seq_len"},
    {"max_seq_length", "data.seq_len"}, {"block_size", "data.seq_len"},
    {"output_dir", "run.dir"}, {"base_model", "model.init_from"},
    {"model_name_or_path", "model.init_from"}, {"config", "model.arch"},
    {"rank", "lora.r"}, {"lora_r", "lora.r"}, {"lora_rank", "lora.r"},
    {"lora_alpha", "lora.alpha"}, {"lora_dropout", "lora.dropout"},
    {"target_modules", "lora.targets"}, {"lora_target_modules", "lora.targets"},
    {"use_rslora", "lora.rslora"}, {"zero_stage", "dist.zero"}, {"bucket_cap_mb", "dist.bucket_mb"},
};

/* ---- messages ---- */

typedef struct {
    const char *name;   /* file name for "FILE:LINE: ", or NULL */
    char *err;
    int snapshot;       /* a resolved config read back (trainer_state.json): written by moet, maybe an older one */
} ctx;

/* "FILE:LINE: " / "line N: " / "command line: " / "config JSON: " / "" for a node's line. */
static const char *where(const ctx *x, int line, char *buf, size_t size)
{
    if (line == YT_LINE_OVERRIDE) return "command line: ";
    if (line == YT_LINE_JSON) return "config JSON: ";
    if (line < 0) return "";
    if (x->name) snprintf(buf, size, "%s:%d: ", x->name, line);
    else snprintf(buf, size, "line %d: ", line);
    return buf;
}

static int fail(const ctx *x, int line, const char *path, const char *what, const ytnode *got)
{
    char wb[300], gb[80];
    if (got)
        return err_set(x->err, "%s%s: expected %s, got %s", where(x, line, wb, sizeof wb), path,
                       what, yt_describe(got, gb, sizeof gb));
    return err_set(x->err, "%s%s: %s", where(x, line, wb, sizeof wb), path, what);
}

/* ---- nearest-key suggestions ---- */

static int edit_distance(const char *a, const char *b)
{
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 63 || lb > 63) return 99;
    int d[64][64];
    for (int i = 0; i <= la; i++) d[i][0] = i;
    for (int j = 0; j <= lb; j++) d[0][j] = j;
    for (int i = 1; i <= la; i++)
        for (int j = 1; j <= lb; j++) {
            int ca = tolower((unsigned char)a[i - 1]), cb = tolower((unsigned char)b[j - 1]);
            if (ca == '-') ca = '_';
            if (cb == '-') cb = '_';
            int best = d[i - 1][j - 1] + (ca != cb);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            d[i][j] = best;
        }
    return d[la][lb];
}

/* Score of candidate c for a typed name: distance, or a small score when one contains the
 * other (warmup -> warmup_steps, optimizer -> optim); -1 when too far to suggest. */
static int closeness(const char *name, const char *c)
{
    int d = edit_distance(name, c);
    int ln = (int)strlen(name), lc = (int)strlen(c), shorter = ln < lc ? ln : lc;
    if (shorter >= 3 && (strstr(name, c) || strstr(c, name)) && d > 1) d = 2;
    return d <= 2 || 3 * d <= ln ? d : -1;
}

/* Fill buf with a suggestion for unknown key `name` in section sec (NULL: top level). */
static void suggest(const char *sec, const char *name, char *buf, size_t size)
{
    char lower[64];
    size_t i = 0;
    for (; name[i] && i < sizeof lower - 1; i++)
        lower[i] = name[i] == '-' ? '_' : (char)tolower((unsigned char)name[i]);
    lower[i] = 0;
    for (size_t a = 0; a < sizeof aliases / sizeof aliases[0]; a++)
        if (!strcmp(lower, aliases[a].name)) {
            snprintf(buf, size, " (did you mean '%s'?)", aliases[a].path);
            return;
        }
    for (int k = 0; k < NKEYS; k++) { /* the right name in the wrong place */
        const char *ks = keys[k].sec;
        if (strcmp(lower, keys[k].key) || (ks ? sec && !strcmp(sec, ks) : !sec)) continue;
        snprintf(buf, size, " (did you mean '%s%s%s'?)", ks ? ks : "", ks ? "." : "", keys[k].key);
        return;
    }
    const char *best = NULL;
    int best_d = 1 << 30;
    for (int k = 0; k < (sec ? NKEYS : NSECTIONS); k++) {
        const char *c = sec ? keys[k].key : sections[k];
        if (sec && (!keys[k].sec || strcmp(keys[k].sec, sec))) continue;
        int d = closeness(name, c);
        if (d >= 0 && d < best_d) best = c, best_d = d;
    }
    if (best) {
        snprintf(buf, size, " (did you mean '%s%s%s'?)", sec ? sec : "", sec ? "." : "", best);
        return;
    }
    const char *sep = " (known: ";
    size_t n = 0;
    for (int k = 0; k < (sec ? NKEYS : NSECTIONS) && n < size; k++) {
        if (sec && (!keys[k].sec || strcmp(keys[k].sec, sec))) continue;
        n += (size_t)snprintf(buf + n, size - n, "%s%s", sep, sec ? keys[k].key : sections[k]);
        sep = ", ";
    }
    if (n < size) snprintf(buf + n, size - n, ")");
}

static int unknown_keys(const ctx *x, const ytnode *root)
{
    char hint[200], wb[300];
    for (int i = 0; i < root->n; i++) {
        const char *s = root->keys[i];
        int known = 0;
        for (int k = 0; k < NSECTIONS; k++) known |= !strcmp(s, sections[k]);
        if (!known) {
            suggest(NULL, s, hint, sizeof hint);
            return err_set(x->err, "%sunknown section '%s'%s",
                           where(x, root->key_lines[i], wb, sizeof wb), err_q(s, -1), hint);
        }
        const ytnode *sec = root->kids[i];
        if (!strcmp(s, "tokenizer") || yt_is_null(sec)) continue;
        if (sec->kind != YT_MAP) return fail(x, sec->line, s, "a mapping of keys", sec);
        for (int j = 0; j < sec->n; j++) {
            known = 0;
            for (int k = 0; k < NKEYS; k++)
                known |= keys[k].sec && !strcmp(keys[k].sec, s) && !strcmp(keys[k].key, sec->keys[j]);
            if (known) continue;
            suggest(s, sec->keys[j], hint, sizeof hint);
            return err_set(x->err, "%sunknown key '%s.%s'%s",
                           where(x, sec->key_lines[j], wb, sizeof wb), s, err_q(sec->keys[j], -1), hint);
        }
    }
    return 0;
}

/* ---- typed values ---- */

/* Describe a range for "expected ...": "a positive number", "an integer >= 1", ... */
static void range_text(const ckey *k, int integer, char *buf, size_t size)
{
    const char *what = integer ? "an integer" : "a number";
    if (k->hi >= (integer ? (double)INT_MAX : BIG)) {
        if (k->lo == 0 && (k->flags & LO_OPEN)) snprintf(buf, size, "a positive %s", integer ? "integer" : "number");
        else snprintf(buf, size, "%s %s %g", what, k->flags & LO_OPEN ? ">" : ">=", k->lo);
    } else {
        snprintf(buf, size, "%s in %c%g, %g%c", what, k->flags & LO_OPEN ? '(' : '[', k->lo, k->hi,
                 k->flags & HI_OPEN ? ')' : ']');
    }
}

static int in_range(const ckey *k, double v)
{
    if (k->flags & LO_OPEN ? !(v > k->lo) : !(v >= k->lo)) return 0;
    if (k->flags & HI_OPEN ? !(v < k->hi) : !(v <= k->hi)) return 0;
    return 1;
}

static int get_number(const ctx *x, const ckey *k, const char *path, const ytnode *n, double *v)
{
    char want[80];
    range_text(k, 0, want, sizeof want);
    if (n->kind != YT_SCALAR || yt_number(n->str, v) || !in_range(k, *v))
        return fail(x, n->line, path, want, n);
    return 0;
}

static int get_int(const ctx *x, const ckey *k, const char *path, const ytnode *n, double *v)
{
    char want[80];
    range_text(k, 1, want, sizeof want);
    if (n->kind != YT_SCALAR || yt_number(n->str, v) || *v != floor(*v) || !in_range(k, *v))
        return fail(x, n->line, path, want, n);
    return 0;
}

static int get_strings(const ctx *x, const char *path, const ytnode *n, char ***out, int *count)
{
    const ytnode *one[1] = {n};
    const ytnode *const *items = n->kind == YT_SEQ ? (const ytnode *const *)n->kids : one;
    int m = n->kind == YT_SEQ ? n->n : 1;
    if (n->kind == YT_MAP) return fail(x, n->line, path, "a list of strings", n);
    char **list = calloc((size_t)m + 1, sizeof *list);
    if (!list) return err_set(x->err, "out of memory");
    *out = list;
    for (int i = 0; i < m; i++) {
        char ip[120];
        snprintf(ip, sizeof ip, "%s[%d]", path, i);
        if (items[i]->kind != YT_SCALAR || yt_is_null(items[i]) || !items[i]->str[0])
            return fail(x, items[i]->line, ip, "a non-empty string", items[i]);
        if (!(list[i] = strdup(items[i]->str))) return err_set(x->err, "out of memory");
        *count = i + 1;
    }
    return 0;
}

/* Set field k of c from node n (not NULL, not null). */
static int set_key(const ctx *x, cfg *c, const ckey *k, const ytnode *n)
{
    char path[80];
    char *base = (char *)c;
    double v;
    int b;
    snprintf(path, sizeof path, "%s%s%s", k->sec ? k->sec : "", k->sec ? "." : "", k->key);
    switch (k->t) {
    case KT_STR:
        if (n->kind != YT_SCALAR || !n->str[0]) return fail(x, n->line, path, "a non-empty string", n);
        free(*(char **)(base + k->off));
        if (!(*(char **)(base + k->off) = strdup(n->str))) return err_set(x->err, "out of memory");
        return 0;
    case KT_INT:
        if (get_int(x, k, path, n, &v)) return -1;
        *(int *)(base + k->off) = (int)v;
        return 0;
    case KT_SEED: {
        char *end;
        errno = 0;
        unsigned long long s = n->kind == YT_SCALAR && isdigit((unsigned char)n->str[0])
                                   ? strtoull(n->str, &end, 10) : 0;
        if (n->kind != YT_SCALAR || !isdigit((unsigned char)n->str[0]) || *end || errno ||
            s > (1ull << 53))
            return fail(x, n->line, path, "an integer in [0, 2^53]", n);
        *(uint64_t *)(base + k->off) = s;
        return 0;
    }
    case KT_NUM:
        if (get_number(x, k, path, n, &v)) return -1;
        *(double *)(base + k->off) = v;
        return 0;
    case KT_AUX:
        if (get_number(x, k, path, n, &v)) return -1;
        *(double *)(base + k->off) = v;
        *(int *)(base + k->off2) = 1;
        return 0;
    case KT_BOOL:
        if (n->kind != YT_SCALAR || (b = yt_bool(n->str)) < 0)
            return fail(x, n->line, path, "true or false", n);
        *(int *)(base + k->off) = b;
        return 0;
    case KT_LIST: {
        char ***list = (char ***)(base + k->off);
        int *count = (int *)(base + k->off2);
        for (int i = 0; i < *count; i++) free((*list)[i]);
        free(*list);
        *list = NULL;
        *count = 0;
        if (get_strings(x, path, n, list, count)) return -1;
        if ((k->flags & REQUIRED) && !*count) return fail(x, n->line, path, "at least one file", n);
        return 0;
    }
    case KT_BETAS:
        if (n->kind != YT_SEQ || n->n != 2) return fail(x, n->line, path, "a list of two numbers [beta1, beta2]", n);
        for (int i = 0; i < 2; i++) {
            char ip[100];
            snprintf(ip, sizeof ip, "%s[%d]", path, i);
            if (get_number(x, k, ip, n->kids[i], &v)) return -1;
            *(double *)(base + (i ? k->off2 : k->off)) = v;
        }
        return 0;
    case KT_DTYPE: {
        int d = -1;
        for (int i = 0; n->kind == YT_SCALAR && i < 4; i++)
            if (!strcmp(n->str, cfg_base_dtype_name(i))) d = i;
        if (d < 0) return fail(x, n->line, path, "one of auto, float32, bfloat16, float16", n);
        *(int *)(base + k->off) = d;
        return 0;
    }
    case KT_SCHED:
        if (n->kind != YT_SCALAR || sched_parse(n->str, &c->optim.schedule))
            return fail(x, n->line, path, "one of constant, cosine, linear, wsd", n);
        return 0;
    case KT_RESUME:
        if (n->kind != YT_SCALAR || !n->str[0])
            return fail(x, n->line, path, "auto, never or a checkpoint directory", n);
        free(c->train.resume_path);
        c->train.resume_path = NULL;
        b = n->plain ? yt_bool(n->str) : -1;
        if (b == 1 || !strcmp(n->str, "auto")) c->train.resume = CFG_RESUME_AUTO;
        else if (b == 0 || !strcmp(n->str, "never")) c->train.resume = CFG_RESUME_NEVER;
        else if (!(c->train.resume_path = strdup(n->str))) return err_set(x->err, "out of memory");
        else c->train.resume = CFG_RESUME_PATH;
        return 0;
    case KT_ARCH: {
        if (n->kind != YT_MAP) return fail(x, n->line, path, "a mapping of config.json keys", n);
        for (int i = 0; i < n->n && !x->snapshot; i++) { /* a typo would otherwise leave the default in place */
            const char *key = n->keys[i], *best = NULL;
            int known = 0, best_d = 1 << 30;
            /* the config.json keys of every family; model/config.c checks them per family */
            for (const char *const *a = model_config_all_keys(); *a && !known; a++) {
                known = !strcmp(key, *a);
                int d = closeness(key, *a);
                if (d >= 0 && d < best_d) best = *a, best_d = d;
            }
            if (known) continue;
            char wb[256], hint[96] = "";
            if (best) snprintf(hint, sizeof hint, " (did you mean '%s'?)", best);
            return err_set(x->err, "%sunknown key '%s.%s'%s: model.arch takes config.json keys",
                           where(x, n->key_lines[i], wb, sizeof wb), path, err_q(key, -1), hint);
        }
        cJSON *j = yt_to_json(n);
        char *s = j ? cJSON_PrintUnformatted(j) : NULL;
        cJSON_Delete(j);
        if (!s) return err_set(x->err, "out of memory");
        free(c->model.arch_json);
        c->model.arch_json = s;
        return 0;
    }
    }
    return err_set(x->err, "internal: key type %d", (int)k->t);
}

static int set_defaults(cfg *c)
{
    static const char *const def_targets[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    memset(c, 0, sizeof *c);
    c->model.aux_coef = 0.02;
    c->data.shuffle = 1;
    c->train.grad_accum = 1;
    c->train.log_every = 1;
    c->train.keep_checkpoints = 3;
    c->train.resume = CFG_RESUME_AUTO;
    c->train.eval_at_start = -1; /* resolved once data.val is known */
    c->optim.beta1 = 0.9;
    c->optim.beta2 = 0.95;
    c->optim.eps = 1e-8;
    c->optim.grad_clip = 1.0;
    c->optim.schedule = SCHED_CONSTANT;
    c->optim.min_lr_ratio = 0.1;
    c->optim.decay_steps = -1; /* resolved after max_steps is known */
    c->dist.zero = -1;
    c->dist.bucket_mb = 4;
    c->dist.overlap = 1;
    c->dist.timeout_s = 600;
    if (!(c->lora.targets = calloc(5, sizeof *c->lora.targets))) return -1;
    for (int i = 0; i < 4; i++)
        if (!(c->lora.targets[c->lora.n_targets++] = strdup(def_targets[i]))) return -1;
    return 0;
}

static const ytnode *lookup(const ytnode *root, const ckey *k)
{
    if (!k->sec) return yt_get(root, k->key);
    const ytnode *sec = yt_get(root, k->sec);
    return sec && sec->kind == YT_MAP ? yt_get(sec, k->key) : NULL;
}

static int key_line(const ytnode *root, const char *sec, const char *key)
{
    const ytnode *s = yt_get(root, sec), *n = s ? yt_get(s, key) : NULL;
    return n ? n->line : -2;
}

/* Checks that involve more than one key, and the defaults that depend on others. */
static int cross_checks(const ctx *x, cfg *c, const ytnode *root)
{
    char wb[300];
    if (!c->model.init_from && !c->model.arch_json)
        return err_set(x->err, "model: give model.init_from (an HF model dir) or model.arch "
                               "(config.json keys for a random init)");
    if (!c->run.name && !(c->run.name = strdup("run"))) return err_set(x->err, "out of memory");
    if (!c->run.dir) {
        size_t n = strlen(c->run.name) + 6;
        if (!(c->run.dir = malloc(n))) return err_set(x->err, "out of memory");
        snprintf(c->run.dir, n, "runs/%s", c->run.name);
    }
    if (c->optim.warmup_steps > c->train.max_steps)
        return err_set(x->err, "%soptim.warmup_steps: %d is more than train.max_steps (%d)",
                       where(x, key_line(root, "optim", "warmup_steps"), wb, sizeof wb),
                       c->optim.warmup_steps, c->train.max_steps);
    int decay_given = c->optim.decay_steps >= 0;
    if (decay_given && c->optim.schedule != SCHED_WSD && !x->snapshot)
        return err_set(x->err, "%soptim.decay_steps: only the wsd schedule has a decay phase (schedule is %s)",
                       where(x, key_line(root, "optim", "decay_steps"), wb, sizeof wb),
                       c->optim.schedule == SCHED_COSINE ? "cosine" : c->optim.schedule == SCHED_LINEAR ? "linear"
                                                                                               : "constant");
    if (!decay_given) { /* wsd's default: the last fifth, or what warmup leaves of it */
        c->optim.decay_steps = c->train.max_steps / 5;
        if (c->optim.warmup_steps + c->optim.decay_steps > c->train.max_steps)
            c->optim.decay_steps = c->train.max_steps - c->optim.warmup_steps;
    }
    if (c->optim.schedule == SCHED_WSD &&
        c->optim.warmup_steps + c->optim.decay_steps > c->train.max_steps)
        return err_set(x->err, "%soptim.decay_steps: warmup_steps + decay_steps (%d + %d) is more "
                               "than train.max_steps (%d)",
                       where(x, key_line(root, "optim", "decay_steps"), wb, sizeof wb),
                       c->optim.warmup_steps, c->optim.decay_steps, c->train.max_steps);
    if (c->train.eval_every > 0 && c->data.n_val == 0)
        return err_set(x->err, "%strain.eval_every: %d but data.val lists no files",
                       where(x, key_line(root, "train", "eval_every"), wb, sizeof wb),
                       c->train.eval_every);
    if (c->train.eval_at_start == 1 && c->data.n_val == 0)
        return err_set(x->err, "%strain.eval_at_start: true but data.val lists no files",
                       where(x, key_line(root, "train", "eval_at_start"), wb, sizeof wb));
    if (c->train.eval_at_start < 0) c->train.eval_at_start = c->data.n_val > 0;
    if (!c->lora.enabled && (c->lora.r || c->lora.alpha) && key_line(root, "lora", "enabled") == -2) {
        int l = key_line(root, "lora", c->lora.r ? "r" : "alpha");
        return err_set(x->err, "%slora.%s is set but lora.enabled is not: add lora.enabled: true for LoRA, or "
                               "lora.enabled: false to train the full model",
                       where(x, l, wb, sizeof wb), c->lora.r ? "r" : "alpha");
    }
    if ((c->model.base_dtype == CFG_BASE_BF16 || c->model.base_dtype == CFG_BASE_F16) && !c->lora.enabled)
        return err_set(x->err, "%smodel.base_dtype: %s keeps a frozen base (LoRA); a full fine-tune trains every "
                               "weight in fp32 with fp32 AdamW state: use auto or float32, or lora.enabled: true",
                       where(x, key_line(root, "model", "base_dtype"), wb, sizeof wb),
                       cfg_base_dtype_name(c->model.base_dtype));
    if (c->lora.init_from && !c->lora.enabled)
        return err_set(x->err, "%slora.init_from: an adapter is given but lora.enabled is false",
                       where(x, key_line(root, "lora", "init_from"), wb, sizeof wb));
    int tl = key_line(root, "lora", "targets");
    for (int i = 0; i < c->lora.n_targets; i++) {
        const char *t = c->lora.targets[i];
        int ok = lora_target_parse(t) >= 0;
        if (!strcmp(t, "gate"))
            return err_set(x->err, "%slora.targets: 'gate' is not a LoRA target (lora.train_router: "
                                   "true trains the router weights fully)", where(x, tl, wb, sizeof wb));
        if (!ok)
            return err_set(x->err, "%slora.targets[%d]: expected one of q_proj, k_proj, v_proj, o_proj and the "
                                   "MLP's w1, w2, w3 (Mixtral) or gate_proj, down_proj, up_proj, got \"%s\"",
                           where(x, tl, wb, sizeof wb), i, err_q(t, -1));
        for (int j = 0; j < i; j++)
            if (lora_target_parse(t) == lora_target_parse(c->lora.targets[j]))
                return err_set(x->err, "%slora.targets: '%s' is listed twice", where(x, tl, wb, sizeof wb),
                               err_q(t, -1));
    }
    if (c->lora.enabled) {
        int el = key_line(root, "lora", "enabled");
        if (!c->lora.r) return err_set(x->err, "%slora.r: required when lora.enabled is true", where(x, el, wb, sizeof wb));
        if (!c->lora.alpha) return err_set(x->err, "%slora.alpha: required when lora.enabled is true", where(x, el, wb, sizeof wb));
        if (!c->lora.n_targets) return err_set(x->err, "%slora.targets: empty while lora.enabled is true", where(x, tl, wb, sizeof wb));
    }
    return 0;
}

/* The whole check: tree (may be NULL) -> c. On failure c is freed. */
static int cfg_from_tree(cfg *c, const ytnode *root, const ctx *x)
{
    if (set_defaults(c)) {
        cfg_free(c);
        return err_set(x->err, "out of memory");
    }
    if (!root || yt_is_null(root)) {
        cfg_free(c);
        return err_set(x->err, "%s%sthe config is empty", x->name ? x->name : "", x->name ? ": " : "");
    }
    if (root->kind != YT_MAP) {
        cfg_free(c);
        return fail(x, root->line, "config", "a mapping of sections (run, model, data, ...)", root);
    }
    int rc = unknown_keys(x, root);
    for (int k = 0; !rc && k < NKEYS; k++) {
        const ytnode *n = lookup(root, &keys[k]);
        if (n && !yt_is_null(n)) rc = set_key(x, c, &keys[k], n);
        else if (keys[k].flags & REQUIRED)
            rc = err_set(x->err, "missing required key '%s.%s'", keys[k].sec, keys[k].key);
    }
    if (!rc) rc = cross_checks(x, c, root);
    if (rc) cfg_free(c);
    return rc;
}

static int parse_and_check(cfg *c, const char *text, const char *name, char **ov, int n_ov, char *err)
{
    ytarena a = {0};
    ytnode *root;
    ctx x = {.name = name, .err = err};
    memset(c, 0, sizeof *c);
    int rc = yt_parse(&a, text, name, 0, &root, err);
    for (int i = 0; !rc && i < n_ov; i++) rc = yt_apply_override(&a, &root, ov[i], err);
    if (!rc) rc = cfg_from_tree(c, root, &x);
    yt_arena_free(&a);
    return rc;
}

int cfg_parse_string(cfg *c, const char *yaml_text, char **overrides, int n_overrides, char *err)
{
    return parse_and_check(c, yaml_text, NULL, overrides, n_overrides, err);
}

const char *cfg_base_dtype_name(int d)
{
    static const char *const names[] = {"auto", "float32", "bfloat16", "float16"};
    return d >= 0 && d < 4 ? names[d] : "?";
}

int cfg_load(cfg *c, const char *yaml_path, char **overrides, int n_overrides, char *err)
{
    memset(c, 0, sizeof *c);
    FILE *f = fopen(yaml_path, "rb");
    if (!f) return err_set(err, "%s: %s", yaml_path, strerror(errno));
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 65536;
            char *t = cap > (2u << 20) ? NULL : realloc(text, cap); /* yt_parse takes 1 MB at most */
            if (!t) {
                free(text);
                fclose(f);
                return err_set(err, "%s: more than 1 MB of YAML (not a config?)", yaml_path);
            }
            text = t;
        }
        size_t got = fread(text + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) break;
    }
    int bad = ferror(f) ? errno : 0;
    fclose(f);
    if (bad) {
        free(text);
        return err_set(err, "%s: %s", yaml_path, strerror(bad));
    }
    text[len] = 0;
    if (strlen(text) != len) {
        free(text);
        return err_set(err, "%s: NUL byte in file (not a YAML text file?)", yaml_path);
    }
    int rc = parse_and_check(c, text, yaml_path, overrides, n_overrides, err);
    free(text);
    return rc;
}

int cfg_from_json(cfg *c, const char *json, char *err)
{
    memset(c, 0, sizeof *c);
    cJSON *j = cJSON_Parse(json);
    if (!j) return err_set(err, "config JSON: not valid JSON");
    ytarena a = {0};
    ytnode *root = yt_from_json(&a, j);
    cJSON_Delete(j);
    ctx x = {.name = NULL, .err = err, .snapshot = 1};
    int rc = root ? cfg_from_tree(c, root, &x) : err_set(err, "out of memory");
    yt_arena_free(&a);
    return rc;
}

static void free_list(char **l, int n)
{
    for (int i = 0; l && i < n; i++) free(l[i]);
    free(l);
}

void cfg_free(cfg *c)
{
    free(c->run.name);
    free(c->run.dir);
    free(c->model.init_from);
    free(c->model.arch_json);
    free(c->tokenizer);
    free_list(c->data.train, c->data.n_train);
    free_list(c->data.val, c->data.n_val);
    free(c->train.resume_path);
    free_list(c->lora.targets, c->lora.n_targets);
    free(c->lora.init_from);
    memset(c, 0, sizeof *c);
}

void cfg_adamw(const cfg *c, adamw_cfg *a)
{
    *a = (adamw_cfg){.beta1 = c->optim.beta1, .beta2 = c->optim.beta2, .eps = c->optim.eps,
                     .weight_decay = c->optim.weight_decay};
}

void cfg_sched(const cfg *c, sched_cfg *s)
{
    *s = (sched_cfg){.kind = c->optim.schedule, .lr = c->optim.lr,
                     .warmup_steps = c->optim.warmup_steps, .max_steps = c->train.max_steps,
                     .min_lr_ratio = c->optim.min_lr_ratio, .decay_steps = c->optim.decay_steps};
}
