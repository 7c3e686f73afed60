/* tok_internal: the tokenizer's insides, shared by data/tok*.c only.
 * tok.c loads the vocab and added tokens and answers the accessors; tok_merges.c the merges;
 * tok_parts.c reads the normalizer / pre-tokenizer / decoder / post-processor
 * sections; tok_normalize.c normalizes; tok_pretok.c pre-tokenizes (Metaspace,
 * Split, ByteLevel) with the regexes of tok_regex.c; tok_encode.c matches added
 * tokens and runs BPE; tok_decode.c decodes; tok_train.c trains. */
#ifndef MOET_TOK_INTERNAL_H
#define MOET_TOK_INTERNAL_H

#include "data/tok.h"

#include "common/json.h"

#include <stdint.h>
#include <string.h>

#define TOK_META "\xe2\x96\x81"   /* "▁" U+2581, SentencePiece's space */
#define TOK_META_LEN 3

/* Open-addressing map from byte strings to ids.  Keys live in one pool (base) and
 * slots hold their offsets: 16 bytes a slot, which matters for a 200 k vocab. */
typedef struct {
    uint32_t off, len, hash;
    int32_t id1;             /* id + 1; 0: empty (fresh zeroed memory is an empty map) */
} tok_strslot;
typedef struct {
    tok_strslot *slots;
    size_t mask, n;          /* capacity is mask+1, a power of two */
    const char *base;        /* the pool the offsets point into */
} tok_strmap;

/* Merge table: pair (left id, right id) -> rank and merged id. */
typedef struct {
    uint64_t key1;           /* (left << 32 | right) + 1; 0: empty */
    int32_t rank, id;
} tok_mergeslot;

/* One text-to-text step of a normalizer or decoder chain. */
enum { TOK_OP_PREPEND, TOK_OP_REPLACE, TOK_OP_WSTRIP, TOK_OP_STRIP, TOK_OP_BYTEFALLBACK,
       TOK_OP_FUSE, TOK_OP_METASPACE, TOK_OP_UNICODE, TOK_OP_BYTELEVEL };
typedef struct {
    int kind;
    char *a, *b;             /* PREPEND: a; REPLACE: a -> b; STRIP/METASPACE: a = the char */
    size_t alen, blen;
    int start, stop;         /* STRIP: how many a-chars to cut at each end; WSTRIP: strip
                              * whitespace left / right (0/1); METASPACE: start = drop the
                              * replacement in the first token; UNICODE: start = utf8proc flags */
} tok_op;

typedef struct {
    char *content;           /* as in tokenizer.json */
    char *pattern;           /* what is matched: content, normalized when `normalized` */
    size_t len, plen;
    int32_t id;
    int special, lstrip, rstrip, single_word, normalized;
} tok_added;

enum { TOK_PREPEND_NEVER, TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST };

/* Pre-tokenizer steps, applied in order to every piece the previous step made. */
enum { TOK_PRE_METASPACE, TOK_PRE_SPLIT, TOK_PRE_BYTELEVEL };
enum { TOK_SPLIT_REMOVED, TOK_SPLIT_ISOLATED, TOK_SPLIT_MERGED_PREV, TOK_SPLIT_MERGED_NEXT,
       TOK_SPLIT_CONTIGUOUS };
#define TOK_MAX_PRE 8

typedef struct tok_regex tok_regex;   /* tok_regex.c: a compiled PCRE2 pattern */

typedef struct {
    int kind;
    tok_regex *re;           /* SPLIT; BYTELEVEL with use_regex (the GPT-2 pattern) */
    int behavior, invert;    /* SPLIT */
    int add_prefix_space;    /* BYTELEVEL */
    char rep[8];             /* METASPACE: the replacement char, its length, */
    size_t rep_len;          /* prepend scheme and split flag */
    int prepend, split;
} tok_pre;

/* A piece [a, b) of a string; match: the regex matched it. */
typedef struct {
    size_t a, b;
    int match;
} tok_split;

struct tok {
    int n_vocab;             /* highest id + 1 */
    char **piece;            /* [n_vocab] text of each id (NUL-terminated); NULL: hole */
    uint32_t *piece_len;     /* [n_vocab] */
    uint8_t *type;           /* [n_vocab] TOK_* */
    uint8_t *special;        /* [n_vocab] 1: a special added token (skipped by skip_special) */
    char *pool;              /* backing store of the model vocab strings */
    tok_strmap vocab;        /* model vocab -> id (added tokens not included), keyed by the
                              * text, or for bytelevel by the bytes its GPT-2 chars stand for */
    int bytelevel;           /* a ByteLevel pre-tokenizer: BPE runs on raw bytes */
    tok_strmap other;        /* bytelevel: the entries that are not all GPT-2 chars, by text */
    char *bytes_pool;        /* bytelevel: backing store of the byte keys */
    int32_t byte_sym[256];   /* bytelevel: id of the one-byte entry of each byte, -1 if none */
    tok_mergeslot *merges;   /* mask+1 slots */
    size_t merge_mask;
    int32_t (*merge_list)[3];/* [n_merges] (left, right, merged) ids by rank, as in the file */
    int n_merges;
    int32_t ascii_id[128];   /* vocab id of each one-byte char, -1 if none */
    int32_t byte_id[256];    /* id of "<0xXX>", -1 if none */
    int unk_id, bos_id, eos_id, pad_id;
    int32_t tpl_pre[4], tpl_post[4];   /* ids the post-processor puts around the text */
    int n_tpl_pre, n_tpl_post;
    int byte_fallback, fuse_unk, ignore_merges;
    int chunked;             /* 1: BPE may run per "\u2581"-started chunk (no merge crosses one) */

    tok_added *added;        /* n_added, in tokenizer.json order */
    int n_added;
    uint8_t raw_first[256], norm_first[256];   /* first bytes of raw / normalized patterns */
    int n_raw, n_norm;

    tok_op *norm_ops;        /* normalizer chain */
    int n_norm_ops;
    tok_pre pre[TOK_MAX_PRE];   /* pre-tokenizer chain */
    int n_pre;
    int has_regex;           /* some step runs a regex: text must be valid UTF-8 there */
    tok_op *dec_ops;         /* decoder chain */
    int n_dec_ops, has_decoder;

    char sha256[65];
    uint64_t serial;         /* unique per load: keys the per-thread encode caches */
};

/* Hash of a byte string (64-bit, good enough for open addressing). */
static inline uint64_t tok_hash(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0x94d049bb133111ebull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

/* id of the model-vocab string s[0..n) whose tok_hash is h, -1 if absent. */
static inline int32_t tok_strmap_get_h(const tok_strmap *m, const char *s, size_t n, uint64_t h)
{
    if (!m->slots) return -1;
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        const tok_strslot *e = &m->slots[i];
        if (!e->id1) return -1;
        if (e->hash == (uint32_t)h && e->len == n && !memcmp(m->base + e->off, s, n)) return e->id1 - 1;
    }
}

/* id of the model-vocab string s[0..n), -1 if absent. */
static inline int32_t tok_strmap_get(const tok_strmap *m, const char *s, size_t n)
{
    return tok_strmap_get_h(m, s, n, tok_hash(s, n));
}

/* Home slot of a merge pair (a << 32 | b): both halves mixed into the low bits. */
static inline size_t tok_merge_slot(uint64_t key, size_t mask)
{
    uint64_t h = key ^ (key >> 29);
    h *= 0xbf58476d1ce4e5b9ull;
    return (size_t)(h ^ (h >> 32)) & mask;
}

/* Merge of (a, b): its rank and merged id, or 0 when the pair never merges. */
static inline int tok_merge_get(const tok *t, int32_t a, int32_t b, int32_t *rank, int32_t *id)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = tok_merge_slot(key, t->merge_mask);; i = (i + 1) & t->merge_mask) {
        const tok_mergeslot *e = &t->merges[i];
        if (e->key1 == key + 1) {
            *rank = e->rank;
            *id = e->id;
            return 1;
        }
        if (!e->key1) return 0;
    }
}

/* Length of the UTF-8 char at s (n bytes left): 1..4, or 1 for an invalid byte
 * (which then stands alone and goes through byte fallback). */
static inline size_t tok_utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (k <= 1) return 1;
    if (k > n) return 1;
    for (size_t i = 1; i < k; i++)
        if ((s[i] & 0xc0) != 0x80) return 1;
    if (k == 2 && c < 0xc2) return 1;                                   /* overlong */
    if (k == 3 && ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0))) return 1;
    if (k == 4 && ((c == 0xf0 && s[1] < 0x90) || c > 0xf4 || (c == 0xf4 && s[1] >= 0x90)))
        return 1;
    return k;
}

/* Code point of a valid UTF-8 char of k bytes. */
static inline uint32_t tok_utf8_cp(const unsigned char *s, size_t k)
{
    if (k == 1) return s[0];
    if (k == 2) return (uint32_t)(s[0] & 0x1f) << 6 | (s[1] & 0x3f);
    if (k == 3) return (uint32_t)(s[0] & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
    return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3f) << 12 |
           (uint32_t)(s[2] & 0x3f) << 6 | (s[3] & 0x3f);
}

/* Unicode White_Space, as Rust's char::is_whitespace and regex \s. */
static inline int tok_is_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == ' ' || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

/* Regex \w (letters, marks, digits, connector punctuation): exact for ASCII and
 * Latin-1; above that every char is a word char except whitespace and the
 * general / CJK punctuation blocks (an approximation, used only by single_word). */
static inline int tok_is_word(uint32_t c)
{
    if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
                         (c >= 'A' && c <= 'Z') || c == '_';
    if (c < 0x100) return c == 0xaa || c == 0xb5 || c == 0xba || (c >= 0xc0 && c != 0xd7 && c != 0xf7);
    if (tok_is_space(c)) return 0;
    if ((c >= 0x2000 && c <= 0x206f) || (c >= 0x3000 && c <= 0x303f) || (c >= 0xff00 && c <= 0xff0f))
        return 0;
    return 1;
}

/* Apply a normalizer chain to src[0..n) into a malloc'd buffer (*out, *outn).
 * 0 ok, -1 out of memory. (tok_normalize.c) */
int tok_normalize(const tok *t, const char *src, size_t n, char **out, size_t *outn);

/* Append src[0..k) to the growable buffer (*b, *n, *cap), keeping it
 * NUL-terminated. 0 ok, -1 out of memory. (tok_normalize.c) */
int tok_buf_put(char **b, size_t *n, size_t *cap, const void *src, size_t k);

/* src[0..n) with every `from` replaced by `to`, into a new malloc'd buffer.
 * 0 ok, -1 out of memory. (tok_normalize.c) */
int tok_replace_all(const char *src, size_t n, const char *from, size_t fl, const char *to,
                    size_t tl, char **out, size_t *outn);

/* Loading helpers (tok.c): the smallest power of two >= n (at least 16); zeroed, pre-faulted
 * memory for a hash table (tok_table_free frees it); the GPT-2 chars of s[0..n) as the bytes
 * they stand for, into out (room for n), or -1 when a char is not one of them; the id of the
 * model-vocab entry whose text is s[0..n) (scratch: n bytes), -1 if none. */
size_t  tok_pow2_at_least(size_t n);
void   *tok_table_alloc(size_t bytes);
void    tok_table_free(void *p, size_t bytes);
long    tok_to_bytes(const char *s, size_t n, char *out);
int32_t tok_vocab_id(const tok *t, const char *s, size_t n, char *scratch);

/* model.merges (the JSON value at j; NULL: none; its strings are decoded in place) into
 * t's merge table and list, once the vocab is in. 0 ok, -1 with err. (tok_merges.c) */
int tok_load_merges(tok *t, json_scan *j, char *err);

/* Drop the calling thread's encode cache of t. (tok_encode.c, called by tok_free) */
void tok_encode_forget(const tok *t);

/* The normalizer, pre_tokenizer, decoder and post_processor sections (cJSON values,
 * NULL or null for none) into t; the post-processor needs the vocab loaded.  0 ok, -1
 * with one line in err naming what is not supported. (tok_parts.c) */
struct cJSON;
/* Small readers of tokenizer.json's cJSON sections (tok.c): o[key] as a string or NULL; as a
 * bool, else dflt; v as an integer in [lo, hi] (-1 if not one); and a NUL-terminated copy
 * of s[0..n) (NULL when out of memory). */
const char *tok_jstr(const struct cJSON *o, const char *key);
int tok_jbool(const struct cJSON *o, const char *key, int dflt);
int tok_jint(const struct cJSON *v, long lo, long hi, long *out);
char *tok_dupn(const char *s, size_t n);
int tok_parse_normalizer(tok *t, const struct cJSON *n, char *err);
int tok_parse_pretok(tok *t, const struct cJSON *p, char *err);
int tok_parse_decoder(tok *t, const struct cJSON *d, char *err);
int tok_parse_post(tok *t, const struct cJSON *pp, char *err);
void tok_free_parts(tok *t);

/* GPT-2's byte <-> char map (ByteLevel): the code point that stands for byte b, and the
 * byte a code point stands for (-1 if none; the table is filled by tok_char_byte_init,
 * which tok_load calls first, so every tok's users find it ready). (tok_parts.c) */
uint32_t tok_byte_char(int b);
void tok_char_byte_init(void);
extern int16_t tok_char_byte_table[0x144];
static inline int tok_char_byte(uint32_t c) { return c < 0x144 ? tok_char_byte_table[c] : -1; }

/* Regexes (tok_regex.c).  literal: match the pattern as plain text (Split's String). */
int  tok_regex_new(tok_regex **out, const char *pattern, size_t len, int literal, char *err);
void tok_regex_free(tok_regex *r);
const char *tok_regex_pattern(const tok_regex *r);
void *tok_regex_md_new(void);       /* match data, one per thread at a time */
void tok_regex_md_free(void *md);
/* HF's find_matches over s[0..n) (valid UTF-8), one piece a call: the matches and the
 * gaps between them, covering s in order.  Start with a zeroed iterator; the match
 * data may be used by other searches between calls.  1 a piece in *out, 0 the end,
 * -1 error (err set). */
typedef struct {
    size_t prev, last_end, last_match_end;
    int matched, queued, done;
    tok_split next;
} tok_regex_iter;
int  tok_regex_next(const tok_regex *r, void *md, const char *s, size_t n, tok_regex_iter *it, tok_split *out,
                    char *err);

/* Pre-tokenize s[0..n) with t's chain from step k on, calling word() on every piece
 * the last step makes, in order.  origin: s starts the original text (Metaspace's
 * "first").  The scratch is the caller's, zero-initialised, one per thread; free it
 * with tok_pretok_scratch_free. 0 ok, -1 error (err set, or word's own -1). (tok_pretok.c) */
typedef struct {
    void *md;
    char *buf[TOK_MAX_PRE];
    size_t cap[TOK_MAX_PRE];
} tok_pretok_scratch;
typedef int (*tok_word_fn)(void *ctx, const char *w, size_t n);
int  tok_pretokenize(const tok *t, tok_pretok_scratch *sc, int k, const char *s, size_t n, int origin,
                     tok_word_fn word, void *ctx, char *err);
void tok_pretok_scratch_free(tok_pretok_scratch *sc);

#endif
