/* tok_train: learn a byte-fallback BPE tokenizer from text files and write it
 * as a Mistral-shaped tokenizer.json.
 *
 * Words are what the encoder would see between "▁"s: the text normalized as the
 * Mistral normalizer does (a "▁" before the text, every space -> "▁"), cut before
 * each "▁", at control characters (newline, tab: they stay byte pieces, as in
 * Mistral), at invalid UTF-8 and around the literal "<unk>", "<s>", "</s>".  So
 * a learned piece holds "▁" only as its first character, like SentencePiece's.
 *
 * Training is word-count BPE: unique words with their counts; pair counts over
 * all words; a max-heap of pairs (count, then lowest symbol ids: deterministic)
 * with lazy deletion; each merge rewrites only the words holding the pair (an
 * inverted index pair -> words) and updates the counts of the pairs it touches.
 *
 * The alphabet is the most frequent characters covering 99.95% of all
 * characters (SentencePiece's default character_coverage); rarer ones are
 * byte-fallback.  Output ids: 0-2 <unk> <s> </s>, 3-258 <0x00>..<0xFF>, then the
 * merged pieces in the order learned, then the alphabet.  The merges list is
 * written as transformers' SentencePiece converter writes it: every split of
 * every merged piece into two vocab pieces, ordered by the piece's id, so HF's
 * BPE gives what SentencePiece / llama.cpp give with scores -(id - 259). */
#include "data/tok_internal.h"

#include "common/err.h"
#include "common/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define N_FIXED 259          /* 3 specials + 256 byte pieces */
#define COVERAGE 0.9995
#define MAX_WORD 4096        /* bytes; longer runs without a space are cut */

/* ------------------------------------------------------------ small tools */

typedef struct {
    char *b;
    size_t n, cap;
} buf;

static int grow_to(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    void *np = realloc(*p, c * elem);
    if (!np) return -1;
    *p = np;
    *cap = c;
    return 0;
}

static int buf_add(buf *b, const void *s, size_t n)
{
    if (grow_to((void **)&b->b, &b->cap, b->n + n + 1, 1)) return -1;
    memcpy(b->b + b->n, s, n);
    b->n += n;
    return 0;
}

/* String -> index map over strings kept in an arena (offset, length). */
typedef struct {
    uint32_t *slot;          /* index + 1, 0 = empty */
    size_t mask;
    uint64_t *off;           /* arena offset << 24 | length, per index */
    size_t n, offcap;
    buf arena;
} strtab;

static const char *st_str(const strtab *m, size_t i, size_t *len)
{
    *len = m->off[i] & 0xffffff;
    return m->arena.b + (m->off[i] >> 24);
}

static int st_rehash(strtab *m, size_t cap)
{
    uint32_t *s = calloc(cap, sizeof *s);
    if (!s) return -1;
    free(m->slot);
    m->slot = s;
    m->mask = cap - 1;
    for (size_t i = 0; i < m->n; i++) {
        size_t len;
        const char *k = st_str(m, i, &len);
        size_t j = tok_hash(k, len) & m->mask;
        while (s[j]) j = (j + 1) & m->mask;
        s[j] = (uint32_t)i + 1;
    }
    return 0;
}

/* Index of s (added when absent and add != 0); -1 when absent / out of memory. */
static long st_get(strtab *m, const char *s, size_t len, int add)
{
    if (m->slot) {
        for (size_t j = tok_hash(s, len) & m->mask;; j = (j + 1) & m->mask) {
            uint32_t k = m->slot[j];
            if (!k) break;
            size_t kl;
            const char *ks = st_str(m, k - 1, &kl);
            if (kl == len && !memcmp(ks, s, len)) return k - 1;
        }
    }
    if (!add || len > 0xffffff) return -1;
    if ((m->n + 1) * 2 > (m->slot ? m->mask + 1 : 0) && st_rehash(m, m->slot ? 2 * (m->mask + 1) : 1024))
        return -1;
    if (grow_to((void **)&m->off, &m->offcap, m->n + 1, sizeof *m->off)) return -1;
    m->off[m->n] = (uint64_t)m->arena.n << 24 | len;
    if (buf_add(&m->arena, s, len)) return -1;
    size_t j = tok_hash(s, len) & m->mask;
    while (m->slot[j]) j = (j + 1) & m->mask;
    m->slot[j] = (uint32_t)m->n + 1;
    return (long)m->n++;
}

static void st_free(strtab *m)
{
    free(m->slot);
    free(m->off);
    free(m->arena.b);
}

/* ------------------------------------------------------------- word counts */

typedef struct {
    strtab words;            /* unique words */
    int64_t *count;          /* per word */
    size_t count_cap;
    buf cur;                 /* the word being read */
    int64_t n_words;
} counter;

static int flush_word(counter *c)
{
    if (!c->cur.n) return 0;
    size_t n_before = c->words.n;
    long i = st_get(&c->words, c->cur.b, c->cur.n, 1);
    if (i < 0 || grow_to((void **)&c->count, &c->count_cap, (size_t)i + 1, sizeof *c->count)) return -1;
    if (c->words.n > n_before) c->count[i] = 0;
    c->count[i]++;
    c->n_words++;
    c->cur.n = 0;
    return 0;
}

/* Cut one text into words (file header comment) and count them. */
static int count_words(counter *c, const unsigned char *s, size_t n)
{
    int meta = 1;            /* the next word starts with "▁" (the normalizer's Prepend) */
    for (size_t i = 0; i < n;) {
        unsigned ch = s[i];
        if (ch == ' ') {
            if (flush_word(c) || buf_add(&c->cur, TOK_META, TOK_META_LEN)) return -1;
            meta = 0;
            i++;
            continue;
        }
        if (ch < 0x20 || ch == 0x7f) {
            if (flush_word(c)) return -1;
            meta = 0;
            i++;
            continue;
        }
        if (ch == '<') {
            static const char *const specials[] = {"<unk>", "<s>", "</s>"};
            size_t k = 0;
            for (int j = 0; j < 3 && !k; j++) {
                size_t l = strlen(specials[j]);
                if (l <= n - i && !memcmp(s + i, specials[j], l)) k = l;
            }
            if (k) {     /* the encoder splits these off and prepends "▁" to what follows */
                if (flush_word(c)) return -1;
                meta = 1;
                i += k;
                continue;
            }
        }
        size_t k = tok_utf8_len(s + i, n - i);
        if (k == 1 && ch >= 0x80) {            /* invalid UTF-8: a byte piece */
            if (flush_word(c)) return -1;
            meta = 0;
            i++;
            continue;
        }
        if (meta && buf_add(&c->cur, TOK_META, TOK_META_LEN)) return -1;
        meta = 0;
        if (c->cur.n >= MAX_WORD && flush_word(c)) return -1;   /* no sane word is this long */
        if (buf_add(&c->cur, s + i, k)) return -1;
        i += k;
    }
    return flush_word(c);
}

static int count_file(counter *c, const char *path, size_t *bytes, char *err)
{
    size_t n;
    int fd = fs_open_regular(path, &n, err);
    if (fd < 0) return -1;
    *bytes += n;
    if (!n) {
        close(fd);
        return 0;
    }
    void *p = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return err_set(err, "cannot read '%s': %s", err_q(path, -1), strerror(errno));
    int rc = count_words(c, p, n);
    munmap(p, n);
    return rc ? err_set(err, "out of memory counting words") : 0;
}

/* ---------------------------------------------------------------- the BPE */

typedef struct {
    int32_t a, b;            /* symbols */
    int64_t count;
    int32_t *w;              /* words that held this pair (maybe stale, maybe repeated) */
    uint32_t nw, capw;
    int64_t before;          /* count when first touched in the current merge */
    uint32_t stamp;          /* merge number of that touch */
    int banned;              /* its merged string is a reserved one */
} pair;

typedef struct {
    int64_t count;
    int32_t a, b, p;
} heap_ent;

typedef struct {
    /* symbols: 0..n_chars-1 the alphabet, then merged pieces */
    strtab sym;              /* symbol strings */
    int32_t n_chars;
    /* words as symbol runs */
    int32_t *ws;             /* all words' symbols */
    size_t ws_n, ws_cap;
    size_t *w_off;           /* [n_w] start in ws */
    int32_t *w_len;
    int64_t *w_cnt;
    uint32_t *w_stamp;
    size_t n_w, w_cap;
    /* pairs */
    pair *p;
    size_t n_p, p_cap;
    uint32_t *pslot;         /* pair index + 1 */
    size_t pmask;
    heap_ent *h;
    size_t n_h, h_cap;
} bpe;

static int heap_less(const heap_ent *x, const heap_ent *y)   /* x ranks before y */
{
    if (x->count != y->count) return x->count > y->count;
    if (x->a != y->a) return x->a < y->a;
    return x->b < y->b;
}

static int heap_push(bpe *m, int32_t p)
{
    if (grow_to((void **)&m->h, &m->h_cap, m->n_h + 1, sizeof *m->h)) return -1;
    heap_ent v = {m->p[p].count, m->p[p].a, m->p[p].b, p};
    size_t i = m->n_h++;
    while (i && heap_less(&v, &m->h[(i - 1) / 2])) {
        m->h[i] = m->h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    m->h[i] = v;
    return 0;
}

static heap_ent heap_pop(bpe *m)
{
    heap_ent top = m->h[0], v = m->h[--m->n_h];
    size_t i = 0, n = m->n_h;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_less(&m->h[c + 1], &m->h[c])) c++;
        if (!heap_less(&m->h[c], &v)) break;
        m->h[i] = m->h[c];
        i = c;
    }
    if (n) m->h[i] = v;
    return top;
}

static uint64_t pkey(int32_t a, int32_t b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }

static size_t phash(uint64_t k) { return (size_t)((k * 0x9e3779b97f4a7c15ull) >> 17); }

/* Index of pair (a, b), created with count 0 when new; -1 out of memory. */
static long pair_get(bpe *m, int32_t a, int32_t b)
{
    uint64_t k = pkey(a, b);
    if (m->pslot)
        for (size_t j = phash(k) & m->pmask;; j = (j + 1) & m->pmask) {
            uint32_t s = m->pslot[j];
            if (!s) break;
            if (pkey(m->p[s - 1].a, m->p[s - 1].b) == k) return s - 1;
        }
    if ((m->n_p + 1) * 2 > (m->pslot ? m->pmask + 1 : 0)) {
        size_t cap = m->pslot ? 2 * (m->pmask + 1) : 1 << 16;
        uint32_t *ns = calloc(cap, sizeof *ns);
        if (!ns) return -1;
        free(m->pslot);
        m->pslot = ns;
        m->pmask = cap - 1;
        for (size_t i = 0; i < m->n_p; i++) {
            size_t j = phash(pkey(m->p[i].a, m->p[i].b)) & m->pmask;
            while (ns[j]) j = (j + 1) & m->pmask;
            ns[j] = (uint32_t)i + 1;
        }
    }
    if (grow_to((void **)&m->p, &m->p_cap, m->n_p + 1, sizeof *m->p)) return -1;
    m->p[m->n_p] = (pair){.a = a, .b = b};
    size_t j = phash(k) & m->pmask;
    while (m->pslot[j]) j = (j + 1) & m->pmask;
    m->pslot[j] = (uint32_t)m->n_p + 1;
    return (long)m->n_p++;
}

/* Add delta (times the word's count) to pair (a, b) of word w. */
static int pair_add(bpe *m, int32_t a, int32_t b, size_t w, int64_t delta, uint32_t stamp)
{
    long i = pair_get(m, a, b);
    if (i < 0) return -1;
    pair *p = &m->p[i];
    if (p->stamp != stamp) {
        p->stamp = stamp;
        p->before = p->count;
    }
    p->count += delta;
    if (delta > 0 && (!p->nw || p->w[p->nw - 1] != (int32_t)w)) {
        if (p->nw == p->capw) {
            uint32_t c = p->capw ? 2 * p->capw : 4;
            int32_t *nw = realloc(p->w, c * sizeof *nw);
            if (!nw) return -1;
            p->w = nw;
            p->capw = c;
        }
        p->w[p->nw++] = (int32_t)w;
    }
    return 0;
}

static int add_word(bpe *m, const int32_t *s, int32_t len, int64_t count)
{
    if (len < 1) return 0;
    if (grow_to((void **)&m->ws, &m->ws_cap, m->ws_n + (size_t)len, sizeof *m->ws)) return -1;
    if (m->n_w == m->w_cap) {                 /* the four per-word arrays grow together */
        size_t c = m->w_cap ? 2 * m->w_cap : 1024;
        void *a = realloc(m->w_off, c * sizeof *m->w_off);
        if (a) m->w_off = a;
        void *b = a ? realloc(m->w_len, c * sizeof *m->w_len) : NULL;
        if (b) m->w_len = b;
        void *d = b ? realloc(m->w_cnt, c * sizeof *m->w_cnt) : NULL;
        if (d) m->w_cnt = d;
        void *e = d ? realloc(m->w_stamp, c * sizeof *m->w_stamp) : NULL;
        if (!e) return -1;
        m->w_stamp = e;
        m->w_cap = c;
    }
    memcpy(m->ws + m->ws_n, s, (size_t)len * sizeof *s);
    m->w_off[m->n_w] = m->ws_n;
    m->w_len[m->n_w] = len;
    m->w_cnt[m->n_w] = count;
    m->w_stamp[m->n_w] = 0;
    for (int32_t i = 0; i + 1 < len; i++)
        if (pair_add(m, s[i], s[i + 1], m->n_w, count, 0)) return -1;
    m->ws_n += (size_t)len;
    m->n_w++;
    return 0;
}

/* Rewrite every word holding pair pi = (a, b) with the new symbol z. */
static int apply_merge(bpe *m, long pi, int32_t z, uint32_t stamp, int32_t **touched, size_t *n_t,
                       size_t *t_cap)
{
    int32_t a = m->p[pi].a, b = m->p[pi].b;
    int32_t *list = m->p[pi].w;
    uint32_t nl = m->p[pi].nw;
    m->p[pi].w = NULL;
    m->p[pi].nw = m->p[pi].capw = 0;
    int rc = 0;
    for (uint32_t li = 0; li < nl && !rc; li++) {
        size_t w = (size_t)list[li];
        if (m->w_stamp[w] == stamp) continue;
        m->w_stamp[w] = stamp;
        int32_t *s = m->ws + m->w_off[w], len = m->w_len[w];
        int has = 0;
        for (int32_t i = 0; i + 1 < len && !has; i++) has = s[i] == a && s[i + 1] == b;
        if (!has) continue;
        int64_t c = m->w_cnt[w];
        for (int32_t i = 0; i + 1 < len && !rc; i++) rc = pair_add(m, s[i], s[i + 1], w, -c, stamp);
        int32_t j = 0;
        for (int32_t i = 0; i < len; i++) {
            if (i + 1 < len && s[i] == a && s[i + 1] == b) {
                s[j++] = z;
                i++;
            } else {
                s[j++] = s[i];
            }
        }
        m->w_len[w] = len = j;
        for (int32_t i = 0; i + 1 < len && !rc; i++) {
            rc = pair_add(m, s[i], s[i + 1], w, c, stamp);
            if (!rc && grow_to((void **)touched, t_cap, *n_t + 1, sizeof **touched)) rc = -1;
            if (!rc) (*touched)[(*n_t)++] = (int32_t)pair_get(m, s[i], s[i + 1]);
        }
    }
    free(list);
    return rc;
}

static void bpe_free(bpe *m)
{
    st_free(&m->sym);
    free(m->ws);
    free(m->w_off);
    free(m->w_len);
    free(m->w_cnt);
    free(m->w_stamp);
    for (size_t i = 0; i < m->n_p; i++) free(m->p[i].w);
    free(m->p);
    free(m->pslot);
    free(m->h);
}

/* ------------------------------------------------------------------ output */

static int json_str(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    return fputc('"', f) == EOF ? -1 : 0;
}

typedef struct {
    int32_t l, r;            /* final ids of the two halves */
} split;

static int split_cmp(const void *x, const void *y)
{
    const split *a = x, *b = y;
    return a->l != b->l ? (a->l > b->l) - (a->l < b->l) : (a->r > b->r) - (a->r < b->r);
}

/* Write the tokenizer.json: fin holds the output strings by id, by_id[id] the
 * symbol of each id from N_FIXED on (below n_chars: a single character). */
static int write_json(FILE *f, bpe *m, const int32_t *by_id, int32_t n_vocab, strtab *fin)
{
    static const char *const head =
        "{\n"
        "  \"version\": \"1.0\",\n"
        "  \"truncation\": null,\n"
        "  \"padding\": null,\n"
        "  \"added_tokens\": [\n"
        "    {\"id\": 0, \"content\": \"<unk>\", \"single_word\": false, \"lstrip\": false, "
        "\"rstrip\": false, \"normalized\": false, \"special\": true},\n"
        "    {\"id\": 1, \"content\": \"<s>\", \"single_word\": false, \"lstrip\": false, "
        "\"rstrip\": false, \"normalized\": false, \"special\": true},\n"
        "    {\"id\": 2, \"content\": \"</s>\", \"single_word\": false, \"lstrip\": false, "
        "\"rstrip\": false, \"normalized\": false, \"special\": true}\n"
        "  ],\n"
        "  \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [\n"
        "    {\"type\": \"Prepend\", \"prepend\": \"\xe2\x96\x81\"},\n"
        "    {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\xe2\x96\x81\"}]},\n"
        "  \"pre_tokenizer\": null,\n"
        "  \"post_processor\": {\"type\": \"TemplateProcessing\",\n"
        "    \"single\": [{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, "
        "{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}],\n"
        "    \"pair\": [{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, "
        "{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, "
        "{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 1}}, "
        "{\"Sequence\": {\"id\": \"B\", \"type_id\": 1}}],\n"
        "    \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [1], \"tokens\": [\"<s>\"]}}},\n"
        "  \"decoder\": {\"type\": \"Sequence\", \"decoders\": [\n"
        "    {\"type\": \"Replace\", \"pattern\": {\"String\": \"\xe2\x96\x81\"}, \"content\": \" \"},\n"
        "    {\"type\": \"ByteFallback\"},\n"
        "    {\"type\": \"Fuse\"},\n"
        "    {\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]},\n"
        "  \"model\": {\n"
        "    \"type\": \"BPE\",\n"
        "    \"dropout\": null,\n"
        "    \"unk_token\": \"<unk>\",\n"
        "    \"continuing_subword_prefix\": null,\n"
        "    \"end_of_word_suffix\": null,\n"
        "    \"fuse_unk\": true,\n"
        "    \"byte_fallback\": true,\n"
        "    \"ignore_merges\": false,\n"
        "    \"vocab\": {\n";
    fputs(head, f);
    for (int32_t id = 0; id < n_vocab; id++) {
        size_t len;
        const char *s = st_str(fin, (size_t)id, &len);
        fputs("      ", f);
        json_str(f, s, len);
        fprintf(f, ": %d%s\n", id, id + 1 < n_vocab ? "," : "");
    }
    fputs("    },\n    \"merges\": [", f);
    split *sp = NULL;
    size_t sp_cap = 0;
    int first = 1;
    for (int32_t id = N_FIXED; id < n_vocab; id++) {
        if (by_id[id] < m->n_chars) continue;          /* single characters: no merge */
        size_t len;
        const char *s = st_str(fin, (size_t)id, &len);
        size_t ns = 0;
        for (size_t k = 1; k < len; k++) {
            if (((unsigned char)s[k] & 0xc0) == 0x80) continue;   /* not a char boundary */
            long l = st_get(fin, s, k, 0), r = st_get(fin, s + k, len - k, 0);
            if (l < N_FIXED || r < N_FIXED) continue;
            if (grow_to((void **)&sp, &sp_cap, ns + 1, sizeof *sp)) {
                free(sp);
                return -1;
            }
            sp[ns++] = (split){(int32_t)l, (int32_t)r};
        }
        qsort(sp, ns, sizeof *sp, split_cmp);
        for (size_t k = 0; k < ns; k++) {
            size_t ll, rl;
            const char *ls = st_str(fin, (size_t)sp[k].l, &ll), *rs = st_str(fin, (size_t)sp[k].r, &rl);
            char *line = malloc(ll + rl + 2);
            if (!line) {
                free(sp);
                return -1;
            }
            memcpy(line, ls, ll);
            line[ll] = ' ';
            memcpy(line + ll + 1, rs, rl);
            fputs(first ? "\n      " : ",\n      ", f);
            json_str(f, line, ll + rl + 1);
            free(line);
            first = 0;
        }
    }
    free(sp);
    fputs("\n    ]\n  }\n}\n", f);
    return ferror(f) ? -1 : 0;
}

/* The JSON goes to memory, then fs_write_atomic (temp, fsync, rename). */
static int write_atomic(const char *out_path, bpe *m, const int32_t *by_id, int32_t n_vocab,
                        strtab *fin, char *err)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return err_set(err, "out of memory");
    int bad = write_json(f, m, by_id, n_vocab, fin);
    if (fclose(f) || bad) {
        free(text);
        return err_set(err, "out of memory writing '%s'", err_q(out_path, -1));
    }
    int rc = fs_write_atomic(out_path, text, len, err);
    free(text);
    return rc;
}

/* ------------------------------------------------------------------- train */

static int reserved(const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    if ((n == 5 && !memcmp(s, "<unk>", 5)) || (n == 3 && !memcmp(s, "<s>", 3)) ||
        (n == 4 && !memcmp(s, "</s>", 4)))
        return 1;
    return n == 6 && !memcmp(s, "<0x", 3) && s[5] == '>' && s[3] && s[4] && strchr(hex, s[3]) &&
           strchr(hex, s[4]);
}

static void say(void (*progress)(void *, const char *), void *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(void (*progress)(void *, const char *), void *ctx, const char *fmt, ...)
{
    if (!progress) return;
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    progress(ctx, line);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Characters sorted by count (descending), then by their bytes. */
typedef struct {
    const strtab *tab;
    const int64_t *count;
} char_order;

static int char_cmp(const void *x, const void *y, void *arg)
{
    const char_order *o = arg;
    size_t i = *(const size_t *)x, j = *(const size_t *)y, li, lj;
    if (o->count[i] != o->count[j]) return o->count[i] > o->count[j] ? -1 : 1;
    const char *si = st_str(o->tab, i, &li), *sj = st_str(o->tab, j, &lj);
    int c = memcmp(si, sj, li < lj ? li : lj);
    return c ? c : (li > lj) - (li < lj);
}

int tok_train_progress(const char *const *files, int n_files, int vocab_size, int min_freq,
                       const char *out_path, void (*progress)(void *ctx, const char *line),
                       void *ctx, char *err)
{
    if (n_files < 1) return err_set(err, "no input files");
    if (vocab_size <= N_FIXED || vocab_size > (1 << 24))
        return err_set(err, "vocab size %d out of range (%d .. %d: 3 special + 256 byte pieces come first)",
                       vocab_size, N_FIXED + 1, 1 << 24);
    if (min_freq < 1) min_freq = 1;
    double t0 = now_s();
    counter c = {0};
    strtab chars = {0};
    int64_t *ccount = NULL;
    size_t ccap = 0, *order = NULL;
    int32_t *csym = NULL, *run = NULL, *by_id = NULL, *touched = NULL;
    size_t run_cap = 0, t_cap = 0, n_t = 0;
    bpe m = {0};
    strtab fin = {0};
    int rc = -1;

    size_t bytes = 0;
    for (int i = 0; i < n_files; i++)
        if (count_file(&c, files[i], &bytes, err)) goto done;
    if (!c.words.n) {
        err_set(err, "no text in the %d input file%s", n_files, n_files > 1 ? "s" : "");
        goto done;
    }
    say(progress, ctx, "read %.1f MB: %lld words, %zu distinct", bytes / 1e6, (long long)c.n_words,
        c.words.n);

    /* The alphabet: characters by frequency up to COVERAGE of all characters. */
    int64_t total = 0;
    for (size_t w = 0; w < c.words.n; w++) {
        size_t len;
        const unsigned char *s = (const unsigned char *)st_str(&c.words, w, &len);
        for (size_t i = 0; i < len;) {
            size_t k = tok_utf8_len(s + i, len - i), before = chars.n;
            long ci = st_get(&chars, (const char *)s + i, k, 1);
            if (ci < 0 || grow_to((void **)&ccount, &ccap, (size_t)ci + 1, sizeof *ccount)) goto oom;
            if (chars.n > before) ccount[ci] = 0;
            ccount[ci] += c.count[w];
            total += c.count[w];
            i += k;
        }
    }
    order = malloc(chars.n * sizeof *order);
    csym = malloc(chars.n * sizeof *csym);
    if (!order || !csym) goto oom;
    for (size_t i = 0; i < chars.n; i++) order[i] = i, csym[i] = -1;
    char_order co = {&chars, ccount};
    qsort_r(order, chars.n, sizeof *order, char_cmp, &co);
    int64_t cum = 0;
    int32_t avail = vocab_size - N_FIXED;
    for (size_t i = 0; i < chars.n && m.n_chars < avail && cum < COVERAGE * (double)total; i++) {
        size_t len;
        const char *s = st_str(&chars, order[i], &len);
        if (st_get(&m.sym, s, len, 1) < 0) goto oom;
        csym[order[i]] = m.n_chars++;
        cum += ccount[order[i]];
    }
    say(progress, ctx, "alphabet: %d of %zu characters (%.4f%% of the text; the rest byte fallback)",
        m.n_chars, chars.n, 100.0 * (double)cum / (double)total);

    /* Words as runs of alphabet symbols; a character outside it cuts the word. */
    for (size_t w = 0; w < c.words.n; w++) {
        size_t len, nr = 0;
        const unsigned char *s = (const unsigned char *)st_str(&c.words, w, &len);
        if (grow_to((void **)&run, &run_cap, len + 1, sizeof *run)) goto oom;
        for (size_t i = 0; i < len;) {
            size_t k = tok_utf8_len(s + i, len - i);
            int32_t sy = csym[st_get(&chars, (const char *)s + i, k, 0)];
            if (sy >= 0) run[nr++] = sy;
            if (sy < 0 || i + k == len) {
                if (add_word(&m, run, (int32_t)nr, c.count[w])) goto oom;
                nr = 0;
            }
            i += k;
        }
    }
    for (size_t p = 0; p < m.n_p; p++)
        if (m.p[p].count > 0 && heap_push(&m, (int32_t)p)) goto oom;

    /* Merge the most frequent pair until the vocab is full. */
    int32_t target = avail - m.n_chars;
    uint32_t stamp = 1;
    int64_t last = 0;
    int32_t next_say = target / 10 > 0 ? target / 10 : 1;
    while ((int32_t)(m.sym.n - (size_t)m.n_chars) < target && m.n_h) {
        heap_ent e = heap_pop(&m);
        pair *p = &m.p[e.p];
        if (p->banned) continue;
        if (p->count != e.count) {
            if (p->count > 0 && p->count < e.count && heap_push(&m, e.p)) goto oom;
            continue;
        }
        if (p->count < min_freq) break;
        size_t la, lb;
        const char *sa = st_str(&m.sym, (size_t)p->a, &la);
        const char *sb = st_str(&m.sym, (size_t)p->b, &lb);
        char *z = malloc(la + lb);
        if (!z) goto oom;
        memcpy(z, sa, la);
        memcpy(z + la, sb, lb);
        if (reserved(z, la + lb)) {
            p->banned = 1;
            free(z);
            continue;
        }
        long zid = st_get(&m.sym, z, la + lb, 1);
        free(z);
        if (zid < 0) goto oom;
        last = p->count;
        n_t = 0;
        if (apply_merge(&m, e.p, (int32_t)zid, stamp++, &touched, &n_t, &t_cap)) goto oom;
        for (size_t i = 0; i < n_t; i++) {
            pair *q = &m.p[touched[i]];
            if (q->count > q->before) {
                q->before = q->count;
                if (heap_push(&m, touched[i])) goto oom;
            }
        }
        int32_t done_n = (int32_t)(m.sym.n - (size_t)m.n_chars);
        if (done_n >= next_say) {
            say(progress, ctx, "merges: %d/%d pieces, last seen %lld times (%.1f s)", done_n, target,
                (long long)last, now_s() - t0);
            next_say += target / 10 > 0 ? target / 10 : 1;
        }
    }
    int32_t n_merged = (int32_t)(m.sym.n - (size_t)m.n_chars);
    int32_t n_vocab = N_FIXED + n_merged + m.n_chars;
    if (n_merged < target)
        say(progress, ctx, "stopped at %d of %d merged pieces: no pair is seen %d times or more; "
            "vocab is %d, not %d", n_merged, target, min_freq, n_vocab, vocab_size);

    /* Output order: specials, bytes, merged pieces, characters. */
    by_id = malloc((size_t)n_vocab * sizeof *by_id);
    if (!by_id) goto oom;
    static const char *const specials[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++)
        if (st_get(&fin, specials[i], strlen(specials[i]), 1) < 0) goto oom;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        if (st_get(&fin, name, 6, 1) < 0) goto oom;
    }
    for (int32_t i = 0; i < N_FIXED; i++) by_id[i] = -1;
    for (int32_t k = 0; k < n_merged + m.n_chars; k++) {
        int32_t sy = k < n_merged ? m.n_chars + k : k - n_merged;
        size_t len;
        const char *s = st_str(&m.sym, (size_t)sy, &len);
        if (st_get(&fin, s, len, 1) != N_FIXED + k) goto oom;
        by_id[N_FIXED + k] = sy;
    }
    if (write_atomic(out_path, &m, by_id, n_vocab, &fin, err)) goto done;
    say(progress, ctx, "wrote %s: vocab %d (%d merged pieces, %d characters) in %.1f s", out_path,
        n_vocab, n_merged, m.n_chars, now_s() - t0);
    rc = 0;
    goto done;
oom:
    err_set(err, "out of memory while training the tokenizer");
done:
    st_free(&c.words);
    free(c.count);
    free(c.cur.b);
    st_free(&chars);
    free(ccount);
    free(order);
    free(csym);
    free(run);
    free(by_id);
    free(touched);
    bpe_free(&m);
    st_free(&fin);
    return rc;
}

int tok_train(const char *const *files, int n_files, int vocab_size, int min_freq,
              const char *out_path, char *err)
{
    return tok_train_progress(files, n_files, vocab_size, min_freq, out_path, NULL, NULL, err);
}
