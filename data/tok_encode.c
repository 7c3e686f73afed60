/* tok_encode: text -> ids, as HF tokenizers' BPE does it.
 *
 * Pipeline per call: split the raw text on non-normalized added tokens; normalize
 * each remaining piece; split it on normalized added tokens; pre-tokenize
 * (tok_pretok.c) into words; BPE each word; put the post-processor's tokens around.
 * A byte-level tokenizer's BPE starts from the word's bytes (each the vocab entry
 * of its GPT-2 char) and looks words up by their bytes (tok.c keys the vocab so).
 * Regex pre-tokenizers need valid UTF-8: bytes that are not (text Hugging Face
 * cannot take at all) are cut out of the text there and encoded as a word of their
 * own, so decode gives them back.
 *
 * BPE of one word (HF word.rs merge_all): symbols start as the word's chars (or
 * their <0xXX> bytes, or <unk>); repeatedly merge the adjacent pair of lowest
 * merge rank, leftmost first, using a min-heap of (rank, position) over a linked
 * list of symbols and skipping stale entries: O(n log n).
 *
 * Speed: with no pre-tokenizer a whole text is one "word".  When no merge joins
 * a piece ending in a non-"▁" char to a piece starting with "▁" (checked at load:
 * t->chunked), no merge can ever cross a "▁" that follows a non-"▁" char, so the
 * word is cut there into chunks whose BPE is independent and exact.  Chunks
 * repeat ("▁the"), so each thread caches chunk -> ids. */
#include "data/tok_internal.h"

#include "common/err.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* -------------------------------------------------- per-thread chunk cache */

#define CACHE_MAX_ENTRIES (1u << 16)
#define CACHE_MAX_KEY 128

typedef struct {
    uint64_t hash;
    uint32_t key_off, key_len, ids_off, n_ids;
} cache_entry;

typedef struct {
    uint64_t serial;          /* the tok these entries belong to */
    uint32_t *slots;          /* entry index + 1, 0 = empty; 2 * CACHE_MAX_ENTRIES */
    cache_entry *e;
    size_t n;
    char *keys;
    size_t klen, kcap;
    int32_t *ids;
    size_t ilen, icap;
} chunk_cache;

static _Thread_local chunk_cache *tls_cache;
static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void cache_destroy(void *p)
{
    chunk_cache *c = p;
    if (!c) return;
    free(c->slots);
    free(c->e);
    free(c->keys);
    free(c->ids);
    free(c);
}

static void cache_key_init(void) { pthread_key_create(&cache_key, cache_destroy); }

static void cache_clear(chunk_cache *c, uint64_t serial)
{
    memset(c->slots, 0, 2 * CACHE_MAX_ENTRIES * sizeof *c->slots);
    c->n = c->klen = c->ilen = 0;
    c->serial = serial;
}

/* This thread's cache for t (NULL if it cannot be made: encoding goes on without). */
static chunk_cache *cache_for(const tok *t)
{
    chunk_cache *c = tls_cache;
    if (!c) {
        pthread_once(&cache_once, cache_key_init);
        c = calloc(1, sizeof *c);
        if (!c) return NULL;
        c->slots = calloc(2 * CACHE_MAX_ENTRIES, sizeof *c->slots);
        c->e = malloc(CACHE_MAX_ENTRIES * sizeof *c->e);
        if (!c->slots || !c->e) {
            cache_destroy(c);
            return NULL;
        }
        c->serial = t->serial;
        tls_cache = c;
        pthread_setspecific(cache_key, c);   /* freed when the thread exits */
    }
    if (c->serial != t->serial) cache_clear(c, t->serial);
    return c;
}

static const cache_entry *cache_get(const chunk_cache *c, const char *s, size_t n, uint64_t h)
{
    const uint32_t mask = 2 * CACHE_MAX_ENTRIES - 1;
    for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
        uint32_t k = c->slots[i];
        if (!k) return NULL;
        const cache_entry *e = &c->e[k - 1];
        if (e->hash == h && e->key_len == n && !memcmp(c->keys + e->key_off, s, n)) return e;
    }
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 4096;
    while (c < need) c *= 2;
    void *np = realloc(*p, c * elem);
    if (!np) return -1;
    *p = np;
    *cap = c;
    return 0;
}

static void cache_put(chunk_cache *c, const char *s, size_t n, uint64_t h, const int32_t *ids, size_t k)
{
    if (c->n >= CACHE_MAX_ENTRIES) cache_clear(c, c->serial);   /* full: start over */
    if (grow((void **)&c->keys, &c->kcap, c->klen + n, 1) ||
        grow((void **)&c->ids, &c->icap, c->ilen + k, sizeof *c->ids))
        return;
    cache_entry *e = &c->e[c->n];
    *e = (cache_entry){h, (uint32_t)c->klen, (uint32_t)n, (uint32_t)c->ilen, (uint32_t)k};
    memcpy(c->keys + c->klen, s, n);
    if (k) memcpy(c->ids + c->ilen, ids, k * sizeof *ids);   /* ids may be NULL when k is 0 */
    c->klen += n;
    c->ilen += k;
    const uint32_t mask = 2 * CACHE_MAX_ENTRIES - 1;
    uint32_t i = (uint32_t)h & mask;
    while (c->slots[i]) i = (i + 1) & mask;
    c->slots[i] = (uint32_t)++c->n;
}

/* ---------------------------------------------------------------- BPE */

typedef struct {
    const tok *t;
    tok_ids *out;
    chunk_cache *cache;
    int32_t *sym, *prev, *next;   /* symbol id and linked list, by position */
    size_t sym_cap;
    uint64_t *heap;               /* rank << 32 | position, min-heap */
    size_t heap_cap;
    tok_pretok_scratch pre;       /* pre-tokenizer buffers */
    char *err;
    int oom;
} enc;

static void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], v = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    if (m) h[i] = v;
    return top;
}

static int push_id(enc *e, int32_t id)
{
    if (tok_ids_push(e->out, id)) {
        e->oom = 1;
        return err_set(e->err, "encode: out of memory");
    }
    return 0;
}

/* The word's initial symbols into e->sym; returns their count. */
static size_t bpe_symbols(enc *e, const unsigned char *w, size_t n)
{
    const tok *t = e->t;
    size_t ns = 0;
    int pending_unk = 0;
    for (size_t i = 0; i < n;) {
        if (t->bytelevel) {   /* one symbol per byte, or <unk> handling as for a char */
            int32_t id = t->byte_sym[w[i++]];
            if (id >= 0) {
                if (pending_unk) e->sym[ns++] = t->unk_id;
                pending_unk = 0;
                e->sym[ns++] = id;
            } else if (t->unk_id >= 0) {
                if (pending_unk && !t->fuse_unk) e->sym[ns++] = t->unk_id;
                pending_unk = 1;
            }
            continue;
        }
        size_t k = tok_utf8_len(w + i, n - i);
        int32_t id = k == 1 && w[i] < 0x80 ? t->ascii_id[w[i]]
                                           : tok_strmap_get(&t->vocab, (const char *)w + i, k);
        if (id >= 0) {
            if (pending_unk) e->sym[ns++] = t->unk_id;
            pending_unk = 0;
            e->sym[ns++] = id;
        } else {
            int all = t->byte_fallback;
            for (size_t j = 0; all && j < k; j++) all = t->byte_id[w[i + j]] >= 0;
            if (all) {
                for (size_t j = 0; j < k; j++) e->sym[ns++] = t->byte_id[w[i + j]];
            } else if (t->unk_id >= 0) {
                if (pending_unk && !t->fuse_unk) e->sym[ns++] = t->unk_id;
                pending_unk = 1;
            }   /* no unk token: HF drops the char */
        }
        i += k;
    }
    if (pending_unk) e->sym[ns++] = t->unk_id;
    return ns;
}

/* BPE one word (or chunk) w[0..n), appending its ids. */
static int bpe(enc *e, const char *w, size_t n)
{
    const tok *t = e->t;
    if (grow((void **)&e->sym, &e->sym_cap, n + 1, sizeof *e->sym)) goto oom;
    if (e->sym_cap > e->heap_cap) {
        free(e->prev);
        free(e->next);
        free(e->heap);
        e->prev = malloc(e->sym_cap * sizeof *e->prev);
        e->next = malloc(e->sym_cap * sizeof *e->next);
        e->heap = malloc(3 * e->sym_cap * sizeof *e->heap);
        e->heap_cap = e->prev && e->next && e->heap ? e->sym_cap : 0;
        if (!e->heap_cap) goto oom;
    }
    size_t ns = bpe_symbols(e, (const unsigned char *)w, n);
    int32_t *sym = e->sym, *prev = e->prev, *next = e->next;
    uint64_t *heap = e->heap;
    size_t hn = 0;
    int32_t rank, id;
    for (size_t i = 0; i < ns; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < ns ? (int32_t)i + 1 : -1;
        if (i + 1 < ns && tok_merge_get(t, sym[i], sym[i + 1], &rank, &id))
            heap_push(heap, &hn, (uint64_t)rank << 32 | i);
    }
    /* Pushes: ns - 1 initial pairs plus at most two per merge, and there are
     * fewer than ns merges, so the heap never holds more than 3 * ns entries. */
    while (hn) {
        uint64_t top = heap_pop(heap, &hn);
        int32_t pos = (int32_t)(top & 0xffffffffu), r = (int32_t)(top >> 32);
        if (sym[pos] < 0 || next[pos] < 0) continue;          /* merged away / last */
        int32_t q = next[pos];
        if (!tok_merge_get(t, sym[pos], sym[q], &rank, &id) || rank != r) continue;   /* stale */
        sym[pos] = id;
        sym[q] = -1;
        next[pos] = next[q];
        if (next[q] >= 0) prev[next[q]] = pos;
        int32_t unused;
        if (prev[pos] >= 0 && tok_merge_get(t, sym[prev[pos]], id, &rank, &unused))
            heap_push(heap, &hn, (uint64_t)rank << 32 | (uint32_t)prev[pos]);
        if (next[pos] >= 0 && tok_merge_get(t, id, sym[next[pos]], &rank, &unused))
            heap_push(heap, &hn, (uint64_t)rank << 32 | (uint32_t)pos);
    }
    for (size_t i = 0; i < ns; i++)
        if (sym[i] >= 0 && push_id(e, sym[i])) return -1;
    return 0;
oom:
    e->oom = 1;
    return err_set(e->err, "encode: out of memory");
}

/* BPE of a chunk through the cache. */
static int bpe_cached(enc *e, const char *w, size_t n)
{
    chunk_cache *c = e->cache;
    if (!c || n > CACHE_MAX_KEY) return bpe(e, w, n);
    uint64_t h = tok_hash(w, n);
    const cache_entry *hit = cache_get(c, w, n, h);
    if (hit) {
        for (uint32_t i = 0; i < hit->n_ids; i++)
            if (push_id(e, c->ids[hit->ids_off + i])) return -1;
        return 0;
    }
    /* A word can encode to no ids (no unk token: HF drops what is not in the vocab), with
     * nothing in out yet: its ids are then NULL, and NULL + 0 is undefined in C. */
    size_t before = e->out->n, k;
    if (bpe(e, w, n)) return -1;
    k = e->out->n - before;
    cache_put(c, w, n, h, k ? e->out->ids + before : NULL, k);
    return 0;
}

static int is_meta(const char *s, size_t i, size_t n)
{
    return i + TOK_META_LEN <= n && !memcmp(s + i, TOK_META, TOK_META_LEN);
}

/* The model on one pre-tokenized word (tok_word_fn). */
static int model_word(void *ctx, const char *w, size_t n)
{
    enc *e = ctx;
    const tok *t = e->t;
    if (!n) return 0;
    if (t->ignore_merges) {
        int32_t id = tok_strmap_get(&t->vocab, w, n);
        if (id >= 0) return push_id(e, id);
    }
    if (t->bytelevel) return bpe_cached(e, w, n);
    if (!t->chunked) return bpe(e, w, n);
    size_t a = 0;
    for (size_t i = 1; i < n; i++) {
        if (w[i] != TOK_META[0] || !is_meta(w, i, n)) continue;
        if (i >= TOK_META_LEN && is_meta(w, i - TOK_META_LEN, n)) continue;   /* inside a \u2581 run */
        if (bpe_cached(e, w + a, i - a)) return -1;
        a = i;
    }
    return bpe_cached(e, w + a, n - a);
}

/* Pre-tokenize and encode a normalized piece.  With a regex step, runs of bytes that
 * are not valid UTF-8 are words of their own. */
static int pretok(enc *e, const char *s, size_t n, int origin)
{
    const tok *t = e->t;
    if (!t->has_regex) return tok_pretokenize(t, &e->pre, 0, s, n, origin, model_word, e, e->err);
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t a = i;
        while (i < n) {
            if (u[i] < 0x80) {
                i++;
                continue;
            }
            size_t k = tok_utf8_len(u + i, n - i);
            if (k == 1) break;
            i += k;
        }
        if (i > a && tok_pretokenize(t, &e->pre, 0, s + a, i - a, origin && a == 0, model_word, e, e->err))
            return -1;
        a = i;
        while (i < n && u[i] >= 0x80 && tok_utf8_len(u + i, n - i) == 1) i++;
        if (i > a && model_word(e, s + a, i - a)) return -1;
    }
    return 0;
}

/* ----------------------------------------------------------- added tokens */

static uint32_t cp_before(const unsigned char *s, size_t i, size_t *start)
{
    size_t b = i - 1;
    while (b > 0 && i - b < 4 && (s[b] & 0xc0) == 0x80) b--;
    size_t k = tok_utf8_len(s + b, i - b);
    if (b + k != i) b = i - 1, k = 1;
    *start = b;
    return k == 1 ? s[b] : tok_utf8_cp(s + b, k);
}

/* The next added-token match in s[0..n) at or after *scan (leftmost-longest,
 * then HF's single_word / lstrip / rstrip rules).  start_offset: end of the
 * previous match, lstrip never reaches before it. */
static int next_added(const tok *t, const char *s, size_t n, int normalized, size_t *scan,
                      size_t start_offset, size_t *ms, size_t *me, int32_t *id)
{
    const uint8_t *first = normalized ? t->norm_first : t->raw_first;
    if (!(normalized ? t->n_norm : t->n_raw)) return 0;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = *scan; i < n; i++) {
        if (!first[u[i]]) continue;
        const tok_added *best = NULL;
        for (int k = 0; k < t->n_added; k++) {
            const tok_added *a = &t->added[k];
            if (a->normalized != normalized || !a->plen || a->plen > n - i) continue;
            if ((!best || a->plen > best->plen) && !memcmp(s + i, a->pattern, a->plen)) best = a;
        }
        if (!best) continue;
        size_t start = i, stop = i + best->plen;
        *scan = stop;
        if (best->single_word) {
            size_t b;
            int word_before = start > 0 && tok_is_word(cp_before(u, start, &b));
            size_t k = stop < n ? tok_utf8_len(u + stop, n - stop) : 0;
            int word_after = stop < n && tok_is_word(k == 1 ? u[stop] : tok_utf8_cp(u + stop, k));
            if (word_before || word_after) {
                i = stop - 1;
                continue;
            }
        }
        if (best->lstrip) {
            size_t b, ns = start;
            while (ns > 0 && tok_is_space(cp_before(u, ns, &b))) ns = b;
            start = ns > start_offset ? ns : start_offset;
        }
        if (best->rstrip) {
            while (stop < n) {
                size_t k = tok_utf8_len(u + stop, n - stop);
                if (!tok_is_space(k == 1 ? u[stop] : tok_utf8_cp(u + stop, k))) break;
                stop += k;
            }
            *scan = stop;
        }
        *ms = start;
        *me = stop;
        *id = best->id;
        return 1;
    }
    *scan = n;
    return 0;
}

/* A raw piece between non-normalized added tokens: normalize, split on the
 * normalized added tokens, pre-tokenize and BPE the rest. */
static int segment(enc *e, const char *s, size_t n, int origin)
{
    const tok *t = e->t;
    if (!n) return 0;
    char *norm = NULL;
    size_t nn = n;
    if (t->n_norm_ops) {
        if (tok_normalize(t, s, n, &norm, &nn)) {
            e->oom = 1;
            return err_set(e->err, "encode: out of memory");
        }
        s = norm;
    }
    size_t at = 0, scan = 0, ms, me;
    int32_t id;
    int rc = 0;
    while (!rc && next_added(t, s, nn, 1, &scan, at, &ms, &me, &id)) {
        if (ms > at) rc = pretok(e, s + at, ms - at, origin && at == 0);
        if (!rc) rc = push_id(e, id);
        at = me;
    }
    if (!rc && at < nn) rc = pretok(e, s + at, nn - at, origin && at == 0);
    free(norm);
    return rc;
}

int tok_encode(const tok *t, const char *text, size_t len, int add_bos, tok_ids *out, char *err)
{
    enc e = {.t = t, .out = out, .cache = cache_for(t), .err = err};
    size_t n0 = out->n;
    int rc = 0;
    for (int i = 0; add_bos && !rc && i < t->n_tpl_pre; i++) rc = push_id(&e, t->tpl_pre[i]);
    size_t at = 0, scan = 0, ms, me;
    int32_t id;
    while (!rc && next_added(t, text, len, 0, &scan, at, &ms, &me, &id)) {
        if (ms > at) rc = segment(&e, text + at, ms - at, at == 0);
        if (!rc) rc = push_id(&e, id);
        at = me;
    }
    if (!rc && at < len) rc = segment(&e, text + at, len - at, at == 0);
    for (int i = 0; add_bos && !rc && i < t->n_tpl_post; i++) rc = push_id(&e, t->tpl_post[i]);
    free(e.sym);
    free(e.prev);
    free(e.next);
    free(e.heap);
    tok_pretok_scratch_free(&e.pre);
    if (rc) out->n = n0;
    return rc;
}

/* Called by tok_free: drop this thread's cache entries of t. */
void tok_encode_forget(const tok *t)
{
    if (tls_cache && tls_cache->serial == t->serial) cache_clear(tls_cache, 0);
}
