/* prep: read inputs, tokenize documents in parallel, pack them into shards (see prep.h). */
#include "data/prep.h"

#include "common/err.h"
#include "common/fsutil.h"
#include "data/shard.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_UNITS 2048               /* documents tokenized in one parallel sweep */
#define CHUNK_BYTES (16u << 20)

enum { DOC_OK, DOC_EMPTY, DOC_BAD, DOC_NO_TARGET };

typedef struct {       /* one document to be, before tokenizing */
    const char *p;
    size_t len;
    int file;
    int64_t line;      /* 1-based line where it starts */
    int json;
} unit;

typedef struct {
    chat_seq seq;
    int status;
    char why[ERR_MAX];
} result;

typedef struct {       /* one split's output: rows being filled, shard being written */
    const char *name;  /* "train" / "val" */
    shard_writer *w;
    int32_t *tok;      /* [seq_len] the row being filled */
    uint8_t *mask, *ds;
    int fill;
    int64_t rows, docs;
    int shards;        /* shards started */
} packer;

typedef struct {
    const prep_opts *o;
    tok *t;
    chat_template chat;       /* o->chat, or the tokenizer's own when not given */
    int32_t bos, eos;
    shard_info meta;
    unit *u;
    result *r;
    int n;                    /* units in the chunk */
    size_t chunk_bytes;
    struct { void *base; size_t len; } *maps;  /* input files the chunk points into */
    int n_maps;
    packer pk[2];             /* train, val */
    prep_stats *st;
    char stage[4096];         /* OUT/.prep-PID: shards wait here until the run succeeded */
    double t0, last_report, bytes_total;
} prep_ctx;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void report(const prep_ctx *c, int kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void report(const prep_ctx *c, int kind, const char *fmt, ...)
{
    if (!c->o->report) return;
    char line[ERR_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    c->o->report(c->o->ctx, kind, line);
}

void prep_defaults(prep_opts *o)
{
    memset(o, 0, sizeof *o);
    o->seq_len = 2048;
    o->rows_per_shard = 2048;
    o->chat = CHAT_MISTRAL;
}

/* ------------------------------------------------------------ one document */

static void text_doc(const tok *t, const char *p, size_t len, result *r)
{
    int32_t bos = tok_bos_id(t), eos = tok_eos_id(t);   /* a BOS is optional (Qwen has none) */
    if ((bos >= 0 && chat_seq_push(&r->seq, &bos, 1, 0)) || chat_seq_encode(&r->seq, t, p, len, 1, r->why) ||
        chat_seq_push(&r->seq, &eos, 1, 1)) {
        if (!r->why[0]) snprintf(r->why, sizeof r->why, "out of memory");
        r->status = DOC_BAD;
    }
}

static int bad(result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(result *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof r->why, fmt, ap);
    va_end(ap);
    r->status = DOC_BAD;
    return -1;
}

static void chat_doc(const tok *t, chat_template tpl, const cJSON *msgs, result *r)
{
    if (!cJSON_IsArray(msgs)) {
        bad(r, "\"messages\" is not an array");
        return;
    }
    int n = cJSON_GetArraySize(msgs), i = 0;
    if (n == 0) {
        r->status = DOC_EMPTY;
        return;
    }
    chat_msg *m = calloc(n, sizeof *m);
    if (!m) {
        bad(r, "out of memory");
        return;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(e, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsObject(e)) bad(r, "messages[%d] is not an object", i);
        else if (!cJSON_IsString(role)) bad(r, "messages[%d] has no string \"role\"", i);
        else if (!cJSON_IsString(content)) bad(r, "messages[%d] has no string \"content\"", i);
        if (r->status == DOC_BAD) break;
        m[i].role = role->valuestring;
        m[i].content = content->valuestring;
        m[i].content_len = strlen(content->valuestring);
        i++;
    }
    if (r->status != DOC_BAD && chat_render(t, tpl, m, n, &r->seq, r->why)) r->status = DOC_BAD;
    free(m);
    if (r->status == DOC_OK && !memchr(r->seq.mask, 1, r->seq.n)) r->status = DOC_NO_TARGET; /* no assistant turn */
}

static void json_doc(const tok *t, chat_template tpl, const char *line, size_t len, result *r)
{
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(line, len, &end, 0);
    if (!j) {
        bad(r, "invalid JSON (near byte %zu)", end && end >= line ? (size_t)(end - line) + 1 : (size_t)1);
        return;
    }
    for (const char *q = end; q && q < line + len; q++)
        if (*q != ' ' && *q != '\t' && *q != '\r') {
            bad(r, "invalid JSON (text after the object at byte %zu)", (size_t)(q - line) + 1);
            goto done;
        }
    if (!cJSON_IsObject(j)) {
        bad(r, "not a JSON object");
        goto done;
    }
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(j, "text");
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages");
    if (text) {
        if (!cJSON_IsString(text)) bad(r, "\"text\" is not a string");
        else if (!text->valuestring[0]) r->status = DOC_EMPTY;
        else text_doc(t, text->valuestring, strlen(text->valuestring), r);
    } else if (msgs) {
        chat_doc(t, tpl, msgs, r);
    } else {
        bad(r, "no \"text\" or \"messages\" field");
    }
done:
    cJSON_Delete(j);
}

int prep_json_line(const tok *t, chat_template tpl, const char *line, size_t len, chat_seq *out, char *why)
{
    result r = {0};
    json_doc(t, tpl, line, len, &r);
    if (r.status == DOC_OK) {
        int rc = chat_seq_push(out, r.seq.ids, r.seq.n, 0);
        if (!rc) memcpy(out->mask + out->n - r.seq.n, r.seq.mask, r.seq.n);
        chat_seq_free(&r.seq);
        return rc ? err_set(why, "out of memory") : 0;
    }
    chat_seq_free(&r.seq);
    if (r.status == DOC_EMPTY || r.status == DOC_NO_TARGET) return 1;
    snprintf(why, ERR_MAX, "%s", r.why);
    return -1;
}

static void process(const prep_ctx *c, const unit *u, result *r)
{
    memset(r, 0, sizeof *r);
    if (u->json) json_doc(c->t, c->chat, u->p, u->len, r);
    else if (u->len == 0) r->status = DOC_EMPTY;
    else text_doc(c->t, u->p, u->len, r);
    if (r->status != DOC_OK) chat_seq_free(&r->seq);
}

/* ------------------------------------------------------------ packing */

static int packer_emit_row(prep_ctx *c, packer *pk, char *err)
{
    const prep_opts *o = c->o;
    if (!pk->w) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s-%05d.h5", c->stage, pk->name, pk->shards);
        if (shard_writer_create(&pk->w, path, o->seq_len, &c->meta, 1, 1, err)) return -1;
        pk->shards++;
    }
    if (shard_writer_append(pk->w, pk->tok, pk->mask, pk->ds, err)) return -1;
    pk->rows++;
    pk->fill = 0;
    if (shard_writer_rows(pk->w) == o->rows_per_shard) {
        shard_writer *w = pk->w;
        pk->w = NULL;
        if (shard_writer_close_nosync(w, err)) return -1;
    }
    return 0;
}

static int packer_add(prep_ctx *c, packer *pk, const chat_seq *s, char *err)
{
    int T = c->o->seq_len;
    for (size_t i = 0; i < s->n; i++) {
        pk->tok[pk->fill] = s->ids[i];
        pk->mask[pk->fill] = s->mask[i];
        pk->ds[pk->fill] = i == 0;
        c->st->targets += s->mask[i];
        if (++pk->fill == T && packer_emit_row(c, pk, err)) return -1;
    }
    pk->docs++;
    c->st->tokens += (int64_t)s->n;
    return 0;
}

static int packer_finish(prep_ctx *c, packer *pk, char *err)
{
    if (pk->fill > 0) {
        c->st->padding += c->o->seq_len - pk->fill;
        while (pk->fill < c->o->seq_len) {
            pk->tok[pk->fill] = c->eos;
            pk->mask[pk->fill] = pk->ds[pk->fill] = 0;
            pk->fill++;
        }
        if (packer_emit_row(c, pk, err)) return -1;
    }
    if (pk->w) {
        shard_writer *w = pk->w;
        pk->w = NULL;
        return shard_writer_close_nosync(w, err);
    }
    return 0;
}

static int is_val(const prep_ctx *c, int64_t doc)
{
    if (c->o->val_fraction <= 0) return 0;
    uint64_t z = c->o->seed + 0x9e3779b97f4a7c15ull * (uint64_t)(doc + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53 < c->o->val_fraction;
}

/* ------------------------------------------------------------ chunks */

/* Tokenize the chunk in parallel, then pack it in order.  Unmaps every input file
 * the chunk pointed into, except the last one when keep_last (still being read). */
static int flush_chunk(prep_ctx *c, int keep_last, double bytes_done, char *err)
{
    const prep_opts *o = c->o;
    int n = c->n;
#pragma omp parallel for schedule(dynamic, 1) num_threads(o->threads > 0 ? o->threads : omp_get_max_threads())
    for (int i = 0; i < n; i++) process(c, &c->u[i], &c->r[i]);

    int rc = 0;
    for (int i = 0; i < n; i++) {
        result *r = &c->r[i];
        if (rc == 0 && r->status == DOC_BAD) {
            c->st->skipped_lines++;
            if (o->fatal_errors) {
                rc = err_set(err, "%s:%lld: %s", o->inputs[c->u[i].file], (long long)c->u[i].line, r->why);
            } else {
                report(c, PREP_WARNING, "%s:%lld: %s (skipped)", o->inputs[c->u[i].file],
                       (long long)c->u[i].line, r->why);
            }
        } else if (rc == 0 && r->status == DOC_EMPTY) {
            c->st->empty_documents++;
        } else if (rc == 0 && r->status == DOC_NO_TARGET) {
            c->st->no_target_conversations++;
        } else if (rc == 0) {
            int v = is_val(c, c->st->documents++);
            rc = packer_add(c, &c->pk[v], &r->seq, err);
        }
        chat_seq_free(&r->seq);
    }
    c->n = 0;
    c->chunk_bytes = 0;
    int keep = keep_last && c->n_maps > 0;
    for (int m = 0; m < c->n_maps - keep; m++) munmap(c->maps[m].base, c->maps[m].len);
    if (keep) c->maps[0] = c->maps[c->n_maps - 1];
    c->n_maps = keep;

    double now = now_s();
    if (rc == 0 && keep_last && now - c->last_report >= 1.0) {  /* the summary covers the end */
        c->last_report = now;
        double mb = bytes_done / 1e6, dt = now - c->t0;
        report(c, PREP_PROGRESS, "prep: %.1f / %.1f MB (%.0f%%), %.1f MB/s, %lld documents", mb,
               c->bytes_total / 1e6, c->bytes_total > 0 ? 100.0 * bytes_done / c->bytes_total : 100.0,
               dt > 0 ? mb / dt : 0.0, (long long)c->st->documents);
    }
    return rc;
}

static int add_unit(prep_ctx *c, const char *p, size_t len, int file, int64_t line, int json, double bytes_done,
                    char *err)
{
    c->u[c->n] = (unit){p, len, file, line, json};
    c->n++;
    c->chunk_bytes += len;
    if (c->n == CHUNK_UNITS || c->chunk_bytes >= CHUNK_BYTES) return flush_chunk(c, 1, bytes_done, err);
    return 0;
}

static int blank(const char *p, const char *e)
{
    for (; p < e; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r') return 0;
    return 1;
}

/* Cut one mapped input into units. */
static int split_file(prep_ctx *c, int f, const char *buf, size_t len, double base, char *err)
{
    const char *name = c->o->inputs[f];
    size_t nl = strlen(name);
    int json = nl >= 6 && !strcmp(name + nl - 6, ".jsonl");
    if (!json && !c->o->split_paragraphs) {
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) len--;
        return add_unit(c, buf, len, f, 1, 0, base + len, err);
    }
    const char *p = buf, *end = buf + len, *block = NULL, *block_end = NULL;
    int64_t line = 1, block_line = 0;
    for (; p < end; line++) {
        const char *e = memchr(p, '\n', end - p);
        if (!e) e = end;
        int is_blank = blank(p, e);
        double done = base + (e - buf);
        if (json) {
            if (!is_blank && add_unit(c, p, e - p, f, line, 1, done, err)) return -1;
        } else if (!is_blank) {
            if (!block) block = p, block_line = line;
            block_end = e > p && e[-1] == '\r' ? e - 1 : e;
        } else if (block) {
            if (add_unit(c, block, block_end - block, f, block_line, 0, done, err)) return -1;
            block = NULL;
        }
        p = e + 1;
    }
    if (block) return add_unit(c, block, block_end - block, f, block_line, 0, base + len, err);
    return 0;
}

static int read_inputs(prep_ctx *c, char *err)
{
    double base = 0;
    for (int f = 0; f < c->o->n_inputs; f++) {
        const char *path = c->o->inputs[f];
        int fd = open(path, O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st)) {
            if (fd >= 0) close(fd);
            return err_set(err, "%s: %s", path, strerror(errno));
        }
        const char *buf = "";
        size_t len = (size_t)st.st_size;
        if (len > 0) {
            void *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
            if (m == MAP_FAILED) {
                close(fd);
                return err_set(err, "%s: cannot map: %s", path, strerror(errno));
            }
            madvise(m, len, MADV_SEQUENTIAL);
            c->maps[c->n_maps].base = m, c->maps[c->n_maps].len = len;
            c->n_maps++;
            buf = m;
        }
        close(fd);
        if (split_file(c, f, buf, len, base, err)) return -1;
        base += len;
        c->st->bytes = base;
    }
    return flush_chunk(c, 0, base, err);
}

/* ------------------------------------------------------------ the run */

static int check_inputs(const prep_opts *o, double *total, char *err)
{
    if (o->n_inputs < 1) return err_set(err, "no input files");
    if (strlen(o->out_dir) > 3900) return err_set(err, "--out path is too long");
    if (o->seq_len < 1) return err_set(err, "--seq-len must be >= 1");
    if (!(o->val_fraction >= 0 && o->val_fraction < 1)) return err_set(err, "--val-fraction must be in [0, 1)");
    if (o->rows_per_shard < 1) return err_set(err, "--rows-per-shard must be >= 1");
    *total = 0;
    for (int i = 0; i < o->n_inputs; i++) {
        const char *p = o->inputs[i];
        size_t n = strlen(p);
        struct stat st;
        if (!(n >= 4 && !strcmp(p + n - 4, ".txt")) && !(n >= 6 && !strcmp(p + n - 6, ".jsonl")))
            return err_set(err, "%s: unsupported input (want .txt or .jsonl)", p);
        if (stat(p, &st)) return err_set(err, "%s: %s", p, strerror(errno));
        if (!S_ISREG(st.st_mode)) return err_set(err, "%s: not a regular file", p);
        *total += (double)st.st_size;
    }
    return 0;
}

static int make_dirs(const char *dir, char *err)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == 0) {
            char keep = *s;
            *s = 0;
            if (mkdir(p, 0755) && errno != EEXIST) return err_set(err, "%s: cannot create: %s", p, strerror(errno));
            *s = keep;
            if (!keep) break;
        }
    }
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode)) return err_set(err, "%s: not a directory", dir);
    return 0;
}

/* Move the staged shards into OUT (each rename atomic), drop shards of the same
 * names that an earlier, longer run left beyond the new count, remove the stage. */
static int publish(prep_ctx *c, char *err)
{
    char from[4200], to[4200];
    /* The shards were closed without fsync (two per file made 1-row shards ~9 ms each): one
     * syncfs makes the whole stage durable before anything moves into OUT. */
    int fd = open(c->stage, O_RDONLY | O_DIRECTORY);
    int bad = fd < 0 || syncfs(fd);
    if (fd >= 0) close(fd);
    if (bad) return err_set(err, "%s: cannot sync the shards to disk: %s", c->stage, strerror(errno));
    for (int s = 0; s < 2; s++) {
        const packer *pk = &c->pk[s];
        for (int k = 0; k < pk->shards; k++) {
            snprintf(from, sizeof from, "%s/%s-%05d.h5", c->stage, pk->name, k);
            snprintf(to, sizeof to, "%s/%s-%05d.h5", c->o->out_dir, pk->name, k);
            if (rename(from, to)) return err_set(err, "%s: cannot move into place: %s", to, strerror(errno));
        }
        for (int k = pk->shards;; k++) {
            snprintf(to, sizeof to, "%s/%s-%05d.h5", c->o->out_dir, pk->name, k);
            if (unlink(to)) break;
        }
    }
    return fs_fsync_dir(c->o->out_dir, err); /* the renames */
}

/* The stage and whatever it still holds go (after success it is empty); OUT keeps what it had. */
static void unstage(prep_ctx *c) { fs_rm_rf(c->stage, NULL); }

int prep_run(const prep_opts *o, prep_stats *st, char *err)
{
    memset(st, 0, sizeof *st);
    prep_ctx c = {.o = o, .st = st, .t0 = now_s()};
    c.last_report = c.t0;
    if (check_inputs(o, &c.bytes_total, err)) return -1;
    if (tok_load(&c.t, o->tokenizer, err)) return strstr(err, o->tokenizer) ? -1 : err_wrap(err, "%s", o->tokenizer);
    c.bos = tok_bos_id(c.t), c.eos = tok_eos_id(c.t);
    int rc = -1, made = 0; /* made: levels of OUT this run created, removed again on failure */
    if (c.eos < 0) {   /* a BOS is optional: Qwen's and gpt-oss's tokenizers have none */
        err_set(err, "%s: the tokenizer has no EOS token; prep needs one to end documents", o->tokenizer);
        goto done;
    }
    c.meta.vocab_size = tok_vocab_size(c.t), c.meta.bos_id = c.bos, c.meta.eos_id = c.eos;
    c.meta.rows = o->rows_per_shard; /* chunks no bigger than a shard */
    snprintf(c.meta.tokenizer_sha256, sizeof c.meta.tokenizer_sha256, "%s", tok_sha256(c.t));
    c.chat = o->chat_given ? o->chat : chat_template_default(c.t);
    snprintf(c.meta.chat_template, sizeof c.meta.chat_template, "%s", chat_template_name(c.chat));
    st->chat = c.chat;
    made = fs_missing_levels(o->out_dir);
    if (make_dirs(o->out_dir, err)) goto done;
    fs_remove_stale(o->out_dir, ".prep-"); /* stages of killed runs */
    snprintf(c.stage, sizeof c.stage, "%s/.prep-%d", o->out_dir, (int)getpid());
    if (mkdir(c.stage, 0755)) {
        err_set(err, "%s: cannot create: %s", c.stage, strerror(errno));
        c.stage[0] = 0;
        goto done;
    }
    c.u = malloc(sizeof *c.u * CHUNK_UNITS);
    c.r = malloc(sizeof *c.r * CHUNK_UNITS);
    c.maps = malloc(sizeof *c.maps * (o->n_inputs + 1));
    if (!c.u || !c.r || !c.maps) goto oom;
    for (int s = 0; s < 2; s++) {
        packer *pk = &c.pk[s];
        pk->name = s ? "val" : "train";
        pk->tok = malloc(sizeof *pk->tok * o->seq_len);
        pk->mask = malloc(o->seq_len), pk->ds = malloc(o->seq_len);
        if (!pk->tok || !pk->mask || !pk->ds) goto oom;
    }
    if (read_inputs(&c, err)) goto done;
    if (st->documents == 0) {
        err_set(err, "no documents in the input (%lld bad lines skipped, %lld empty documents, %lld conversations "
                     "without an assistant turn)",
                (long long)st->skipped_lines, (long long)st->empty_documents, (long long)st->no_target_conversations);
        goto done;
    }
    if (packer_finish(&c, &c.pk[0], err) || packer_finish(&c, &c.pk[1], err)) goto done;
    if (publish(&c, err)) goto done;
    st->train_documents = c.pk[0].docs, st->val_documents = c.pk[1].docs;
    st->train_rows = c.pk[0].rows, st->val_rows = c.pk[1].rows;
    st->train_shards = c.pk[0].shards, st->val_shards = c.pk[1].shards;
    rc = 0;
    goto done;
oom:
    err_set(err, "out of memory");
done:
    for (int m = 0; m < c.n_maps; m++) munmap(c.maps[m].base, c.maps[m].len);
    for (int s = 0; s < 2; s++) {
        shard_writer_abort(c.pk[s].w);
        c.pk[s].w = NULL;
        free(c.pk[s].tok), free(c.pk[s].mask), free(c.pk[s].ds);
    }
    if (c.stage[0]) unstage(&c);
    if (rc && made) {
        char out[4096];
        snprintf(out, sizeof out, "%s", o->out_dir);
        fs_remove_levels(out, made);  /* rmdir only: empty directories */
    }
    free(c.u), free(c.r), free(c.maps);
    tok_free(c.t);
    st->seconds = now_s() - c.t0;
    return rc;
}
