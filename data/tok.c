/* tok: loading a tokenizer.json into lookup tables, normalizer chains and the
 * accessors.  Encoding: tok_encode.c; decoding: tok_decode.c; training: tok_train.c. */
#include "data/tok_internal.h"

#include "common/err.h"
#include "common/fsutil.h"
#include "common/sha256.h"

#include <cJSON.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- helpers */

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

static int strmap_put(tok_strmap *m, const char *key, size_t len, int32_t id)
{
    uint64_t h = tok_hash(key, len);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        tok_strslot *e = &m->slots[i];
        if (!e->key) {
            *e = (tok_strslot){key, (uint32_t)len, (uint32_t)h, id};
            m->n++;
            return 0;
        }
        if (e->hash == (uint32_t)h && e->len == len && !memcmp(e->key, key, len)) return -1;
    }
}

static void merge_put(tok *t, int32_t a, int32_t b, int32_t rank, int32_t id)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint64_t h = key * 0x9e3779b97f4a7c15ull;
    for (size_t i = (h >> 20) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        tok_mergeslot *e = &t->merges[i];
        if (e->key == key || e->key == ~0ull) {   /* a repeated pair: the later rank wins, as in HF */
            *e = (tok_mergeslot){key, rank, id};
            return;
        }
    }
}

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int jbool(const cJSON *o, const char *key, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static int jint(const cJSON *v, long lo, long hi, long *out)
{
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= (double)lo && d <= (double)hi) || d != (double)(long)d) return -1;
    *out = (long)d;
    return 0;
}

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* ------------------------------------------------------------ op chains */

static int push_op(tok_op **ops, int *n, tok_op op)
{
    tok_op *o = realloc(*ops, (size_t)(*n + 1) * sizeof *o);
    if (!o) return -1;
    *ops = o;
    o[(*n)++] = op;
    return 0;
}

static void free_ops(tok_op *ops, int n)
{
    for (int i = 0; i < n; i++) {
        free(ops[i].a);
        free(ops[i].b);
    }
    free(ops);
}

static int prepend_scheme(const cJSON *o, int *scheme)
{
    const char *s = jstr(o, "prepend_scheme");
    if (!s) *scheme = jbool(o, "add_prefix_space", 1) ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
    else if (!strcmp(s, "always")) *scheme = TOK_PREPEND_ALWAYS;
    else if (!strcmp(s, "first")) *scheme = TOK_PREPEND_FIRST;
    else if (!strcmp(s, "never")) *scheme = TOK_PREPEND_NEVER;
    else return -1;
    return 0;
}

/* "▁"-style one-char string field, copied. */
static char *one_char(const cJSON *o, const char *key, const char *dflt)
{
    const char *s = jstr(o, key);
    if (!s) s = dflt;
    size_t n = strlen(s);
    if (!n || tok_utf8_len((const unsigned char *)s, n) != n) return NULL;
    return dupn(s, n);
}

static int parse_normalizer(tok *t, const cJSON *n, const char *path, char *err)
{
    if (!n || cJSON_IsNull(n)) return 0;
    const char *type = jstr(n, "type");
    if (!type) return err_set(err, "%s: normalizer without a type", path);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *e;
        if (!cJSON_IsArray(list)) return err_set(err, "%s: Sequence normalizer without a list", path);
        cJSON_ArrayForEach(e, list) if (parse_normalizer(t, e, path, err)) return -1;
        return 0;
    }
    tok_op op = {0};
    if (!strcmp(type, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (!p) return err_set(err, "%s: Prepend normalizer without a string", path);
        op = (tok_op){.kind = TOK_OP_PREPEND, .a = strdup(p), .alen = strlen(p)};
    } else if (!strcmp(type, "Replace")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        const char *from = jstr(pat, "String"), *to = jstr(n, "content");
        if (!from) return err_set(err, "%s: unsupported normalizer Replace with a Regex pattern", path);
        if (!to || !*from) return err_set(err, "%s: bad Replace normalizer", path);
        op = (tok_op){.kind = TOK_OP_REPLACE, .a = strdup(from), .alen = strlen(from),
                      .b = strdup(to), .blen = strlen(to)};
    } else if (!strcmp(type, "Strip")) {
        op = (tok_op){.kind = TOK_OP_WSTRIP, .start = jbool(n, "strip_left", 1),
                      .stop = jbool(n, "strip_right", 1)};
    } else {
        return err_set(err, "%s: unsupported normalizer type '%s'", path, type);
    }
    if ((op.kind != TOK_OP_WSTRIP && !op.a) || push_op(&t->norm_ops, &t->n_norm_ops, op)) {
        free(op.a);
        free(op.b);
        return err_set(err, "%s: out of memory", path);
    }
    return 0;
}

static int parse_pretok(tok *t, const cJSON *p, const char *path, char *err)
{
    if (!p || cJSON_IsNull(p)) return 0;
    const char *type = jstr(p, "type");
    if (!type) return err_set(err, "%s: pre_tokenizer without a type", path);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers"), *e;
        if (!cJSON_IsArray(list)) return err_set(err, "%s: Sequence pre_tokenizer without a list", path);
        cJSON_ArrayForEach(e, list) if (parse_pretok(t, e, path, err)) return -1;
        return 0;
    }
    if (strcmp(type, "Metaspace"))
        return err_set(err, "%s: unsupported pre_tokenizer type '%s'", path, type);
    if (t->has_meta) return err_set(err, "%s: more than one Metaspace pre_tokenizer", path);
    char *rep = one_char(p, "replacement", TOK_META);
    if (!rep) return err_set(err, "%s: Metaspace replacement must be one character", path);
    t->meta_rep_len = strlen(rep);
    memcpy(t->meta_rep, rep, t->meta_rep_len + 1);
    free(rep);
    if (prepend_scheme(p, &t->meta_prepend))
        return err_set(err, "%s: unknown Metaspace prepend_scheme '%s'", path, jstr(p, "prepend_scheme"));
    t->meta_split = jbool(p, "split", 1);
    t->has_meta = 1;
    return 0;
}

static int parse_decoder(tok *t, const cJSON *d, const char *path, char *err)
{
    if (!d || cJSON_IsNull(d)) return 0;
    t->has_decoder = 1;
    const char *type = jstr(d, "type");
    if (!type) return err_set(err, "%s: decoder without a type", path);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders"), *e;
        if (!cJSON_IsArray(list)) return err_set(err, "%s: Sequence decoder without a list", path);
        cJSON_ArrayForEach(e, list) if (parse_decoder(t, e, path, err)) return -1;
        return 0;
    }
    tok_op op = {0};
    int ok = 1;
    if (!strcmp(type, "Replace")) {
        const char *from = jstr(cJSON_GetObjectItemCaseSensitive(d, "pattern"), "String");
        const char *to = jstr(d, "content");
        if (!from) return err_set(err, "%s: unsupported decoder Replace with a Regex pattern", path);
        if (!to || !*from) return err_set(err, "%s: bad Replace decoder", path);
        op = (tok_op){.kind = TOK_OP_REPLACE, .a = strdup(from), .alen = strlen(from),
                      .b = strdup(to), .blen = strlen(to)};
        ok = op.a && op.b;
    } else if (!strcmp(type, "ByteFallback")) {
        op.kind = TOK_OP_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        op.kind = TOK_OP_FUSE;
    } else if (!strcmp(type, "Strip")) {
        long start = 0, stop = 0;
        const cJSON *s0 = cJSON_GetObjectItemCaseSensitive(d, "start");
        const cJSON *s1 = cJSON_GetObjectItemCaseSensitive(d, "stop");
        if ((s0 && jint(s0, 0, 1 << 20, &start)) || (s1 && jint(s1, 0, 1 << 20, &stop)))
            return err_set(err, "%s: bad Strip decoder", path);
        op = (tok_op){.kind = TOK_OP_STRIP, .a = one_char(d, "content", " "), .start = (int)start,
                      .stop = (int)stop};
        if (!op.a) return err_set(err, "%s: Strip decoder content must be one character", path);
        op.alen = strlen(op.a);
    } else if (!strcmp(type, "Metaspace")) {
        int scheme;
        if (prepend_scheme(d, &scheme)) return err_set(err, "%s: bad Metaspace decoder", path);
        op = (tok_op){.kind = TOK_OP_METASPACE, .a = one_char(d, "replacement", TOK_META),
                      .start = scheme != TOK_PREPEND_NEVER};
        if (!op.a) return err_set(err, "%s: Metaspace replacement must be one character", path);
        op.alen = strlen(op.a);
    } else {
        return err_set(err, "%s: unsupported decoder type '%s'", path, type);
    }
    if (!ok || push_op(&t->dec_ops, &t->n_dec_ops, op)) {
        free(op.a);
        free(op.b);
        return err_set(err, "%s: out of memory", path);
    }
    return 0;
}

/* BOS = the special token TemplateProcessing puts before the sequence. */
static const char *template_bos(const cJSON *pp)
{
    if (!pp || cJSON_IsNull(pp)) return NULL;
    const char *type = jstr(pp, "type");
    if (!type) return NULL;
    if (!strcmp(type, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(pp, "processors")) {
            const char *b = template_bos(e);
            if (b) return b;
        }
        return NULL;
    }
    if (strcmp(type, "TemplateProcessing")) return NULL;
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single");
    const cJSON *first = cJSON_IsArray(single) ? single->child : NULL;
    return jstr(cJSON_GetObjectItemCaseSensitive(first, "SpecialToken"), "id");
}

/* --------------------------------------------------------------- normalize */

int tok_buf_put(char **b, size_t *n, size_t *cap, const void *src, size_t k)
{
    if (*n + k + 1 > *cap) {
        size_t c = *cap ? *cap : 64;
        while (*n + k + 1 > c) c *= 2;
        char *nb = realloc(*b, c);
        if (!nb) return -1;
        *b = nb;
        *cap = c;
    }
    memcpy(*b + *n, src, k);
    *n += k;
    (*b)[*n] = 0;
    return 0;
}

int tok_replace_all(const char *src, size_t n, const char *from, size_t fl, const char *to,
                       size_t tl, char **out, size_t *outn)
{
    char *b = NULL;
    size_t bn = 0, cap = 0;
    if (tok_buf_put(&b, &bn, &cap, "", 0)) return -1;
    const char *p = src, *end = src + n;
    while (p < end) {
        const char *q = memmem(p, (size_t)(end - p), from, fl);
        if (!q) q = end;
        if (tok_buf_put(&b, &bn, &cap, p, (size_t)(q - p))) goto oom;
        if (q == end) break;
        if (tok_buf_put(&b, &bn, &cap, to, tl)) goto oom;
        p = q + fl;
    }
    *out = b;
    *outn = bn;
    return 0;
oom:
    free(b);
    return -1;
}

int tok_normalize(const tok *t, const char *src, size_t n, char **out, size_t *outn)
{
    char *cur = dupn(src, n);
    size_t cn = n;
    if (!cur) return -1;
    for (int i = 0; i < t->n_norm_ops; i++) {
        const tok_op *op = &t->norm_ops[i];
        char *nx = NULL;
        size_t nn = 0;
        if (op->kind == TOK_OP_PREPEND) {
            if (!cn) continue;                 /* HF prepends only to non-empty text */
            nx = malloc(op->alen + cn + 1);
            if (!nx) goto oom;
            memcpy(nx, op->a, op->alen);
            memcpy(nx + op->alen, cur, cn + 1);
            nn = op->alen + cn;
        } else if (op->kind == TOK_OP_REPLACE) {
            if (tok_replace_all(cur, cn, op->a, op->alen, op->b, op->blen, &nx, &nn)) goto oom;
        } else {                               /* TOK_OP_WSTRIP */
            const unsigned char *s = (const unsigned char *)cur;
            size_t a = 0, z = cn;
            while (op->start && a < z) {
                size_t k = tok_utf8_len(s + a, z - a);
                if (!tok_is_space(tok_utf8_cp(s + a, k))) break;
                a += k;
            }
            while (op->stop && z > a) {
                size_t b = z - 1;
                while (b > a && (s[b] & 0xc0) == 0x80) b--;
                size_t k = tok_utf8_len(s + b, z - b);
                if (b + k != z || !tok_is_space(tok_utf8_cp(s + b, k))) break;
                z = b;
            }
            nx = dupn(cur + a, z - a);
            nn = z - a;
            if (!nx) goto oom;
        }
        free(cur);
        cur = nx;
        cn = nn;
    }
    *out = cur;
    *outn = cn;
    return 0;
oom:
    free(cur);
    return -1;
}

/* ------------------------------------------------------------------- load */

static atomic_uint_fast64_t tok_serial_next = 1;

/* model.vocab into the string pool and map; *n_entries, *max_id out. */
static int load_vocab(tok *t, const cJSON *model, const char *path, size_t *n_entries, long *max_id,
                      char *err)
{
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab"), *e;
    if (!cJSON_IsObject(vocab)) return err_set(err, "%s: model.vocab must be an object", path);
    size_t n_vocab = 0, pool_len = 0;
    *max_id = -1;
    cJSON_ArrayForEach(e, vocab) {
        long id;
        if (jint(e, 0, (1L << 30), &id))
            return err_set(err, "%s: vocab entry '%s' has no valid id", path, e->string);
        if (id > *max_id) *max_id = id;
        n_vocab++;
        pool_len += strlen(e->string) + 1;
    }
    t->pool = malloc(pool_len + 1);
    t->vocab.mask = pow2_at_least(2 * n_vocab) - 1;
    t->vocab.slots = calloc(t->vocab.mask + 1, sizeof *t->vocab.slots);
    if (!t->pool || !t->vocab.slots) return err_set(err, "%s: out of memory", path);
    char *pp = t->pool;
    cJSON_ArrayForEach(e, vocab) {
        size_t len = strlen(e->string);
        memcpy(pp, e->string, len + 1);
        if (strmap_put(&t->vocab, pp, len, (int32_t)e->valuedouble))
            return err_set(err, "%s: vocab entry '%s' appears twice", path, e->string);
        pp += len + 1;
    }
    *n_entries = n_vocab;
    return 0;
}

/* Added tokens get their ids as HF's loader gives them, one at a time: the id of
 * the same content among earlier added tokens or in the model vocab, else the
 * next new id (the file's "id" is only compared, with a warning, by HF). */
static int load_added(tok *t, const cJSON *added, long n_model, long *max_id, const char *path,
                      char *err)
{
    const cJSON *e;
    if (added && !cJSON_IsArray(added) && !cJSON_IsNull(added))
        return err_set(err, "%s: added_tokens must be a list", path);
    t->added = calloc((size_t)cJSON_GetArraySize(added) + 1, sizeof *t->added);
    if (!t->added) return err_set(err, "%s: out of memory", path);
    long max_added = -1;
    cJSON_ArrayForEach(e, added) {
        long id;
        const char *c = jstr(e, "content");
        if (jint(cJSON_GetObjectItemCaseSensitive(e, "id"), 0, 1L << 30, &id) || !c)
            return err_set(err, "%s: added token without a valid id and content", path);
        size_t len = strlen(c);
        if (!len) continue;                      /* HF ignores an empty token */
        tok_added tk = {.len = len, .special = jbool(e, "special", 0), .lstrip = jbool(e, "lstrip", 0),
                        .rstrip = jbool(e, "rstrip", 0), .single_word = jbool(e, "single_word", 0)};
        tk.normalized = jbool(e, "normalized", !tk.special);
        int k = 0;
        while (k < t->n_added && !(t->added[k].len == len && !memcmp(t->added[k].content, c, len))) k++;
        if (k < t->n_added) {                    /* repeated: same id, the last flags, special sticks */
            tk.special |= t->added[k].special;
            tk.id = t->added[k].id;
            tk.content = t->added[k].content;
            t->added[k] = tk;
            continue;
        }
        id = tok_strmap_get(&t->vocab, c, len);
        if (id < 0) id = max_added < 0 || (max_added < n_model && n_model) ? n_model : max_added + 1;
        if (id > max_added) max_added = id;
        if (id > *max_id) *max_id = id;
        tk.id = (int32_t)id;
        tk.content = dupn(c, len);
        if (!tk.content) return err_set(err, "%s: out of memory", path);
        t->added[t->n_added++] = tk;
    }
    return 0;
}

/* model.merges into the merge table; decides whether BPE may run per chunk. */
static int load_merges(tok *t, const cJSON *model, const char *path, char *err)
{
    const cJSON *e;
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (merges && !cJSON_IsArray(merges)) return err_set(err, "%s: model.merges must be a list", path);
    int n_merges = cJSON_GetArraySize(merges);
    t->merge_mask = pow2_at_least(2 * (size_t)n_merges) - 1;
    t->merges = malloc((t->merge_mask + 1) * sizeof *t->merges);
    if (!t->merges) return err_set(err, "%s: out of memory", path);
    memset(t->merges, 0xff, (t->merge_mask + 1) * sizeof *t->merges);
    t->chunked = 1;
    int rank = 0;
    char *joined = NULL;
    size_t jcap = 0;
    cJSON_ArrayForEach(e, merges) {
        const char *a, *b;
        size_t al, bl;
        if (cJSON_IsString(e)) {
            const char *sp = strchr(e->valuestring, ' ');
            if (!sp || !sp[1]) {
                free(joined);
                return err_set(err, "%s: merge %d '%s' is not two pieces", path, rank + 1, e->valuestring);
            }
            a = e->valuestring;
            al = (size_t)(sp - a);
            b = sp + 1;
            bl = strlen(b);
        } else if (cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) &&
                   cJSON_IsString(e->child->next)) {
            a = e->child->valuestring;
            al = strlen(a);
            b = e->child->next->valuestring;
            bl = strlen(b);
        } else {
            free(joined);
            return err_set(err, "%s: merge %d is neither \"a b\" nor [\"a\", \"b\"]", path, rank + 1);
        }
        if (al + bl + 1 > jcap) {
            jcap = 2 * (al + bl + 1);
            char *nj = realloc(joined, jcap);
            if (!nj) {
                free(joined);
                return err_set(err, "%s: out of memory", path);
            }
            joined = nj;
        }
        memcpy(joined, a, al);
        memcpy(joined + al, b, bl);
        int32_t ia = tok_strmap_get(&t->vocab, a, al), ib = tok_strmap_get(&t->vocab, b, bl);
        int32_t ij = tok_strmap_get(&t->vocab, joined, al + bl);
        if (ia < 0 || ib < 0 || ij < 0) {
            const char *what = ia < 0 ? a : ib < 0 ? b : joined;
            int wl = (int)(ia < 0 ? al : ib < 0 ? bl : al + bl);
            err_set(err, "%s: merge %d: '%.*s' is not in the vocab", path, rank + 1, wl, what);
            free(joined);
            return -1;
        }
        merge_put(t, ia, ib, rank, ij);
        /* A merge across a "▁" that starts a word would make per-chunk BPE inexact. */
        if (bl >= TOK_META_LEN && !memcmp(b, TOK_META, TOK_META_LEN) &&
            !(al >= TOK_META_LEN && !memcmp(a + al - TOK_META_LEN, TOK_META, TOK_META_LEN)))
            t->chunked = 0;
        rank++;
    }
    free(joined);
    return 0;
}


static int load_model(tok *t, const cJSON *model, const cJSON *added, const char *path, char *err)
{
    const char *type = jstr(model, "type");
    if (!type) type = cJSON_GetObjectItemCaseSensitive(model, "merges") ? "BPE" : "(none)";
    if (strcmp(type, "BPE"))
        return err_set(err, "%s: unsupported tokenizer model type '%s' (moet reads BPE)", path, type);
    const char *csp = jstr(model, "continuing_subword_prefix"), *eow = jstr(model, "end_of_word_suffix");
    if ((csp && *csp) || (eow && *eow))
        return err_set(err, "%s: unsupported BPE option %s", path,
                       csp && *csp ? "continuing_subword_prefix" : "end_of_word_suffix");
    t->byte_fallback = jbool(model, "byte_fallback", 0);
    t->fuse_unk = jbool(model, "fuse_unk", 0);
    t->ignore_merges = jbool(model, "ignore_merges", 0);

    size_t n_vocab = 0;
    long max_id = -1;
    if (load_vocab(t, model, path, &n_vocab, &max_id, err) ||
        load_added(t, added, (long)n_vocab, &max_id, path, err))
        return -1;
    if (max_id < 0) return err_set(err, "%s: empty vocab", path);
    t->n_vocab = (int)max_id + 1;
    t->piece = calloc((size_t)t->n_vocab, sizeof *t->piece);
    t->piece_len = calloc((size_t)t->n_vocab, sizeof *t->piece_len);
    t->type = calloc((size_t)t->n_vocab, 1);
    t->special = calloc((size_t)t->n_vocab, 1);
    if (!t->piece || !t->piece_len || !t->type || !t->special)
        return err_set(err, "%s: out of memory", path);
    for (size_t i = 0; i <= t->vocab.mask; i++) {
        const tok_strslot *sl = &t->vocab.slots[i];
        if (!sl->key) continue;
        if (t->piece[sl->id]) return err_set(err, "%s: vocab id %d is used twice", path, (int)sl->id);
        t->piece[sl->id] = (char *)sl->key;
        t->piece_len[sl->id] = sl->len;
        t->type[sl->id] = TOK_NORMAL;
    }

    t->unk_id = -1;
    const char *unk = jstr(model, "unk_token");
    if (unk) t->unk_id = tok_strmap_get(&t->vocab, unk, strlen(unk));
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

    return load_merges(t, model, path, err);
}

/* Added tokens' match patterns and pieces: HF (0.23) matches a normalized token
 * by its normalized content and gives that back as its text. */
static int load_added_patterns(tok *t, const char *path, char *err)
{
    for (int i = 0; i < t->n_added; i++) {
        tok_added *a = &t->added[i];
        if (a->normalized) {
            if (tok_normalize(t, a->content, a->len, &a->pattern, &a->plen))
                return err_set(err, "%s: out of memory", path);
        } else {
            a->pattern = dupn(a->content, a->len);
            a->plen = a->len;
            if (!a->pattern) return err_set(err, "%s: out of memory", path);
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

int tok_load(tok **out, const char *path, char *err)
{
    *out = NULL;
    char *buf = NULL;
    size_t len = 0;
    if (fs_read_file(path, &buf, &len, err)) return -1;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (!root) {
        size_t at = end ? (size_t)(end - buf) : 0;
        free(buf);
        return err_set(err, "%s: not valid JSON (error near byte %zu of %zu)", path, at, len);
    }
    tok *t = calloc(1, sizeof *t);
    if (!t) {
        free(buf);
        cJSON_Delete(root);
        return err_set(err, "%s: out of memory", path);
    }
    sha256_hex(buf, len, t->sha256);
    free(buf);
    t->serial = atomic_fetch_add(&tok_serial_next, 1);
    t->bos_id = t->add_bos_id = t->eos_id = t->unk_id = -1;

    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    int rc = -1;
    if (!cJSON_IsObject(model)) {
        err_set(err, "%s: no \"model\" object: not a tokenizer.json", path);
        goto done;
    }
    if (load_model(t, model, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), path, err) ||
        parse_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), path, err) ||
        parse_pretok(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), path, err) ||
        parse_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"), path, err) ||
        load_added_patterns(t, path, err))
        goto done;
    /* BOS: the special token TemplateProcessing puts first, which encode adds.  With
     * no post-processor HF adds nothing; "<s>" is still reported as the BOS id. */
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
    const char *bos = template_bos(pp);
    t->add_bos_id = bos ? tok_id_of(t, bos) : -1;
    t->bos_id = bos ? t->add_bos_id : !pp || cJSON_IsNull(pp) ? tok_id_of(t, "<s>") : -1;
    t->eos_id = tok_id_of(t, "</s>");
    rc = 0;
done:
    cJSON_Delete(root);
    if (rc) tok_free(t);
    else *out = t;
    return rc;
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
    free(t->vocab.slots);
    free(t->merges);
    free_ops(t->norm_ops, t->n_norm_ops);
    free_ops(t->dec_ops, t->n_dec_ops);
    free(t);
}

/* -------------------------------------------------------------- accessors */

int tok_vocab_size(const tok *t) { return t->n_vocab; }
int tok_bos_id(const tok *t) { return t->bos_id; }
int tok_eos_id(const tok *t) { return t->eos_id; }
int tok_unk_id(const tok *t) { return t->unk_id; }
const char *tok_sha256(const tok *t) { return t->sha256; }

int tok_id_of(const tok *t, const char *piece)
{
    size_t n = strlen(piece);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && !memcmp(t->added[i].content, piece, n)) return t->added[i].id;
    return tok_strmap_get(&t->vocab, piece, n);
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
