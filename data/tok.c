/* tok: loading a tokenizer.json into lookup tables, and the accessors.
 *
 * The file is walked with the pull scanner of common/json.h, not as one cJSON tree:
 * model.vocab and model.merges (446 k pairs in gpt-oss's 28 MB file) are read straight
 * from the text, their strings decoded in place; the small sections (added_tokens,
 * normalizer, pre_tokenizer, decoder, post_processor, the model's options) are handed
 * to cJSON one by one.  Merges: tok_merges.c; normalizer / pre-tokenizer / decoder /
 * post-processor: tok_parts.c; encoding: tok_encode.c; decoding: tok_decode.c; training:
 * tok_train.c. */
#include "data/tok_internal.h"

#include "common/err.h"
#include "common/fsutil.h"
#include "common/json.h"
#include "common/sha256.h"

#include <cJSON.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---------------------------------------------------------------- helpers */

size_t tok_pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

/* Add the key at m->base + off (len bytes); -1 when it is there already. */
static int strmap_put(tok_strmap *m, size_t off, size_t len, int32_t id)
{
    const char *key = m->base + off;
    uint64_t h = tok_hash(key, len);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        tok_strslot *e = &m->slots[i];
        if (!e->id1) {
            *e = (tok_strslot){(uint32_t)off, (uint32_t)len, (uint32_t)h, id + 1};
            m->n++;
            return 0;
        }
        if (e->hash == (uint32_t)h && e->len == len && !memcmp(m->base + e->off, key, len)) return -1;
    }
}

/* The hash tables (8 + 16 MB for gpt-oss) come from mmap with MAP_POPULATE: zeroed
 * (an empty table, no fill pass), and where a page fault is expensive (virtual
 * machines) mapping them in bulk costs half as much as faulting them in one by one. */
void *tok_table_alloc(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void tok_table_free(void *p, size_t bytes)
{
    if (p) munmap(p, bytes);
}

const char *tok_jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int tok_jbool(const cJSON *o, const char *key, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

int tok_jint(const cJSON *v, long lo, long hi, long *out)
{
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= (double)lo && d <= (double)hi) || d != (double)(long)d) return -1;
    *out = (long)d;
    return 0;
}

char *tok_dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* -------------------------------------------------------------- sections */

typedef struct {
    char *at;
    size_t len;
    int seen;
} span;

typedef struct {
    span added, normalizer, pre, post, decoder, padding, vocab, merges;
    cJSON *model;            /* the model's keys other than vocab and merges */
    int model_seen;
} sections;

typedef struct {
    char *s;
    uint32_t n;
    int32_t id;
} entry;

/* The load in progress.  In Hugging Face's files "model" comes last, with vocab and
 * merges after its options: then vocab and merges are read in the one pass over the
 * file as the scanner meets them (done = 1); in any other order they are skipped, their
 * spans kept and read afterwards. */
typedef struct {
    tok *t;
    sections sec;
    int parts_done, vocab_done, merges_done;
    entry *ents;             /* the vocab entries, texts in t->pool, for the piece table */
    size_t n_ents;
    long max_id;
    char *err;
} loader;

static int check_model(tok *t, const sections *sec, char *err);
static int load_vocab(loader *ld, json_scan *j);
static int load_parts(loader *ld);

static int record(span *s, json_scan *j, const char *key, char *err)
{
    if (s->seen) return err_set(err, "\"%s\" appears twice", key);
    json_peek(j);
    char *at = j->p;
    if (json_skip(j)) return -1;
    *s = (span){at, (size_t)(j->p - at), 1};
    return 0;
}

static cJSON *parse_span(const span *s, char *err)
{
    cJSON *v = cJSON_ParseWithLength(s->at, s->len);
    if (!v) err_set(err, "out of memory");
    return v;
}

/* The model object: its options into a cJSON object; vocab and merges read where they
 * are when the options and the pre-tokenizer came first, else kept as spans. */
static int read_model(json_scan *j, loader *ld)
{
    sections *sec = &ld->sec;
    char *err = ld->err;
    if (sec->model_seen++) return err_set(err, "\"model\" appears twice");
    if (json_peek(j) != '{') return err_set(err, "\"model\" is not an object");
    sec->model = cJSON_CreateObject();
    if (!sec->model) return err_set(err, "out of memory");
    int st = 0, r;
    char *key;
    size_t kl;
    while ((r = json_object_next(j, &st, &key, &kl)) == 1) {
        if (json_key_is(key, kl, "vocab")) {
            if (sec->vocab.seen) return err_set(err, "\"vocab\" appears twice");
            if (sec->pre.seen && cJSON_GetObjectItemCaseSensitive(sec->model, "type")) {
                sec->vocab.seen = ld->vocab_done = 1;
                if (check_model(ld->t, sec, err) || load_parts(ld) || load_vocab(ld, j)) return -1;
            } else if (record(&sec->vocab, j, "vocab", err)) {
                return -1;
            }
            continue;
        }
        if (json_key_is(key, kl, "merges")) {
            if (sec->merges.seen) return err_set(err, "\"merges\" appears twice");
            if (ld->vocab_done) {
                sec->merges.seen = ld->merges_done = 1;
                if (tok_load_merges(ld->t, j, err)) return -1;
            } else if (record(&sec->merges, j, "merges", err)) {
                return -1;
            }
            continue;
        }
        span v;
        json_peek(j);
        v.at = j->p;
        if (json_skip(j)) return -1;
        v.len = (size_t)(j->p - v.at);
        char name[64];
        if (kl >= sizeof name || memchr(key, 0, kl)) continue;   /* no such option of BPE */
        memcpy(name, key, kl);
        name[kl] = 0;
        cJSON *item = parse_span(&v, err);
        if (!item) return -1;
        cJSON_DeleteItemFromObjectCaseSensitive(sec->model, name);   /* a repeated key: the last wins */
        cJSON_AddItemToObject(sec->model, name, item);
    }
    return r;
}

static int read_sections(char *buf, size_t len, loader *ld)
{
    sections *sec = &ld->sec;
    char *err = ld->err;
    static const char *const names[] = {"added_tokens", "normalizer", "pre_tokenizer", "post_processor",
                                        "decoder", "padding"};
    span *spans[] = {&sec->added, &sec->normalizer, &sec->pre, &sec->post, &sec->decoder, &sec->padding};
    json_scan j;
    json_begin(&j, buf, len, err);
    if (json_peek(&j) != '{') {   /* say whether it is JSON at all */
        if (json_skip(&j) || (json_peek(&j) >= 0 && err_set(err, "not valid JSON: text after the value at byte %zu",
                                                             json_offset(&j))))
            return -1;
        return err_set(err, "not a tokenizer.json (no JSON object with a \"model\")");
    }
    int st = 0, r;
    char *key;
    size_t kl;
    while ((r = json_object_next(&j, &st, &key, &kl)) == 1) {
        size_t i = 0;
        while (i < 6 && !json_key_is(key, kl, names[i])) i++;
        if (i < 6) r = record(spans[i], &j, names[i], err);
        else if (json_key_is(key, kl, "model")) r = read_model(&j, ld);
        else r = json_skip(&j);   /* version, truncation, ...: nothing moet uses */
        if (r) return -1;
    }
    if (r < 0) return -1;
    if (json_peek(&j) >= 0) return err_set(err, "not valid JSON: text after the object at byte %zu", json_offset(&j));
    if (!sec->model_seen) return err_set(err, "no \"model\" object: not a tokenizer.json");
    return 0;
}

/* ------------------------------------------------------------------ vocab */

long tok_to_bytes(const char *s, size_t n, char *out)
{
    const unsigned char *u = (const unsigned char *)s;
    long m = 0;
    for (size_t k = 0; k < n;) {
        size_t l = tok_utf8_len(u + k, n - k);
        int b = l == 1 && u[k] >= 0x80 ? -1 : tok_char_byte(tok_utf8_cp(u + k, l));
        if (b < 0) return -1;
        out[m++] = (char)b;
        k += l;
    }
    return m;
}

int32_t tok_vocab_id(const tok *t, const char *s, size_t n, char *scratch)
{
    if (!t->bytelevel) return tok_strmap_get(&t->vocab, s, n);
    long m = tok_to_bytes(s, n, scratch);
    return m > 0 ? tok_strmap_get(&t->vocab, scratch, (size_t)m) : tok_strmap_get(&t->other, s, n);
}

static int map_alloc(tok_strmap *m, size_t n, const char *base)
{
    m->mask = tok_pow2_at_least(2 * n) - 1;
    m->slots = tok_table_alloc((m->mask + 1) * sizeof *m->slots);   /* zeroed: empty */
    m->base = base;
    return m->slots ? 0 : -1;
}

/* model.vocab (the value at j) into the string pool and the map (bytelevel: keyed by
 * bytes); the entries stay in ld->ents (texts in the pool) for the piece table. */
static int load_vocab(loader *ld, json_scan *j)
{
    tok *t = ld->t;
    char *err = ld->err;
    if (json_peek(j) != '{') return err_set(err, "model.vocab must be an object");
    size_t n = 0, cap = 1 << 16, pool_len = 0;
    entry *e = ld->ents = malloc(cap * sizeof *e);
    if (!e) return err_set(err, "out of memory");
    int st = 0, r;
    char *key;
    size_t kl;
    ld->max_id = -1;
    while ((r = json_object_next(j, &st, &key, &kl)) == 1) {
        long id;
        if (json_int(j, 0, 1L << 30, &id))
            return err_set(err, "vocab entry '%s' has no valid id", err_q(key, (long)kl));
        if (n == cap) {   /* big blocks grow by mremap: no copy */
            entry *ne = realloc(e, 2 * cap * sizeof *ne);
            if (!ne) return err_set(err, "out of memory");
            e = ld->ents = ne;
            cap *= 2;
        }
        e[n++] = (entry){key, (uint32_t)kl, (int32_t)id};
        ld->n_ents = n;
        pool_len += kl + 1;
        if (id > ld->max_id) ld->max_id = id;
    }
    if (r < 0) return -1;
    if (pool_len >= UINT32_MAX) return err_set(err, "model.vocab is too big (%zu bytes of text)", pool_len);
    t->pool = malloc(pool_len + 1);
    if (t->bytelevel) t->bytes_pool = malloc(pool_len + 1);
    if (!t->pool || (t->bytelevel && !t->bytes_pool) ||
        map_alloc(&t->vocab, n, t->bytelevel ? t->bytes_pool : t->pool))
        return err_set(err, "out of memory");
    /* The texts into the pool and (bytelevel) the keys into the byte pool, in entry order;
     * then the map, each slot prefetched PF entries ahead of its insert. */
    enum { PF = 16 };
    int32_t *klen = malloc((n + 1) * sizeof *klen);   /* a key's length; -1: not GPT-2 chars */
    if (!klen) return err_set(err, "out of memory");
    char *pp = t->pool, *bp = t->bytes_pool;
    size_t n_other = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(pp, e[i].s, e[i].n);
        pp[e[i].n] = 0;
        e[i].s = pp;
        pp += e[i].n + 1;
        long m = t->bytelevel ? tok_to_bytes(e[i].s, e[i].n, bp) : (long)e[i].n;
        klen[i] = m > 0 || !t->bytelevel ? (int32_t)m : -1;
        if (t->bytelevel && m > 0) bp[m] = 0, bp += m + 1;
        n_other += klen[i] < 0;
    }
    const char *kbase = t->bytelevel ? t->bytes_pool : t->pool;
    size_t koff = 0, ahead = 0;   /* offsets of key i and of key i + PF */
    for (size_t i = 0; i < PF && i < n; i++) ahead += klen[i] < 0 ? 0 : (size_t)klen[i] + 1;
    for (size_t i = 0; i < n; i++) {
        if (i + PF < n && klen[i + PF] >= 0) {
            __builtin_prefetch(&t->vocab.slots[tok_hash(kbase + ahead, (size_t)klen[i + PF]) & t->vocab.mask], 1);
            ahead += (size_t)klen[i + PF] + 1;
        }
        if (klen[i] < 0) continue;
        if (strmap_put(&t->vocab, koff, (size_t)klen[i], e[i].id)) {
            free(klen);
            return err_set(err, "vocab entry '%s' appears twice", err_q(e[i].s, e[i].n));
        }
        koff += (size_t)klen[i] + 1;
    }
    /* rare: entries BPE on bytes never reaches (klen -1), found only by their text */
    if (n_other && map_alloc(&t->other, n_other, t->pool)) {
        free(klen);
        return err_set(err, "out of memory");
    }
    for (size_t i = 0; n_other && i < n; i++)
        if (klen[i] < 0 && strmap_put(&t->other, (size_t)(e[i].s - t->pool), e[i].n, e[i].id)) {
            free(klen);
            return err_set(err, "vocab entry '%s' appears twice", err_q(e[i].s, e[i].n));
        }
    free(klen);
    for (int b = 0; t->bytelevel && b < 256; b++) {
        char c = (char)b;
        t->byte_sym[b] = tok_strmap_get(&t->vocab, &c, 1);
    }
    return 0;
}

/* The normalizer, pre_tokenizer and decoder sections into t (once: the vocab needs to
 * know whether the pre-tokenizer is byte-level). */
static int load_parts(loader *ld)
{
    if (ld->parts_done++) return 0;
    const span *sp[3] = {&ld->sec.normalizer, &ld->sec.pre, &ld->sec.decoder};
    int (*parse[3])(tok *, const cJSON *, char *) = {tok_parse_normalizer, tok_parse_pretok, tok_parse_decoder};
    for (int i = 0; i < 3; i++) {
        if (!sp[i]->seen) continue;
        cJSON *v = parse_span(sp[i], ld->err);
        int rc = !v || parse[i](ld->t, v, ld->err);
        cJSON_Delete(v);
        if (rc) return -1;
    }
    return 0;
}

/* Added tokens get their ids as HF's loader gives them, one at a time: the id of
 * the same content among earlier added tokens or in the model vocab, else the
 * next new id (the file's "id" is only compared, with a warning, by HF). */
static int load_added(tok *t, const cJSON *added, long n_model, long *max_id, char *err)
{
    const cJSON *e;
    if (added && !cJSON_IsArray(added) && !cJSON_IsNull(added)) return err_set(err, "added_tokens must be a list");
    t->added = calloc((size_t)cJSON_GetArraySize(added) + 1, sizeof *t->added);
    if (!t->added) return err_set(err, "out of memory");
    long max_added = -1;
    cJSON_ArrayForEach(e, added) {
        long id;
        const char *c = tok_jstr(e, "content");
        if (tok_jint(cJSON_GetObjectItemCaseSensitive(e, "id"), 0, 1L << 30, &id) || !c)
            return err_set(err, "added token without a valid id and content");
        size_t len = strlen(c);
        if (!len) continue;                      /* HF ignores an empty token */
        tok_added tk = {.len = len, .special = tok_jbool(e, "special", 0), .lstrip = tok_jbool(e, "lstrip", 0),
                        .rstrip = tok_jbool(e, "rstrip", 0), .single_word = tok_jbool(e, "single_word", 0)};
        tk.normalized = tok_jbool(e, "normalized", !tk.special);
        int k = 0;
        while (k < t->n_added && !(t->added[k].len == len && !memcmp(t->added[k].content, c, len))) k++;
        if (k < t->n_added) {                    /* repeated: same id, the last flags, special sticks */
            tk.special |= t->added[k].special;
            tk.id = t->added[k].id;
            tk.content = t->added[k].content;
            t->added[k] = tk;
            continue;
        }
        char *scratch = malloc(len + 1);
        if (!scratch) return err_set(err, "out of memory");
        id = tok_vocab_id(t, c, len, scratch);
        free(scratch);
        if (id < 0) id = max_added < 0 || (max_added < n_model && n_model) ? n_model : max_added + 1;
        if (id > max_added) max_added = id;
        if (id > *max_id) *max_id = id;
        tk.id = (int32_t)id;
        tk.content = tok_dupn(c, len);
        if (!tk.content) return err_set(err, "out of memory");
        t->added[t->n_added++] = tk;
    }
    return 0;
}

/* Pieces, types and the special ids the encoder needs, once vocab and added tokens are in. */
static int load_tables(tok *t, const cJSON *model, const entry *e, size_t n, long max_id, char *err)
{
    if (max_id < 0) return err_set(err, "empty vocab");
    /* Real vocabularies number their tokens nearly densely (a few unused ids at most); a lone
     * id near 2^30 would make the tables below gigabytes (found by make fuzz). */
    size_t known = n + (size_t)t->n_added;
    if ((double)max_id >= 2.0 * (double)known + 65536.0)
        return err_set(err, "vocab ids are sparse: the largest is %ld but there are only %zu tokens "
                            "(corrupt tokenizer.json?)", max_id, known);
    t->n_vocab = (int)max_id + 1;
    t->piece = calloc((size_t)t->n_vocab, sizeof *t->piece);
    t->piece_len = calloc((size_t)t->n_vocab, sizeof *t->piece_len);
    t->type = calloc((size_t)t->n_vocab, 1);
    t->special = calloc((size_t)t->n_vocab, 1);
    if (!t->piece || !t->piece_len || !t->type || !t->special) return err_set(err, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (t->piece[e[i].id]) return err_set(err, "vocab id %d is used twice", (int)e[i].id);
        t->piece[e[i].id] = e[i].s;
        t->piece_len[e[i].id] = e[i].n;
        t->type[e[i].id] = TOK_NORMAL;
    }
    t->unk_id = -1;
    const char *unk = tok_jstr(model, "unk_token");
    if (unk) {
        char *scratch = malloc(strlen(unk) + 1);
        if (!scratch) return err_set(err, "out of memory");
        t->unk_id = tok_vocab_id(t, unk, strlen(unk), scratch);
        free(scratch);
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = tok_strmap_get(&t->vocab, name, 6);
        if (t->byte_fallback && t->byte_id[b] >= 0 && t->type[t->byte_id[b]] == TOK_NORMAL)
            t->type[t->byte_id[b]] = TOK_BYTE;
    }
    for (int c = 0; c < 128; c++) {
        char s = (char)c;
        t->ascii_id[c] = tok_strmap_get(&t->vocab, &s, 1);
    }
    return 0;
}

/* model.type and the BPE options. */
static int check_model(tok *t, const sections *sec, char *err)
{
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(sec->model, "type");
    if (ty && !cJSON_IsString(ty))
        return err_set(err, "model.type must be a string naming the model (\"BPE\"), not %s",
                       cJSON_IsNull(ty) ? "null" : cJSON_IsNumber(ty) ? "a number" : "a list or object");
    const char *type = ty ? ty->valuestring : sec->merges.seen ? "BPE" : "(none)";
    if (strcmp(type, "BPE"))
        return err_set(err, "unsupported tokenizer model type '%s' (moet reads BPE)", err_q(type, -1));
    const char *csp = tok_jstr(sec->model, "continuing_subword_prefix"), *eow = tok_jstr(sec->model, "end_of_word_suffix");
    if ((csp && *csp) || (eow && *eow))
        return err_set(err, "unsupported BPE option %s", csp && *csp ? "continuing_subword_prefix" : "end_of_word_suffix");
    t->byte_fallback = tok_jbool(sec->model, "byte_fallback", 0);
    t->fuse_unk = tok_jbool(sec->model, "fuse_unk", 0);
    t->ignore_merges = tok_jbool(sec->model, "ignore_merges", 0);
    return 0;
}

/* Added tokens' match patterns and pieces: HF (0.23) matches a normalized token
 * by its normalized content and gives that back as its text. */
static int load_added_patterns(tok *t, char *err)
{
    for (int i = 0; i < t->n_added; i++) {
        tok_added *a = &t->added[i];
        if (a->normalized) {
            if (tok_normalize(t, a->content, a->len, &a->pattern, &a->plen)) return err_set(err, "out of memory");
        } else {
            a->pattern = tok_dupn(a->content, a->len);
            a->plen = a->len;
            if (!a->pattern) return err_set(err, "out of memory");
        }
        t->piece[a->id] = a->pattern;          /* added tokens win in id_to_token */
        t->piece_len[a->id] = (uint32_t)a->plen;
        t->type[a->id] = a->special ? TOK_CONTROL : TOK_USER;
        t->special[a->id] = (uint8_t)a->special;
        if (!a->plen) continue;
        if (a->normalized) {
            t->norm_first[(unsigned char)a->pattern[0]] = 1;
            t->n_norm++;
        } else {
            t->raw_first[(unsigned char)a->pattern[0]] = 1;
            t->n_raw++;
        }
    }
    if (t->unk_id >= 0) t->type[t->unk_id] = TOK_UNKNOWN;
    return 0;
}

/* The first of the names that is a special added token, -1 if none: in a byte-level
 * vocab "</s>" may be plain text (Qwen's is). */
static int first_special(const tok *t, const char *const *names)
{
    for (; *names; names++)
        for (int i = 0; i < t->n_added; i++)
            if (t->added[i].special && !strcmp(t->added[i].content, *names)) return t->added[i].id;
    return -1;
}

/* BOS: the first token the post-processor puts before the text (with no
 * post-processor a special "<s>" is still reported).  EOS: the last it puts after, else
 * the usual special end-of-text names.  Padding: the file's padding.pad_id, else the
 * usual names.  A SentencePiece-style vocab may hold "<s>" / "</s>" as plain entries. */
static void special_ids(tok *t, const sections *sec, const cJSON *padding)
{
    static const char *const bos[] = {"<s>", NULL};
    static const char *const eos[] = {"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", NULL};
    static const char *const pad[] = {"<pad>", "<|padding|>", "<|pad|>", NULL};
    int no_pp = !sec->post.seen || (sec->post.len == 4 && !memcmp(sec->post.at, "null", 4));
    t->bos_id = t->n_tpl_pre ? t->tpl_pre[0] : !no_pp ? -1 : t->bytelevel ? first_special(t, bos) : tok_id_of(t, "<s>");
    t->eos_id = t->n_tpl_post ? t->tpl_post[t->n_tpl_post - 1] : first_special(t, eos);
    if (t->eos_id < 0 && !t->bytelevel) t->eos_id = tok_id_of(t, "</s>");
    long id;
    if (!tok_jint(cJSON_GetObjectItemCaseSensitive(padding, "pad_id"), 0, t->n_vocab - 1, &id) && t->piece[id])
        t->pad_id = (int)id;
    else if ((t->pad_id = first_special(t, pad)) < 0 && t->bytelevel)
        t->pad_id = first_special(t, eos + 1);   /* "<|endoftext|>" ... */
}

/* ------------------------------------------------------------------- load */

static atomic_uint_fast64_t tok_serial_next = 1;

static int load(tok *t, char *buf, size_t len, char *err)
{
    loader ld = {.t = t, .err = err};
    sections *sec = &ld.sec;
    cJSON *added = NULL, *post = NULL, *padding = NULL;
    json_scan j;
    int rc = -1;
    if (read_sections(buf, len, &ld) || check_model(t, sec, err) || load_parts(&ld)) goto done;
    if (!ld.vocab_done) {
        if (!sec->vocab.seen) {
            err_set(err, "model has no vocab");
            goto done;
        }
        json_begin(&j, sec->vocab.at, sec->vocab.len, err);
        if (load_vocab(&ld, &j)) goto done;
    }
    if ((sec->added.seen && !(added = parse_span(&sec->added, err))) ||
        (sec->post.seen && !(post = parse_span(&sec->post, err))) ||
        (sec->padding.seen && !(padding = parse_span(&sec->padding, err))) ||
        load_added(t, added, (long)ld.n_ents, &ld.max_id, err) ||
        load_tables(t, sec->model, ld.ents, ld.n_ents, ld.max_id, err))
        goto done;
    if (!ld.merges_done) {
        if (sec->merges.seen) json_begin(&j, sec->merges.at, sec->merges.len, err);
        if (tok_load_merges(t, sec->merges.seen ? &j : NULL, err)) goto done;
    }
    if (load_added_patterns(t, err) || tok_parse_post(t, post, err)) goto done;
    special_ids(t, sec, padding);
    rc = 0;
done:
    free(ld.ents);
    cJSON_Delete(sec->model);
    cJSON_Delete(added);
    cJSON_Delete(post);
    cJSON_Delete(padding);
    return rc;
}

/* The file, mapped privately: its pages stay those of the page cache (no 28 MB copy)
 * until a string with escapes is decoded in place.  Read into memory where it cannot
 * be mapped.  *mapped says which, for unmap_file. */
static int map_file(const char *path, char **buf, size_t *len, int *mapped, char *err)
{
    size_t size;
    int fd = fs_open_regular(path, &size, err);
    if (fd < 0) return -1;
    void *p = size ? mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    *mapped = p != MAP_FAILED;
    if (!*mapped) return fs_read_file(path, buf, len, err);
    *buf = p;
    *len = size;
    return 0;
}

static void unmap_file(char *buf, size_t len, int mapped)
{
    if (mapped) munmap(buf, len);
    else free(buf);
}

/* The file's sha256 and UTF-8 check, on a second (read-only) mapping of it and a thread
 * of their own while the first one is parsed -- in place, so not the bytes to hash. */
typedef struct {
    const char *buf;
    size_t len, bad;
    int not_utf8;
    char sha256[65];
} digest;

static void *digest_run(void *p)
{
    digest *d = p;
    sha256_hex(d->buf, d->len, d->sha256);
    d->not_utf8 = json_utf8_check(d->buf, d->len, &d->bad) != 0;
    return NULL;
}

int tok_load(tok **out, const char *path, char *err)
{
    *out = NULL;
    char *buf = NULL;
    size_t len = 0;
    int mapped;
    if (map_file(path, &buf, &len, &mapped, err)) return -1;
    tok *t = calloc(1, sizeof *t);
    if (!t) {
        unmap_file(buf, len, mapped);
        return err_set(err, "%s: out of memory", path);
    }
    t->serial = atomic_fetch_add(&tok_serial_next, 1);
    t->bos_id = t->eos_id = t->unk_id = t->pad_id = -1;
    tok_char_byte_init();
    digest d = {.len = len};
    void *ro = MAP_FAILED;
    pthread_t th;
    int threaded = 0;
    if (mapped) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) ro = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (fd >= 0) close(fd);
    }
    d.buf = ro != MAP_FAILED ? ro : buf;
    if (ro != MAP_FAILED) threaded = !pthread_create(&th, NULL, digest_run, &d);
    if (!threaded) digest_run(&d);   /* before parsing changes buf */
    int rc = load(t, buf, len, err);
    if (threaded) pthread_join(th, NULL);
    if (ro != MAP_FAILED) munmap(ro, len);
    unmap_file(buf, len, mapped);
    memcpy(t->sha256, d.sha256, sizeof t->sha256);
    if (d.not_utf8) rc = err_set(err, "not UTF-8 text (byte %zu)", d.bad);
    if (rc) {
        err_wrap(err, "%s", path);
        tok_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

void tok_free(tok *t)
{
    if (!t) return;
    tok_encode_forget(t);
    for (int i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].pattern);
    }
    free(t->added);
    free(t->piece);
    free(t->piece_len);
    free(t->type);
    free(t->special);
    free(t->pool);
    tok_table_free(t->vocab.slots, (t->vocab.mask + 1) * sizeof *t->vocab.slots);
    free(t->bytes_pool);
    tok_table_free(t->other.slots, (t->other.mask + 1) * sizeof *t->other.slots);
    tok_table_free(t->merges, (t->merge_mask + 1) * sizeof *t->merges);
    free(t->merge_list);
    tok_free_parts(t);
    free(t);
}

/* -------------------------------------------------------------- accessors */

int tok_vocab_size(const tok *t) { return t->n_vocab; }
int tok_bos_id(const tok *t) { return t->bos_id; }
int tok_eos_id(const tok *t) { return t->eos_id; }
int tok_unk_id(const tok *t) { return t->unk_id; }
int tok_pad_id(const tok *t) { return t->pad_id; }
int tok_is_bytelevel(const tok *t) { return t->bytelevel; }
const char *tok_sha256(const tok *t) { return t->sha256; }

int tok_id_of(const tok *t, const char *piece)
{
    size_t n = strlen(piece);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && !memcmp(t->added[i].content, piece, n)) return t->added[i].id;
    char small[256], *scratch = n < sizeof small ? small : malloc(n + 1);
    if (!scratch) return -1;
    int32_t id = tok_vocab_id(t, piece, n, scratch);
    if (scratch != small) free(scratch);
    return id;
}

const char *tok_piece(const tok *t, int id)
{
    return id >= 0 && id < t->n_vocab ? t->piece[id] : NULL;
}

int tok_piece_type(const tok *t, int id)
{
    return id >= 0 && id < t->n_vocab && t->type[id] ? t->type[id] : TOK_NORMAL;
}

float tok_piece_score(const tok *t, int id)
{
    if (tok_piece_type(t, id) != TOK_NORMAL || !tok_piece(t, id)) return 0.0f;
    const char *p = t->piece[id];
    size_t n = t->piece_len[id], i = 0;
    while (i + TOK_META_LEN <= n && !memcmp(p + i, TOK_META, TOK_META_LEN)) i += TOK_META_LEN;
    if (n && i == n) return -1e9f;
    return -(float)(id - 259);
}

const char *tok_pre_regex(const tok *t, int i)
{
    for (int k = 0; k < t->n_pre; k++)
        if (t->pre[k].re && i-- == 0) return tok_regex_pattern(t->pre[k].re);
    return NULL;
}

void tok_ids_free(tok_ids *v)
{
    free(v->ids);
    *v = (tok_ids){0};
}

int tok_ids_push(tok_ids *v, int32_t id)
{
    if (v->n == v->cap) {
        size_t c = v->cap ? 2 * v->cap : 64;
        int32_t *n = realloc(v->ids, c * sizeof *n);
        if (!n) return -1;
        v->ids = n;
        v->cap = c;
    }
    v->ids[v->n++] = id;
    return 0;
}
