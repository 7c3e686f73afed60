/* tok_regex: the regexes of Split pre-tokenizers (and ByteLevel's GPT-2 regex), on PCRE2.
 *
 * Hugging Face tokenizers compiles these patterns with Oniguruma.  moet uses PCRE2 with
 * its JIT instead: on the King James Bible the Qwen and gpt-oss patterns run at 47-54 MB/s
 * against Oniguruma's 12-14 MB/s (the README has the measurement), and the two engines
 * agree on every code point for \p{L} \p{N} \p{M} \p{Lu} \p{Ll} \p{Lt} \p{Lm} \p{Lo} \d,
 * the case-insensitive contractions and backtracking order.  The one difference that
 * matters is \s: PCRE2 also counts U+180E (MONGOLIAN VOWEL SEPARATOR), which Oniguruma
 * (and Unicode since 6.3) does not, so \s and \S are rewritten to Oniguruma's set before
 * compiling.  Oniguruma's \uHHHH becomes PCRE2's \x{HHHH}.
 *
 * Matches are found as the onig crate's find_iter does (HF's SysRegex): the search
 * restarts at the end of the last match, and an empty match right where the last one
 * ended is skipped by advancing one character.  A compiled regex is shared by all
 * threads; the match data is the caller's (tok_regex_md_new). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/tok_internal.h"

#include "common/err.h"

#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

struct tok_regex {
    pcre2_code *code;
    char *pattern;          /* as given, for messages */
};

/* Oniguruma's \s: Unicode White_Space (U+0085 included, U+180E not). */
#define ONIG_SPACE "\\t-\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

static int put(char **b, size_t *n, size_t *cap, const char *s)
{
    return tok_buf_put(b, n, cap, s, strlen(s));
}

/* The pattern in PCRE2's dialect (see the top of the file). */
static int translate(const char *p, size_t n, char **out, size_t *outn)
{
    char *b = NULL;
    size_t bn = 0, cap = 0;
    int depth = 0, rc = put(&b, &bn, &cap, "");
    for (size_t i = 0; !rc && i < n;) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[i + 1];
            if (d == 's') rc = put(&b, &bn, &cap, depth ? ONIG_SPACE : "[" ONIG_SPACE "]");
            else if (d == 'S' && !depth) rc = put(&b, &bn, &cap, "[^" ONIG_SPACE "]");
            else if (d == 'u' && i + 6 <= n && strspn(p + i + 2, "0123456789abcdefABCDEF") >= 4) {
                char x[16];
                memcpy(x, "\\x{", 3);
                memcpy(x + 3, p + i + 2, 4);
                memcpy(x + 7, "}", 2);
                rc = put(&b, &bn, &cap, x);
                i += 6;
                continue;
            } else rc = tok_buf_put(&b, &bn, &cap, p + i, 2);
            i += 2;
            continue;
        }
        if (c == '[') {
            if (depth && i + 1 < n && p[i + 1] == ':') {   /* [:alpha:] inside a class */
                const char *e = memmem(p + i, n - i, ":]", 2);
                size_t k = e ? (size_t)(e - (p + i)) + 2 : n - i;
                rc = tok_buf_put(&b, &bn, &cap, p + i, k);
                i += k;
                continue;
            }
            depth++;
            rc = tok_buf_put(&b, &bn, &cap, p + i, 1);
            i++;
            if (depth == 1) {   /* "[^]..." and "[]...": the ']' is literal */
                if (i < n && p[i] == '^') rc = rc || tok_buf_put(&b, &bn, &cap, p + i++, 1);
                if (i < n && p[i] == ']') rc = rc || tok_buf_put(&b, &bn, &cap, p + i++, 1);
            }
            continue;
        }
        if (c == ']' && depth) depth--;
        rc = tok_buf_put(&b, &bn, &cap, p + i, 1);
        i++;
    }
    if (rc) {
        free(b);
        return -1;
    }
    *out = b;
    *outn = bn;
    return 0;
}

int tok_regex_new(tok_regex **out, const char *pattern, size_t len, int literal, char *err)
{
    *out = NULL;
    tok_regex *r = calloc(1, sizeof *r);
    char *pat = NULL;
    size_t pn = len;
    if (!r || !(r->pattern = malloc(len + 1))) {
        free(r);
        return err_set(err, "out of memory");
    }
    memcpy(r->pattern, pattern, len);
    r->pattern[len] = 0;
    if (!literal && translate(pattern, len, &pat, &pn)) {
        tok_regex_free(r);
        return err_set(err, "out of memory");
    }
    int ec;
    PCRE2_SIZE eo;
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);   /* UCP is not allowed with LITERAL */
    r->code = pcre2_compile((PCRE2_SPTR)(literal ? pattern : pat), pn, opts, &ec, &eo, NULL);
    free(pat);
    if (!r->code) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        err_set(err, "the regex '%s' does not compile (%s)", err_q(pattern, (long)len), (const char *)msg);
        tok_regex_free(r);
        return -1;
    }
    pcre2_jit_compile(r->code, PCRE2_JIT_COMPLETE);   /* without a JIT the interpreter runs */
    *out = r;
    return 0;
}

void tok_regex_free(tok_regex *r)
{
    if (!r) return;
    pcre2_code_free(r->code);
    free(r->pattern);
    free(r);
}

const char *tok_regex_pattern(const tok_regex *r) { return r->pattern; }

void *tok_regex_md_new(void) { return pcre2_match_data_create(1, NULL); }
void tok_regex_md_free(void *md) { pcre2_match_data_free(md); }

/* One search from `from`: 1 match [*ms, *me), 0 none, -1 error (err set). */
static int search(const tok_regex *r, pcre2_match_data *md, const char *s, size_t n, size_t from,
                  size_t *ms, size_t *me, char *err)
{
    int rc = pcre2_match(r->code, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)   /* the interpreter keeps its backtracking on the heap */
        rc = pcre2_match(r->code, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(rc, msg, sizeof msg);
        return err_set(err, "pre_tokenizer regex '%s': %s", err_q(r->pattern, -1), (const char *)msg);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}

int tok_regex_next(const tok_regex *r, void *md, const char *s, size_t n, tok_regex_iter *it, tok_split *out,
                   char *err)
{
    if (it->queued) {   /* the match after a gap */
        it->queued = 0;
        *out = it->next;
        return 1;
    }
    while (!it->done && it->last_end <= n) {
        size_t ms = 0, me = 0;
        int rc = search(r, md, s, n, it->last_end, &ms, &me, err);
        if (rc < 0) return -1;
        if (!rc) break;
        if (ms == me && it->matched && me == it->last_match_end) {   /* empty, where the last one ended */
            it->last_end += it->last_end < n ? tok_utf8_len((const unsigned char *)s + it->last_end, n - it->last_end) : 1;
            continue;
        }
        it->last_end = it->last_match_end = me;
        it->matched = 1;
        size_t gap = it->prev;
        it->prev = me;
        if (gap != ms) {
            *out = (tok_split){gap, ms, 0};
            it->next = (tok_split){ms, me, 1};
            it->queued = 1;
        } else {
            *out = (tok_split){ms, me, 1};
        }
        return 1;
    }
    it->done = 1;
    if (it->prev < n) {   /* the gap after the last match */
        *out = (tok_split){it->prev, n, 0};
        it->prev = n;
        return 1;
    }
    return 0;
}
