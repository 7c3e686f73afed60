/* tok_normalize: the normalizer chain (Prepend, Replace, Strip, NFC / NFD / NFKC / NFKD)
 * and the small string helpers the tokenizer shares.
 *
 * Unicode normalization is utf8proc's.  It runs only where the text has non-ASCII
 * bytes: an ASCII character is a starter that never composes with what precedes it
 * and blocks reordering, so the normalization of a text is that of its pieces cut
 * before every ASCII character -- ASCII runs are copied and each non-ASCII run (with
 * the ASCII character just before it, which a combining mark may compose with) goes
 * to utf8proc.  Bytes that are not valid UTF-8 (Hugging Face cannot take such text at
 * all) are kept as they are and cut the run like an ASCII character. */
#include "data/tok_internal.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

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
    if (k) memcpy(*b + *n, src, k);
    *n += k;
    (*b)[*n] = 0;
    return 0;
}

int tok_replace_all(const char *src, size_t n, const char *from, size_t fl, const char *to, size_t tl,
                    char **out, size_t *outn)
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

/* s[0..n) normalized by utf8proc with flags, appended to the buffer. */
static int unicode_run(const char *s, size_t n, int flags, char **b, size_t *bn, size_t *cap)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t a = i;   /* the valid UTF-8 part */
        while (i < n) {
            size_t k = tok_utf8_len(u + i, n - i);
            if (k == 1 && u[i] >= 0x80) break;
            i += k;
        }
        if (i > a) {
            utf8proc_uint8_t *o = NULL;
            utf8proc_ssize_t m = utf8proc_map(u + a, (utf8proc_ssize_t)(i - a), &o, (utf8proc_option_t)flags);
            if (m < 0) {
                free(o);
                return -1;   /* only out of memory: the input is valid */
            }
            int bad = tok_buf_put(b, bn, cap, o, (size_t)m);
            free(o);
            if (bad) return -1;
        }
        if (i < n && tok_buf_put(b, bn, cap, s + i++, 1)) return -1;   /* an invalid byte */
    }
    return 0;
}

static int unicode_normalize(const char *s, size_t n, int flags, char **out, size_t *outn)
{
    char *b = NULL;
    size_t bn = 0, cap = 0;
    if (tok_buf_put(&b, &bn, &cap, "", 0)) return -1;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t a = i;
        while (i < n && u[i] < 0x80) i++;
        if (i == n) {
            if (tok_buf_put(&b, &bn, &cap, s + a, i - a)) goto oom;
            break;
        }
        /* [r, e): the non-ASCII run with the ASCII character before it. */
        size_t r = i > a ? i - 1 : i, e = i;
        while (e < n && u[e] >= 0x80) e++;
        if (tok_buf_put(&b, &bn, &cap, s + a, r - a) || unicode_run(s + r, e - r, flags, &b, &bn, &cap)) goto oom;
        i = e;
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
    char *cur = tok_dupn(src, n);
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
        } else if (op->kind == TOK_OP_UNICODE) {
            if (unicode_normalize(cur, cn, op->start, &nx, &nn)) goto oom;
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
            nx = tok_dupn(cur + a, z - a);
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
