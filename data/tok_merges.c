/* tok_merges: model.merges of a tokenizer.json into the merge table (pair -> rank and
 * merged id) and the rank-ordered list GGUF writes, and their accessors. */
#include "data/tok_internal.h"

#include "common/err.h"
#include "common/json.h"

#include <stdlib.h>
#include <string.h>

static void merge_put(tok *t, int32_t a, int32_t b, int32_t rank, int32_t id)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = tok_merge_slot(key, t->merge_mask);; i = (i + 1) & t->merge_mask) {
        tok_mergeslot *e = &t->merges[i];
        if (e->key1 == key + 1 || !e->key1) {   /* a repeated pair: the later rank wins, as in HF */
            *e = (tok_mergeslot){key + 1, rank, id};
            return;
        }
    }
}

/* One merge item: "a b" (exactly one space, as HF splits it) or ["a", "b"]. */
static int merge_item(json_scan *j, int rank, char **a, size_t *al, char **b, size_t *bl, char *err)
{
    if (json_peek(j) == '"') {
        char *s;
        size_t n;
        if (json_string(j, &s, &n)) return -1;
        char *sp = memchr(s, ' ', n);
        if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)) || sp == s || sp + 1 == s + n)
            return err_set(err, "merge %d '%s' is not two pieces", rank + 1, err_q(s, (long)n));
        *a = s, *al = (size_t)(sp - s), *b = sp + 1, *bl = n - *al - 1;
        return 0;
    }
    int st = 0, k = 0, r;
    while ((r = json_array_next(j, &st)) == 1) {
        if (k == 2 || json_peek(j) != '"') break;
        if (json_string(j, k ? b : a, k ? bl : al)) return -1;
        k++;
    }
    if (r < 0) return -1;
    if (r == 1 || k != 2) return err_set(err, "merge %d is neither \"a b\" nor [\"a\", \"b\"]", rank + 1);
    return 0;
}

/* model.merges into the merge table and list; decides whether BPE may run per chunk. */
/* Merges are resolved MQ at a time: the vocab slots of a merge's three strings (a, b,
 * a+b) are prefetched when it is read and looked up MQ merges later, so the cache misses
 * of a 200 k vocab overlap instead of coming one after the other. */
#define MQ 16

typedef struct {
    const char *a, *b;       /* the texts, for messages */
    size_t al, bl;
    char *key;               /* a's key then b's (bytelevel: their bytes); a+b is the whole */
    size_t ka, kb, cap;
    uint64_t h[3];
} pending;

static int pending_set(tok *t, pending *p, const char *a, size_t al, const char *b, size_t bl)
{
    if (al + bl + 1 > p->cap) {
        char *k = realloc(p->key, 2 * (al + bl + 1));
        if (!k) return -1;
        p->key = k;
        p->cap = 2 * (al + bl + 1);
    }
    *p = (pending){a, b, al, bl, p->key, al, bl, p->cap, {0}};
    if (t->bytelevel) {   /* keys are bytes; -1 (a char of neither kind): vocab_id looks up later */
        long ka = tok_to_bytes(a, al, p->key), kb = ka > 0 ? tok_to_bytes(b, bl, p->key + ka) : -1;
        if (ka <= 0 || kb <= 0) return p->ka = 0, 0;
        p->ka = (size_t)ka, p->kb = (size_t)kb;
    } else {
        memcpy(p->key, a, al);
        memcpy(p->key + al, b, bl);
    }
    const tok_strmap *m = &t->vocab;
    p->h[0] = tok_hash(p->key, p->ka);
    p->h[1] = tok_hash(p->key + p->ka, p->kb);
    p->h[2] = tok_hash(p->key, p->ka + p->kb);
    for (int i = 0; i < 3; i++) __builtin_prefetch(&m->slots[p->h[i] & m->mask]);
    return 0;
}

/* The ids of a pending merge into list[rank]; -1 with err when a piece is missing. */
static int pending_get(tok *t, pending *p, int rank, int32_t *out, char *err)
{
    const tok_strmap *m = &t->vocab;
    if (p->ka) {
        out[0] = tok_strmap_get_h(m, p->key, p->ka, p->h[0]);
        out[1] = tok_strmap_get_h(m, p->key + p->ka, p->kb, p->h[1]);
        out[2] = tok_strmap_get_h(m, p->key, p->ka + p->kb, p->h[2]);
    }
    if (!p->ka || out[0] < 0 || out[1] < 0 || out[2] < 0) {   /* the slow way, and the message */
        char *buf = malloc(2 * (p->al + p->bl) + 1);
        if (!buf) return err_set(err, "out of memory");
        memcpy(buf, p->a, p->al);
        memcpy(buf + p->al, p->b, p->bl);
        char *scratch = buf + p->al + p->bl;
        out[0] = tok_vocab_id(t, p->a, p->al, scratch);
        out[1] = tok_vocab_id(t, p->b, p->bl, scratch);
        out[2] = tok_vocab_id(t, buf, p->al + p->bl, scratch);
        if (out[0] < 0 || out[1] < 0 || out[2] < 0) {
            const char *what = out[0] < 0 ? p->a : out[1] < 0 ? p->b : buf;
            long wl = (long)(out[0] < 0 ? p->al : out[1] < 0 ? p->bl : p->al + p->bl);
            err_set(err, "merge %d: '%s' is not in the vocab", rank + 1, err_q(what, wl));
        }
        free(buf);
        if (out[0] < 0 || out[1] < 0 || out[2] < 0) return -1;
    }
    /* A merge across a "\u2581" that starts a word would make per-chunk BPE inexact. */
    if (p->bl >= TOK_META_LEN && !memcmp(p->b, TOK_META, TOK_META_LEN) &&
        !(p->al >= TOK_META_LEN && !memcmp(p->a + p->al - TOK_META_LEN, TOK_META, TOK_META_LEN)))
        t->chunked = 0;
    return 0;
}

int tok_load_merges(tok *t, json_scan *j, char *err)
{
    t->chunked = !t->bytelevel;
    json_scan none;
    char empty[] = "[]";
    if (!j) json_begin(j = &none, empty, 2, err);
    if (json_peek(j) != '[') return err_set(err, "model.merges must be a list");
    size_t cap = 1 << 16;
    int32_t (*list)[3] = t->merge_list = malloc(cap * sizeof *list);
    pending q[MQ] = {{0}};
    int st = 0, r, rank = 0, rc = -1;
    if (!list) goto oom;
    while ((r = json_array_next(j, &st)) == 1) {
        char *a, *b;
        size_t al, bl;
        if (merge_item(j, rank, &a, &al, &b, &bl, err)) goto done;
        if ((size_t)rank == cap) {   /* big blocks grow by mremap: no copy */
            int32_t (*nl)[3] = realloc(list, 2 * cap * sizeof *nl);
            if (!nl) goto oom;
            list = t->merge_list = nl;
            cap *= 2;
        }
        if (rank >= MQ && pending_get(t, &q[rank % MQ], rank - MQ, list[rank - MQ], err)) goto done;
        if (pending_set(t, &q[rank % MQ], a, al, b, bl)) goto oom;
        if (++rank == 1 << 30) break;
    }
    if (r < 0) goto done;
    for (int i = rank > MQ ? rank - MQ : 0; i < rank; i++)
        if (pending_get(t, &q[i % MQ], i, list[i], err)) goto done;
    t->n_merges = rank;
    t->merge_mask = tok_pow2_at_least(2 * (size_t)rank) - 1;
    t->merges = tok_table_alloc((t->merge_mask + 1) * sizeof *t->merges);
    if (!t->merges) goto oom;   /* zeroed: empty */
    for (int i = 0; i < rank; i++) {   /* the slot MQ merges ahead is fetched while this one goes in */
        if (i + MQ < rank) {
            uint64_t key = (uint64_t)(uint32_t)list[i + MQ][0] << 32 | (uint32_t)list[i + MQ][1];
            __builtin_prefetch(&t->merges[tok_merge_slot(key, t->merge_mask)], 1);
        }
        merge_put(t, list[i][0], list[i][1], i, list[i][2]);
    }
    rc = 0;
    goto done;
oom:
    err_set(err, "out of memory");
done:
    for (int i = 0; i < MQ; i++) free(q[i].key);
    return rc;
}

int tok_merge_count(const tok *t) { return t->n_merges; }

int tok_merge_pair(const tok *t, int rank, int32_t *left, int32_t *right)
{
    if (rank < 0 || rank >= t->n_merges) return 0;
    int32_t r, id;
    *left = t->merge_list[rank][0];
    *right = t->merge_list[rank][1];
    return tok_merge_get(t, *left, *right, &r, &id) && r == rank;   /* a later copy of the pair wins */
}
