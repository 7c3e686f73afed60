/* tok_internal: the tokenizer's insides, shared by data/tok*.c only.
 * tok.c loads, tok_encode.c encodes, tok_decode.c decodes, tok_train.c trains. */
#ifndef MOET_TOK_INTERNAL_H
#define MOET_TOK_INTERNAL_H

#include "data/tok.h"

#include <stdint.h>
#include <string.h>

#define TOK_META "\xe2\x96\x81"   /* "▁" U+2581, SentencePiece's space */
#define TOK_META_LEN 3

/* Open-addressing map from byte strings to ids (keys are borrowed, not copied). */
typedef struct {
    const char *key;
    uint32_t len, hash;
    int32_t id;
} tok_strslot;
typedef struct {
    tok_strslot *slots;
    size_t mask, n;          /* capacity is mask+1, a power of two */
} tok_strmap;

/* Merge table: pair (left id, right id) -> rank and merged id. */
typedef struct {
    uint64_t key;            /* left << 32 | right; ~0 marks empty */
    int32_t rank, id;
} tok_mergeslot;

/* One text-to-text step of a normalizer or decoder chain. */
enum { TOK_OP_PREPEND, TOK_OP_REPLACE, TOK_OP_WSTRIP, TOK_OP_STRIP, TOK_OP_BYTEFALLBACK,
       TOK_OP_FUSE, TOK_OP_METASPACE };
typedef struct {
    int kind;
    char *a, *b;             /* PREPEND: a; REPLACE: a -> b; STRIP/METASPACE: a = the char */
    size_t alen, blen;
    int start, stop;         /* STRIP: how many a-chars to cut at each end; WSTRIP: strip
                              * whitespace left / right (0/1); METASPACE: start = drop the
                              * replacement in the first token */
} tok_op;

typedef struct {
    char *content;           /* as in tokenizer.json */
    char *pattern;           /* what is matched: content, normalized when `normalized` */
    size_t len, plen;
    int32_t id;
    int special, lstrip, rstrip, single_word, normalized;
} tok_added;

enum { TOK_PREPEND_NEVER, TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST };

struct tok {
    int n_vocab;             /* highest id + 1 */
    char **piece;            /* [n_vocab] text of each id (NUL-terminated); NULL: hole */
    uint32_t *piece_len;     /* [n_vocab] */
    uint8_t *type;           /* [n_vocab] TOK_* */
    uint8_t *special;        /* [n_vocab] 1: a special added token (skipped by skip_special) */
    char *pool;              /* backing store of the model vocab strings */
    tok_strmap vocab;        /* model vocab string -> id (added tokens not included) */
    tok_mergeslot *merges;   /* mask+1 slots */
    size_t merge_mask;
    int32_t ascii_id[128];   /* vocab id of each one-byte char, -1 if none */
    int32_t byte_id[256];    /* id of "<0xXX>", -1 if none */
    int unk_id, bos_id, eos_id;
    int add_bos_id;          /* what encode(add_bos) puts first: the post-processor's BOS, or -1 */
    int byte_fallback, fuse_unk, ignore_merges;
    int chunked;             /* 1: BPE may run per "▁"-started chunk (no merge crosses one) */

    tok_added *added;        /* n_added, in tokenizer.json order */
    int n_added;
    uint8_t raw_first[256], norm_first[256];   /* first bytes of raw / normalized patterns */
    int n_raw, n_norm;

    tok_op *norm_ops;        /* normalizer chain */
    int n_norm_ops;
    int has_meta;            /* Metaspace pre-tokenizer */
    char meta_rep[8];
    size_t meta_rep_len;
    int meta_prepend, meta_split;
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

/* id of the model-vocab string s[0..n), -1 if absent. */
static inline int32_t tok_strmap_get(const tok_strmap *m, const char *s, size_t n)
{
    if (!m->slots) return -1;
    uint64_t h = tok_hash(s, n);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        const tok_strslot *e = &m->slots[i];
        if (!e->key) return -1;
        if (e->hash == (uint32_t)h && e->len == n && !memcmp(e->key, s, n)) return e->id;
    }
}

/* Merge of (a, b): its rank and merged id, or 0 when the pair never merges. */
static inline int tok_merge_get(const tok *t, int32_t a, int32_t b, int32_t *rank, int32_t *id)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint64_t h = key * 0x9e3779b97f4a7c15ull;
    for (size_t i = (h >> 20) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const tok_mergeslot *e = &t->merges[i];
        if (e->key == key) {
            *rank = e->rank;
            *id = e->id;
            return 1;
        }
        if (e->key == ~0ull) return 0;
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
 * 0 ok, -1 out of memory. (tok.c) */
int tok_normalize(const tok *t, const char *src, size_t n, char **out, size_t *outn);

/* Append src[0..k) to the growable buffer (*b, *n, *cap), keeping it
 * NUL-terminated. 0 ok, -1 out of memory. (tok.c) */
int tok_buf_put(char **b, size_t *n, size_t *cap, const void *src, size_t k);

/* src[0..n) with every `from` replaced by `to`, into a new malloc'd buffer.
 * 0 ok, -1 out of memory. (tok.c) */
int tok_replace_all(const char *src, size_t n, const char *from, size_t fl, const char *to,
                    size_t tl, char **out, size_t *outn);

/* Drop the calling thread's encode cache of t. (tok_encode.c, called by tok_free) */
void tok_encode_forget(const tok *t);


#endif
