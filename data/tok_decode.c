/* tok_decode: ids -> text through the tokenizer.json decoder chain (ByteLevel,
 * Replace, ByteFallback, Fuse, Strip, Metaspace), as HF decode() does; byte pieces
 * and GPT-2 byte chars give raw bytes, so text that was not valid UTF-8 comes back
 * unchanged. */
#include "data/tok_internal.h"

#include "common/err.h"

#include <stdlib.h>
#include <string.h>

/* A list of strings in one buffer: string i is buf[off[i] .. off[i+1]). */
typedef struct {
    char *buf;
    size_t len, cap;
    size_t *off;
    size_t n, offcap;
} strlist;

static int sl_add(strlist *l, const char *s, size_t k)   /* start a new string */
{
    if (l->n + 2 > l->offcap) {
        size_t c = l->offcap ? 2 * l->offcap : 64;
        size_t *o = realloc(l->off, c * sizeof *o);
        if (!o) return -1;
        l->off = o;
        l->offcap = c;
    }
    if (!l->n) l->off[0] = 0;
    if (tok_buf_put(&l->buf, &l->len, &l->cap, s, k)) return -1;
    l->off[++l->n] = l->len;
    return 0;
}

static int sl_append(strlist *l, const char *s, size_t k)   /* extend the last string */
{
    if (tok_buf_put(&l->buf, &l->len, &l->cap, s, k)) return -1;
    l->off[l->n] = l->len;
    return 0;
}

static void sl_free(strlist *l)
{
    free(l->buf);
    free(l->off);
    *l = (strlist){0};
}

static int byte_piece(const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEFabcdef";
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    const char *h1 = memchr(hex, s[3], 22), *h2 = memchr(hex, s[4], 22);
    if (!h1 || !h2 || !s[3] || !s[4]) return -1;
    int v1 = (int)(h1 - hex), v2 = (int)(h2 - hex);
    v1 = v1 >= 16 ? v1 - 6 : v1;
    v2 = v2 >= 16 ? v2 - 6 : v2;
    return v1 * 16 + v2;
}

/* The byte the GPT-2 char at s[k] stands for, -1 if it is no such char. */
static int char_byte_at(const unsigned char *s, size_t k, size_t n)
{
    size_t l = tok_utf8_len(s + k, n - k);
    return l == 1 && s[k] >= 0x80 ? -1 : tok_char_byte(tok_utf8_cp(s + k, l));
}

/* ByteLevel: each token's GPT-2 chars back to their bytes (a token with any other
 * char, such as an added token's text, is kept as it is), all joined into one string. */
static int bytelevel(const strlist *in, strlist *out)
{
    if (sl_add(out, "", 0)) return -1;
    for (size_t i = 0; i < in->n; i++) {
        const unsigned char *s = (const unsigned char *)in->buf + in->off[i];
        size_t n = in->off[i + 1] - in->off[i], k = 0;
        while (k < n && char_byte_at(s, k, n) >= 0) k += tok_utf8_len(s + k, n - k);
        if (k < n) {
            if (sl_append(out, (const char *)s, n)) return -1;
            continue;
        }
        char buf[64];
        size_t m = 0;
        for (k = 0; k < n; k += tok_utf8_len(s + k, n - k)) {
            buf[m++] = (char)char_byte_at(s, k, n);
            if (m == sizeof buf || k + tok_utf8_len(s + k, n - k) == n) {
                if (sl_append(out, buf, m)) return -1;
                m = 0;
            }
        }
    }
    return 0;
}

/* One decoder step over the token list: in -> out. */
static int dec_step(const tok_op *op, const strlist *in, strlist *out)
{
    if (op->kind == TOK_OP_BYTELEVEL) return bytelevel(in, out);
    for (size_t i = 0; i < in->n; i++) {
        const char *s = in->buf + in->off[i];
        size_t n = in->off[i + 1] - in->off[i];
        switch (op->kind) {
        case TOK_OP_REPLACE: {
            char *r;
            size_t rn;
            if (tok_replace_all(s, n, op->a, op->alen, op->b, op->blen, &r, &rn)) return -1;
            int bad = sl_add(out, r, rn);
            free(r);
            if (bad) return -1;
            break;
        }
        case TOK_OP_BYTEFALLBACK: {
            int b = byte_piece(s, n);
            if (b < 0) {
                if (sl_add(out, s, n)) return -1;
                break;
            }
            /* Consecutive byte pieces become one string of raw bytes. */
            char c = (char)b;
            int prev_byte = i > 0 && byte_piece(in->buf + in->off[i - 1], in->off[i] - in->off[i - 1]) >= 0;
            if (prev_byte ? sl_append(out, &c, 1) : sl_add(out, &c, 1)) return -1;
            break;
        }
        case TOK_OP_FUSE:
            if (i == 0 ? sl_add(out, s, n) : sl_append(out, s, n)) return -1;
            break;
        case TOK_OP_STRIP: {
            size_t a = 0, z = n;
            for (int k = 0; k < op->start && a + op->alen <= z && !memcmp(s + a, op->a, op->alen); k++)
                a += op->alen;
            for (int k = 0; k < op->stop && z >= a + op->alen &&
                            !memcmp(s + z - op->alen, op->a, op->alen); k++)
                z -= op->alen;
            if (sl_add(out, s + a, z - a)) return -1;
            break;
        }
        case TOK_OP_METASPACE: {
            if (sl_add(out, "", 0)) return -1;
            size_t p = 0;
            while (p < n) {
                if (p + op->alen <= n && !memcmp(s + p, op->a, op->alen)) {
                    if (!(i == 0 && op->start) && sl_append(out, " ", 1)) return -1;
                    p += op->alen;
                } else {
                    if (sl_append(out, s + p, 1)) return -1;
                    p++;
                }
            }
            break;
        }
        }
    }
    if (op->kind == TOK_OP_FUSE && !in->n && sl_add(out, "", 0)) return -1;
    return 0;
}

int tok_decode_ex(const tok *t, const int32_t *ids, size_t n, int skip_special, char **text,
                  size_t *len, char *err)
{
    *text = NULL;
    *len = 0;
    strlist cur = {0}, nx = {0};
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab || !t->piece[id]) {
            sl_free(&cur);
            return err_set(err, "token id %d is not in the vocab (size %d)", (int)id, t->n_vocab);
        }
        if (skip_special && t->special[id]) continue;
        if (sl_add(&cur, t->piece[id], t->piece_len[id])) goto oom;
    }
    for (int k = 0; k < t->n_dec_ops; k++) {
        if (dec_step(&t->dec_ops[k], &cur, &nx)) goto oom;
        sl_free(&cur);
        cur = nx;
        nx = (strlist){0};
    }
    /* Join: HF joins with nothing after a decoder, with spaces when there is none. */
    char *o = NULL;
    size_t on = 0, ocap = 0;
    if (tok_buf_put(&o, &on, &ocap, "", 0)) goto oom;
    for (size_t i = 0; i < cur.n; i++) {
        if (i && !t->has_decoder && tok_buf_put(&o, &on, &ocap, " ", 1)) goto oom_o;
        if (tok_buf_put(&o, &on, &ocap, cur.buf + cur.off[i], cur.off[i + 1] - cur.off[i])) goto oom_o;
    }
    sl_free(&cur);
    *text = o;
    *len = on;
    return 0;
oom_o:
    free(o);
oom:
    sl_free(&cur);
    sl_free(&nx);
    return err_set(err, "decode: out of memory");
}

int tok_decode(const tok *t, const int32_t *ids, size_t n, char **text, size_t *len, char *err)
{
    return tok_decode_ex(t, ids, n, 0, text, len, err);
}

