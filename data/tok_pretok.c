/* tok_pretok: the pre-tokenizer chain, as Hugging Face's PreTokenizedString runs it:
 * each step splits every piece the step before made, and empty pieces are dropped.
 *
 *   Metaspace  spaces become the replacement char ("\u2581"), which is prepended
 *              (always, or for the piece at the start of the text with "first") and,
 *              with split, starts a new piece.
 *   Split      the pieces are the regex matches and the gaps between them (invert:
 *              the matches count as gaps), combined by the behavior: Isolated keeps
 *              both, Removed drops the matches, MergedWithPrevious / MergedWithNext
 *              join a match to the gap before / after it, Contiguous joins runs.
 *   ByteLevel  a space is prepended to every piece not starting with one when
 *              add_prefix_space; use_regex splits with GPT-2's regex.  Its byte-to-char
 *              mapping is not done here: the model works on raw bytes (tok.c keys the
 *              vocab by the bytes each entry stands for), so the pieces stay bytes.
 *
 * Pieces are passed on as they are found (nothing the size of the text is built), and
 * each step that rewrites text has its own buffer in the scratch, so the chain recurses
 * without allocating per piece. */
#include "data/tok_internal.h"

#include "common/err.h"

#include <stdlib.h>
#include <string.h>

static int grow(char **b, size_t *cap, size_t need)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    char *nb = realloc(*b, c);
    if (!nb) return -1;
    *b = nb;
    *cap = c;
    return 0;
}

static int next(const tok *t, tok_pretok_scratch *sc, int k, const char *s, size_t n, int origin,
                tok_word_fn word, void *ctx, char *err)
{
    if (!n) return 0;
    if (k + 1 == t->n_pre) return word(ctx, s, n);
    return tok_pretokenize(t, sc, k + 1, s, n, origin, word, ctx, err);
}

static int metaspace(const tok *t, tok_pretok_scratch *sc, int k, const char *s, size_t n, int origin,
                     tok_word_fn word, void *ctx, char *err)
{
    const tok_pre *p = &t->pre[k];
    const char *rep = p->rep;
    size_t rl = p->rep_len;
    if (grow(&sc->buf[k], &sc->cap[k], rl * (n + 1) + 1)) return err_set(err, "encode: out of memory");
    char *w = sc->buf[k];
    size_t wn = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(w + wn, rep, rl);
            wn += rl;
        } else {
            w[wn++] = s[i];
        }
    }
    int starts = wn >= rl && !memcmp(w, rep, rl);
    if (!starts && (p->prepend == TOK_PREPEND_ALWAYS || (p->prepend == TOK_PREPEND_FIRST && origin))) {
        memmove(w + rl, w, wn);
        memcpy(w, rep, rl);
        wn += rl;
    }
    if (!p->split) return next(t, sc, k, w, wn, origin, word, ctx, err);
    size_t a = 0;
    for (size_t i = 1; i + rl <= wn; i++) {   /* split before each replacement char */
        if (memcmp(w + i, rep, rl)) continue;
        if (next(t, sc, k, w + a, i - a, origin && a == 0, word, ctx, err)) return -1;
        a = i;
        i += rl - 1;
    }
    return next(t, sc, k, w + a, wn - a, origin && a == 0, word, ctx, err);
}

/* The regex's pieces of s, combined by behavior as HF's NormalizedString::split does,
 * streamed: one piece is held back while the next may still join it. */
static int split(const tok *t, tok_pretok_scratch *sc, int k, const tok_regex *re, int behavior, int invert,
                 const char *s, size_t n, int origin, tok_word_fn word, void *ctx, char *err)
{
    if (!sc->md && !(sc->md = tok_regex_md_new())) return err_set(err, "encode: out of memory");
    tok_regex_iter it = {0};
    tok_split x, held = {0};
    int have = 0, prev_match = 0, r;
#define EMIT(p) do { if (next(t, sc, k, s + (p).a, (p).b - (p).a, origin && (p).a == 0, word, ctx, err)) return -1; } while (0)
    while ((r = tok_regex_next(re, sc->md, s, n, &it, &x, err)) == 1) {
        int m = x.match ^ invert;
        switch (behavior) {
        case TOK_SPLIT_ISOLATED:
            EMIT(x);
            break;
        case TOK_SPLIT_REMOVED:
            if (!m) EMIT(x);
            break;
        case TOK_SPLIT_CONTIGUOUS:   /* runs of equal flags join */
        case TOK_SPLIT_MERGED_PREV:  /* a match joins the gap before it */
            if (have && (behavior == TOK_SPLIT_CONTIGUOUS ? m == prev_match : m && !prev_match)) {
                held.b = x.b;
            } else {
                if (have) EMIT(held);
                held = x, have = 1;
            }
            break;
        default:                     /* MERGED_NEXT: a match joins the gap after it */
            if (have && !m) {
                held.b = x.b;
                EMIT(held);
                have = 0;
            } else {
                if (have) EMIT(held);
                if (m) held = x, have = 1;
                else EMIT(x);
            }
        }
        prev_match = m;
    }
    if (r < 0) return -1;
    if (have) EMIT(held);
#undef EMIT
    return 0;
}

int tok_pretokenize(const tok *t, tok_pretok_scratch *sc, int k, const char *s, size_t n, int origin,
                    tok_word_fn word, void *ctx, char *err)
{
    if (k >= t->n_pre) return n ? word(ctx, s, n) : 0;
    const tok_pre *p = &t->pre[k];
    switch (p->kind) {
    case TOK_PRE_METASPACE:
        return metaspace(t, sc, k, s, n, origin, word, ctx, err);
    case TOK_PRE_SPLIT:
        return split(t, sc, k, p->re, p->behavior, p->invert, s, n, origin, word, ctx, err);
    default:   /* TOK_PRE_BYTELEVEL */
        if (p->add_prefix_space && n && s[0] != ' ') {
            if (grow(&sc->buf[k], &sc->cap[k], n + 2)) return err_set(err, "encode: out of memory");
            sc->buf[k][0] = ' ';
            memcpy(sc->buf[k] + 1, s, n);
            s = sc->buf[k];
            n++;
        }
        if (!p->re) return next(t, sc, k, s, n, origin, word, ctx, err);
        return split(t, sc, k, p->re, TOK_SPLIT_ISOLATED, 0, s, n, origin, word, ctx, err);
    }
}

void tok_pretok_scratch_free(tok_pretok_scratch *sc)
{
    if (sc->md) tok_regex_md_free(sc->md);
    for (int k = 0; k < TOK_MAX_PRE; k++) free(sc->buf[k]);
    *sc = (tok_pretok_scratch){0};
}
