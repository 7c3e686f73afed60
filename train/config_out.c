/* cfg output: the resolved config as JSON (built field by field), and as YAML printed from
 * that JSON, so the two can never disagree.  Both read back through cfg_load / cfg_from_json. */
#include "train/config.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

static cJSON *str_or_null(const char *s)
{
    return s ? cJSON_CreateString(s) : cJSON_CreateNull();
}

static cJSON *list(char **l, int n)
{
    return n ? cJSON_CreateStringArray((const char *const *)l, n) : cJSON_CreateArray();
}

/* Add name: item to obj; remembers an allocation failure in *ok. */
static void add(cJSON *obj, const char *name, cJSON *item, int *ok)
{
    if (!obj || !item || !cJSON_AddItemToObject(obj, name, item)) {
        cJSON_Delete(item);
        *ok = 0;
    }
}

static cJSON *section(cJSON *root, const char *name, int *ok)
{
    cJSON *s = cJSON_CreateObject();
    add(root, name, s, ok);
    return *ok ? s : NULL;
}

static cJSON *cfg_build(const cfg *c)
{
    int ok = 1;
    cJSON *r = cJSON_CreateObject(), *s;
    if (!r) return NULL;

    s = section(r, "run", &ok);
    add(s, "name", str_or_null(c->run.name), &ok);
    add(s, "dir", str_or_null(c->run.dir), &ok);
    add(s, "seed", cJSON_CreateNumber((double)c->run.seed), &ok);

    s = section(r, "model", &ok);
    add(s, "init_from", str_or_null(c->model.init_from), &ok);
    add(s, "arch", c->model.arch_json ? cJSON_Parse(c->model.arch_json) : cJSON_CreateNull(), &ok);
    add(s, "router_aux_loss_coef",
        c->model.aux_coef_set ? cJSON_CreateNumber(c->model.aux_coef) : cJSON_CreateNull(), &ok);
    add(s, "router_z_loss_coef", cJSON_CreateNumber(c->model.z_coef), &ok);
    add(s, "base_dtype", cJSON_CreateString(cfg_base_dtype_name(c->model.base_dtype)), &ok);

    add(r, "tokenizer", str_or_null(c->tokenizer), &ok);

    s = section(r, "data", &ok);
    add(s, "train", list(c->data.train, c->data.n_train), &ok);
    add(s, "val", list(c->data.val, c->data.n_val), &ok);
    add(s, "seq_len", cJSON_CreateNumber(c->data.seq_len), &ok);
    add(s, "shuffle", cJSON_CreateBool(c->data.shuffle), &ok);
    add(s, "document_mask", cJSON_CreateBool(c->data.document_mask), &ok);

    s = section(r, "train", &ok);
    add(s, "batch_size", cJSON_CreateNumber(c->train.batch_size), &ok);
    add(s, "grad_accum", cJSON_CreateNumber(c->train.grad_accum), &ok);
    add(s, "max_steps", cJSON_CreateNumber(c->train.max_steps), &ok);
    add(s, "log_every", cJSON_CreateNumber(c->train.log_every), &ok);
    add(s, "eval_every", cJSON_CreateNumber(c->train.eval_every), &ok);
    add(s, "eval_batches", cJSON_CreateNumber(c->train.eval_batches), &ok);
    add(s, "save_every", cJSON_CreateNumber(c->train.save_every), &ok);
    add(s, "keep_checkpoints", cJSON_CreateNumber(c->train.keep_checkpoints), &ok);
    add(s, "resume", cJSON_CreateString(c->train.resume == CFG_RESUME_AUTO    ? "auto"
                                        : c->train.resume == CFG_RESUME_NEVER ? "never"
                                                                              : c->train.resume_path),
        &ok);
    add(s, "activation_checkpointing", cJSON_CreateBool(c->train.activation_checkpointing), &ok);
    add(s, "eval_at_start", cJSON_CreateBool(c->train.eval_at_start), &ok);

    s = section(r, "optim", &ok);
    const double betas[2] = {c->optim.beta1, c->optim.beta2};
    add(s, "lr", cJSON_CreateNumber(c->optim.lr), &ok);
    add(s, "betas", cJSON_CreateDoubleArray(betas, 2), &ok);
    add(s, "eps", cJSON_CreateNumber(c->optim.eps), &ok);
    add(s, "weight_decay", cJSON_CreateNumber(c->optim.weight_decay), &ok);
    add(s, "grad_clip", cJSON_CreateNumber(c->optim.grad_clip), &ok);
    add(s, "schedule", cJSON_CreateString(sched_name(c->optim.schedule)), &ok);
    add(s, "warmup_steps", cJSON_CreateNumber(c->optim.warmup_steps), &ok);
    add(s, "min_lr_ratio", cJSON_CreateNumber(c->optim.min_lr_ratio), &ok);
    add(s, "decay_steps", /* only wsd has a decay phase: null elsewhere (the key is refused there) */
        c->optim.schedule == SCHED_WSD ? cJSON_CreateNumber(c->optim.decay_steps) : cJSON_CreateNull(), &ok);

    s = section(r, "lora", &ok);
    add(s, "enabled", cJSON_CreateBool(c->lora.enabled), &ok);
    add(s, "r", c->lora.r ? cJSON_CreateNumber(c->lora.r) : cJSON_CreateNull(), &ok);
    add(s, "alpha", c->lora.alpha ? cJSON_CreateNumber(c->lora.alpha) : cJSON_CreateNull(), &ok);
    add(s, "dropout", cJSON_CreateNumber(c->lora.dropout), &ok);
    add(s, "rslora", cJSON_CreateBool(c->lora.rslora), &ok);
    add(s, "targets", list(c->lora.targets, c->lora.n_targets), &ok);
    add(s, "init_from", str_or_null(c->lora.init_from), &ok);
    add(s, "train_router", cJSON_CreateBool(c->lora.train_router), &ok);

    s = section(r, "dist", &ok);
    add(s, "zero", c->dist.zero >= 0 ? cJSON_CreateNumber(c->dist.zero) : cJSON_CreateNull(), &ok);
    add(s, "bucket_mb", cJSON_CreateNumber(c->dist.bucket_mb), &ok);
    add(s, "overlap", cJSON_CreateBool(c->dist.overlap), &ok);
    add(s, "timeout_s", cJSON_CreateNumber(c->dist.timeout_s), &ok);

    if (!ok) {
        cJSON_Delete(r);
        return NULL;
    }
    return r;
}

char *cfg_to_json(const cfg *c)
{
    cJSON *j = cfg_build(c);
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    return s;
}

/* ---- YAML printing ---- */

/* Shortest text that reads back as exactly x. */
static void print_number(FILE *f, double x)
{
    char buf[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, x);
        if (strtod(buf, NULL) == x) break;
    }
    fputs(buf, f);
}

/* Words YAML 1.1 readers (PyYAML) would take for null, a bool or a number. */
static int looks_typed(const char *s)
{
    static const char *const words[] = {"null", "Null", "NULL", "true", "True", "TRUE",
        "false", "False", "FALSE", "yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON",
        "off", "Off", "OFF", "y", "Y", "n", "N"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (!strcmp(s, words[i])) return 1;
    return 0;
}

/* Plain when unambiguous (names, simple paths), else double-quoted with escapes. */
static void print_string(FILE *f, const char *s)
{
    int plain = (isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == '/') && !looks_typed(s);
    for (const char *p = s; plain && *p; p++)
        plain = isalnum((unsigned char)*p) || strchr("_-./", *p);
    if (plain) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch == '\n') fputs("\\n", f);
        else if (ch == '\t') fputs("\\t", f);
        else if (ch < 0x20 || ch == 0x7f) fprintf(f, "\\x%02x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

/* Scalars, and lists / mappings in flow style ([a, b], {"k": v}). */
static void print_flow(FILE *f, const cJSON *j)
{
    if (cJSON_IsString(j)) print_string(f, j->valuestring);
    else if (cJSON_IsNumber(j)) print_number(f, j->valuedouble);
    else if (cJSON_IsBool(j)) fputs(cJSON_IsTrue(j) ? "true" : "false", f);
    else if (cJSON_IsArray(j) || cJSON_IsObject(j)) {
        int obj = cJSON_IsObject(j);
        fputc(obj ? '{' : '[', f);
        for (const cJSON *k = j->child; k; k = k->next) {
            if (obj) {
                print_string(f, k->string);
                fputs(": ", f);
            }
            print_flow(f, k);
            if (k->next) fputs(", ", f);
        }
        fputc(obj ? '}' : ']', f);
    } else fputs("null", f);
}

/* A mapping in block style, nested mappings indented by two. */
static void print_block(FILE *f, const cJSON *obj, int indent)
{
    for (const cJSON *k = obj->child; k; k = k->next) {
        fprintf(f, "%*s", indent, "");
        print_string(f, k->string);
        if (cJSON_IsObject(k) && k->child) {
            fputs(":\n", f);
            print_block(f, k, indent + 2);
        } else {
            fputs(": ", f);
            print_flow(f, k);
            fputc('\n', f);
        }
    }
}

void cfg_print_yaml(const cfg *c, FILE *f)
{
    cJSON *j = cfg_build(c);
    if (!j) {
        fputs("# out of memory\n", f);
        return;
    }
    fputs("# moet config, every key resolved\n", f);
    print_block(f, j, 0);
    cJSON_Delete(j);
}
