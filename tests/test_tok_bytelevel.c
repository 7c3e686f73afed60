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
#include "data/tok_internal.h"
#include "tests/ref_files.h"

#include <cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>


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

/* ------------------------------------------------------------- small tokenizers */

/* A byte-level tokenizer.json: the 256 GPT-2 byte chars as ids 0..255 (in byte order),
 * the given extra vocab entries and merges (JSON fragments, may be empty), pre_tokenizer,
 * normalizer, post_processor and added_tokens as given (JSON values). */
static tok *byte_tok(const char *pre, const char *norm, const char *post, const char *added, const char *extra_vocab,
                     const char *merges, char *err_out)
{
    size_t cap = 1 << 16, n = 0;
    char *j = malloc(cap);
    n += (size_t)snprintf(j + n, cap - n, "{\"added_tokens\": %s, \"normalizer\": %s, \"pre_tokenizer\": %s, "
                          "\"post_processor\": %s, \"decoder\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", "
                          "\"vocab\": {", added, norm, pre, post);
    for (int b = 0; b < 256; b++) {
        char c[8];
        uint32_t cp = tok_byte_char(b);
        size_t k = cp < 0x80 ? (c[0] = (char)cp, 1) : (c[0] = (char)(0xc0 | cp >> 6), c[1] = (char)(0x80 | (cp & 63)), 2);
        n += (size_t)snprintf(j + n, cap - n, "%s\"%s%.*s\": %d", b ? ", " : "", cp == '"' || cp == '\\' ? "\\" : "",
                              (int)k, c, b);
    }
    n += (size_t)snprintf(j + n, cap - n, "%s%s}, \"merges\": [%s]}}", *extra_vocab ? ", " : "", extra_vocab, merges);
    char path[] = "/tmp/moet_tokbl_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, j, n), (ssize_t)n);
    close(fd);
    free(j);
    char err[ERR_MAX];
    tok *t = NULL;
    int rc = tok_load(&t, path, err_out ? err_out : err);
    unlink(path);
    if (rc && !err_out) fail_msg("small tokenizer does not load: %s", err);
    return t;
}

typedef struct {
    char buf[1024];
    size_t n;
} pieces;

static int collect(void *ctx, const char *w, size_t n)
{
    pieces *p = ctx;
    p->n += (size_t)snprintf(p->buf + p->n, sizeof p->buf - p->n, "%s%.*s", p->n ? "|" : "", (int)n, w);
    return 0;
}

/* The pre-tokenizer's pieces of text, joined by '|' (bytes, before the GPT-2 mapping). */
static void expect_pretok(const char *pre, const char *text, const char *want)
{
    tok *t = byte_tok(pre, "null", "null", "[]", "", "", NULL);
    tok_pretok_scratch sc = {0};
    pieces p = {.n = 0};
    char err[ERR_MAX];
    p.buf[0] = 0;
    assert_int_equal(tok_pretokenize(t, &sc, 0, text, strlen(text), 1, collect, &p, err), 0);
    tok_pretok_scratch_free(&sc);
    tok_free(t);
    if (strcmp(p.buf, want)) fail_msg("%s on \"%s\": got %s, want %s", pre, text, p.buf, want);
}

#define SPLIT(pat, beh, inv) "{\"type\": \"Split\", \"pattern\": " pat ", \"behavior\": \"" beh "\", \"invert\": " inv "}"

/* The examples of HF's own NormalizedString::split docs and Split tests (HF tokenizers
 * 0.23.2 gives these pieces; checked with its preTokenizeString). */
static void test_split_behaviors_and_invert_as_hf(void **state)
{
    (void)state;
    const char *s = "the-final--countdown";
    expect_pretok(SPLIT("{\"String\": \"-\"}", "Removed", "false"), s, "the|final|countdown");
    expect_pretok(SPLIT("{\"String\": \"-\"}", "Isolated", "false"), s, "the|-|final|-|-|countdown");
    expect_pretok(SPLIT("{\"String\": \"-\"}", "MergedWithPrevious", "false"), s, "the-|final-|-|countdown");
    expect_pretok(SPLIT("{\"String\": \"-\"}", "MergedWithNext", "false"), s, "the|-final|-|-countdown");
    expect_pretok(SPLIT("{\"String\": \"-\"}", "Contiguous", "false"), s, "the|-|final|--|countdown");
    expect_pretok(SPLIT("{\"String\": \"-\"}", "Removed", "true"), s, "-|-|-");
    expect_pretok(SPLIT("{\"String\": \"-\"}", "MergedWithPrevious", "true"), s, "the|-final|-|-countdown");
    expect_pretok(SPLIT("{\"String\": \"-\"}", "MergedWithNext", "true"), s, "the-|final-|-|countdown");
    /* HF's Split tests: \w+|[^\w\s]+ inverted on "How are you doing?". */
    const char *re = "{\"Regex\": \"\\\\w+|[^\\\\w\\\\s]+\"}", *h = "How are you doing?";
    expect_pretok(SPLIT("{\"Regex\": \"\\\\w+|[^\\\\w\\\\s]+\"}", "Removed", "true"), h, "How|are|you|doing|?");
    expect_pretok(SPLIT("{\"Regex\": \"\\\\w+|[^\\\\w\\\\s]+\"}", "MergedWithPrevious", "true"), h, "How |are |you |doing|?");
    expect_pretok(SPLIT("{\"Regex\": \"\\\\w+|[^\\\\w\\\\s]+\"}", "MergedWithNext", "true"), h, "How| are| you| doing|?");
    expect_pretok(SPLIT("{\"Regex\": \"\\\\w+|[^\\\\w\\\\s]+\"}", "Contiguous", "true"), h, "How| |are| |you| |doing?");
    (void)re;
    expect_pretok(SPLIT("{\"String\": \"Hello\"}", "Removed", "true"), "Hello Hello Hello", "Hello|Hello|Hello");
    /* A String pattern is literal text, not a regex; an empty one matches between chars. */
    expect_pretok(SPLIT("{\"String\": \".+\"}", "Isolated", "false"), "a.+b", "a|.+|b");
    expect_pretok(SPLIT("{\"String\": \"\"}", "Removed", "false"), "a-\xc3\xa9", "a|-|\xc3\xa9");
    expect_pretok(SPLIT("{\"String\": \"\"}", "Removed", "true"), "a-b", "");
    expect_pretok(SPLIT("{\"String\": \"\"}", "Isolated", "true"), "a-b", "a|-|b");
}

/* ByteLevel: add_prefix_space gives every piece of the step before its space; use_regex
 * splits with GPT-2's regex (HF 0.23.2 gives these). */
static void test_bytelevel_prefix_space_per_piece_and_gpt2_regex(void **state)
{
    (void)state;
    const char *bl = "{\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true}";
    expect_pretok(bl, "Hello  world's 123", " Hello| | world|'s| 123");
    expect_pretok("{\"type\": \"ByteLevel\", \"add_prefix_space\": false}", "Hello  world's 123",
                  "Hello| | world|'s| 123");
    char seq[512];
    snprintf(seq, sizeof seq, "{\"type\": \"Sequence\", \"pretokenizers\": [%s, %s]}",
             SPLIT("{\"String\": \"-\"}", "Removed", "false"), bl);
    expect_pretok(seq, "a-b -c", " a| b| | c");
    expect_pretok("{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": false}", "it's  x", "it's  x");
}

/* HF's regexes run on Oniguruma, whose \s is Unicode's White_Space: U+0085 is a space
 * and U+180E (not White_Space since Unicode 6.3) is not, although PCRE2's \s says the
 * opposite of the latter; moet rewrites \s to Oniguruma's set. */
static void test_regex_whitespace_is_oniguruma_s(void **state)
{
    (void)state;
    const char *sp = SPLIT("{\"Regex\": \"\\\\s+\"}", "Removed", "false");
    expect_pretok(sp, "a\xc2\x85" "b", "a|b");                  /* U+0085 */
    expect_pretok(sp, "a\xe1\xa0\x8e" "b", "a\xe1\xa0\x8e" "b");  /* U+180E */
    expect_pretok(sp, "a\xe3\x80\x80" "b\xe2\x80\xa8" "c", "a|b|c");   /* U+3000, U+2028 */
    expect_pretok(SPLIT("{\"Regex\": \"[^\\\\s]+\"}", "Isolated", "false"), "x\xe1\xa0\x8e y", "x\xe1\xa0\x8e| |y");
    expect_pretok(SPLIT("{\"Regex\": \"\\\\S+\"}", "Isolated", "false"), "x\xe1\xa0\x8e y", "x\xe1\xa0\x8e| |y");
}

/* Bytes that are not UTF-8 (which HF cannot take) are cut out as words of their own
 * and come back from decode unchanged. */
static void test_invalid_utf8_round_trips_on_byte_level(void **state)
{
    (void)state;
    static const char text[] = "ok \xff\xfe tail\xc3(\xe2\x82 \x80 end\xf0\x9f";
    size_t n = sizeof text - 1;
    for (int k = 0; k < 2; k++) {
        const tok *t = k ? gptoss.t : qwen3.t;
        tok_ids ids = {0};
        char err[ERR_MAX], *out;
        size_t len;
        assert_int_equal(tok_encode(t, text, n, 0, &ids, err), 0);
        assert_int_equal(tok_decode(t, ids.ids, ids.n, &out, &len, err), 0);
        assert_int_equal(len, n);
        assert_memory_equal(out, text, n);
        free(out);
        tok_ids_free(&ids);
    }
}

/* Qwen3's NFC normalizer: decomposed input gives the ids of the composed text. */
static void test_nfc_normalizer_composes_before_encoding(void **state)
{
    (void)state;
    const char *nfd = "cre\xcc\x80me bru\xcc\x82le\xcc\x81" "e o\xcc\x88", *nfc = "cr\xc3\xa8me br\xc3\xbbl\xc3\xa9" "e \xc3\xb6";
    tok_ids a = {0}, b = {0};
    char err[ERR_MAX];
    assert_int_equal(tok_encode(qwen3.t, nfd, strlen(nfd), 0, &a, err), 0);
    assert_int_equal(tok_encode(qwen3.t, nfc, strlen(nfc), 0, &b, err), 0);
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.ids, b.ids, a.n * sizeof *a.ids);
    tok_ids_free(&a);
    tok_ids_free(&b);
    /* gpt-oss has no normalizer: the two differ. */
    assert_int_equal(tok_encode(gptoss.t, nfd, strlen(nfd), 0, &a, err), 0);
    assert_int_equal(tok_encode(gptoss.t, nfc, strlen(nfc), 0, &b, err), 0);
    assert_true(a.n != b.n || memcmp(a.ids, b.ids, a.n * sizeof *a.ids));
    tok_ids_free(&a);
    tok_ids_free(&b);
}

/* Literal special tokens in the text become their ids, also mid-word, longest first. */
static void test_added_tokens_are_matched_in_raw_text(void **state)
{
    (void)state;
    const char *text = "x<|im_start|>user<|im_end|><|im_end|<think>";
    tok_ids ids = {0};
    char err[ERR_MAX];
    assert_int_equal(tok_encode(qwen3.t, text, strlen(text), 1, &ids, err), 0);
    int start = tok_id_of(qwen3.t, "<|im_start|>"), end = tok_id_of(qwen3.t, "<|im_end|>");
    int think = tok_id_of(qwen3.t, "<think>");
    assert_true(start > 151000 && end == start + 1 && think > end);
    int n_start = 0, n_end = 0, n_think = 0;
    for (size_t i = 0; i < ids.n; i++) {
        n_start += ids.ids[i] == start;
        n_end += ids.ids[i] == end;
        n_think += ids.ids[i] == think;
    }
    assert_int_equal(n_start, 1);
    assert_int_equal(n_end, 1);   /* "<|im_end|" without its '>' is text */
    assert_int_equal(n_think, 1);
    assert_int_equal(ids.ids[0], tok_id_of(qwen3.t, "x"));
    assert_int_equal(ids.ids[1], start);
    tok_ids_free(&ids);
}

static void test_byte_level_accessors(void **state)
{
    (void)state;
    const tok *q = qwen3.t, *g = gptoss.t;
    assert_int_equal(tok_vocab_size(q), 151669);
    assert_int_equal(tok_vocab_size(g), 200019);
    assert_true(tok_is_bytelevel(q) && tok_is_bytelevel(g));
    assert_int_equal(tok_bos_id(q), -1);                       /* no post-processor template */
    assert_int_equal(tok_eos_id(q), tok_id_of(q, "<|endoftext|>"));
    assert_int_equal(tok_pad_id(q), tok_id_of(q, "<|endoftext|>"));
    assert_int_equal(tok_eos_id(g), tok_id_of(g, "<|endoftext|>"));
    assert_int_equal(tok_piece_type(q, tok_id_of(q, "<|im_start|>")), TOK_CONTROL);
    assert_int_equal(tok_piece_type(q, tok_id_of(q, "<think>")), TOK_USER);   /* special: false */
    assert_int_equal(tok_piece_type(q, tok_id_of(q, "\xc4\xa0the")), TOK_NORMAL);   /* "Ġthe" */
    for (int id = 0; id < tok_vocab_size(q); id++)   /* piece <-> id is a bijection */
        assert_int_equal(tok_id_of(q, tok_piece(q, id)), id);
    assert_int_equal(tok_merge_count(q), 151387);
    assert_int_equal(tok_merge_count(g), 446189);
    int32_t a, b;
    assert_int_equal(tok_merge_pair(q, 0, &a, &b), 1);
    assert_string_equal(tok_piece(q, a), "\xc4\xa0");       /* the file's first merge: "Ġ Ġ" */
    assert_string_equal(tok_piece(q, b), "\xc4\xa0");
    assert_string_equal(tok_pre_regex(q, 0), "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?"
                                             "[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+");
    assert_null(tok_pre_regex(q, 1));
}

/* TemplateProcessing puts its special tokens before and after the text; the last one
 * after it is the EOS. */
static void test_template_processing_adds_tokens_on_both_sides(void **state)
{
    (void)state;
    const char *post = "{\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<bos>\", \"type_id\": 0}},"
                       " {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, {\"SpecialToken\": {\"id\": \"<eos>\", \"type_id\": 0}}],"
                       " \"special_tokens\": {\"<bos>\": {\"id\": \"<bos>\", \"ids\": [256], \"tokens\": [\"<bos>\"]},"
                       " \"<eos>\": {\"id\": \"<eos>\", \"ids\": [257], \"tokens\": [\"<eos>\"]}}}";
    const char *added = "[{\"id\": 256, \"content\": \"<bos>\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false,"
                        " \"normalized\": false, \"special\": true}, {\"id\": 257, \"content\": \"<eos>\", \"single_word\": false,"
                        " \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}]";
    tok *t = byte_tok("{\"type\": \"ByteLevel\", \"add_prefix_space\": false}", "null", post, added, "", "", NULL);
    assert_int_equal(tok_bos_id(t), 256);
    assert_int_equal(tok_eos_id(t), 257);
    tok_ids ids = {0};
    char err[ERR_MAX];
    assert_int_equal(tok_encode(t, "hi", 2, 1, &ids, err), 0);
    assert_int_equal(ids.n, 4);
    assert_int_equal(ids.ids[0], 256);
    assert_int_equal(ids.ids[1], 'h');
    assert_int_equal(ids.ids[3], 257);
    ids.n = 0;
    assert_int_equal(tok_encode(t, "hi", 2, 0, &ids, err), 0);
    assert_int_equal(ids.n, 2);
    tok_ids_free(&ids);
    tok_free(t);
}

static void expect_small_error(const char *pre, const char *norm, const char *post, const char *needle)
{
    char err[ERR_MAX] = "";
    tok *t = byte_tok(pre, norm, post, "[]", "", "", err);
    if (t || !strstr(err, needle)) fail_msg("wanted an error naming \"%s\", got \"%s\"", needle, err);
    assert_null(strchr(err, '\n'));
    for (const char *p = err; *p; p++) assert_true((unsigned char)*p >= 0x20 && *p != 0x7f);   /* printable */
}

static void test_unsupported_parts_and_bad_regexes_are_named(void **state)
{
    (void)state;
    const char *bl = "{\"type\": \"ByteLevel\", \"add_prefix_space\": false}";
    expect_small_error(SPLIT("{\"Regex\": \"(unclosed\"}", "Isolated", "false"), "null", "null", "(unclosed");
    expect_small_error(SPLIT("{\"Regex\": \"(unclosed\"}", "Isolated", "false"), "null", "null", "does not compile");
    expect_small_error(SPLIT("{\"Regex\": \"a\"}", "Sideways", "false"), "null", "null", "Sideways");
    expect_small_error("{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"ByteLevel\"}, {\"type\": \"Digits\"}]}",
                       "null", "null", "unsupported pre_tokenizer 'Digits' after ByteLevel");
    expect_small_error("{\"type\": \"UnicodeScripts\"}", "null", "null", "UnicodeScripts");
    expect_small_error(bl, "{\"type\": \"BertNormalizer\"}", "null", "BertNormalizer");
    expect_small_error(bl, "null", "{\"type\": \"Weird\"}", "Weird");
    /* A name with control bytes is quoted, not echoed. */
    expect_small_error("{\"type\": \"Evil\\u001b[31m\"}", "null", "null", "Evil\\x1B[31m");
}

static void expect_file_error(const char *json, const char *needle)
{
    char path[] = "/tmp/moet_tokbl_XXXXXX", err[ERR_MAX] = "";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, json, strlen(json)), (ssize_t)strlen(json));
    close(fd);
    tok *t = (tok *)1;
    int rc = tok_load(&t, path, err);
    unlink(path);
    if (rc != -1 || !strstr(err, needle)) fail_msg("load of %s: rc %d, error \"%s\", wanted \"%s\"", json, rc, err, needle);
    assert_null(t);
}

/* issue 14: a model.type of null or 5 is refused; so are JSON mistakes, with their place. */
static void test_bad_model_type_and_bad_json_are_refused(void **state)
{
    (void)state;
    expect_file_error("{\"model\": {\"type\": null, \"vocab\": {\"a\": 0}, \"merges\": []}}", "model.type must be a string");
    expect_file_error("{\"model\": {\"type\": 5, \"vocab\": {\"a\": 0}, \"merges\": []}}", "not a number");
    expect_file_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}} x", "text after");
    expect_file_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0.5}, \"merges\": []}}", "'a' has no valid id");
    expect_file_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\\ud800\": 0}}}", "lone surrogate");
    expect_file_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b c\"]}}",
                      "not two pieces");
    expect_file_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a \\u0013\"]}}",
                      "'\\x13' is not in the vocab");
    expect_file_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}, \"model\": {}}", "appears twice");
    expect_file_error("\xff{}", "not UTF-8");
    char deep[700];
    memset(deep, '[', 600);
    memcpy(deep + 600, "1", 2);
    char j[800];
    snprintf(j, sizeof j, "{\"x\": %s}", deep);
    expect_file_error(j, "nested too deep");
}

typedef struct {
    int bad;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *w = p;
    for (int k = 0; k < qwen3.n; k++) {
        tok_ids ids = {0};
        char err[ERR_MAX];
        const ref *e = &qwen3.r[k];
        if (tok_encode(qwen3.t, e->text, e->n, 0, &ids, err) || ids.n != e->n_ids ||
            memcmp(ids.ids, e->ids, ids.n * sizeof *ids.ids))
            w->bad++;
        tok_ids_free(&ids);
    }
    return NULL;
}

static void test_encode_is_thread_safe_on_a_shared_byte_level_tokenizer(void **state)
{
    (void)state;
    pthread_t th[4];
    worker_arg w[4] = {{0}};
    for (int i = 0; i < 4; i++) assert_int_equal(pthread_create(&th[i], NULL, worker, &w[i]), 0);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].bad, 0);
    }
}

/* Vocab entries that are not GPT-2 byte characters (here "\u20ac", and "") are found by their
 * text only; a long byte-level entry after them must not be written into the room the byte
 * pool keeps for them (the fuzzer's heap overflow, found 2026-12-03: make asan catches it). */
static void test_vocab_entries_outside_the_byte_alphabet_beside_a_long_one(void **state)
{
    (void)state;
    char extra[1024], *p = extra;
    p += sprintf(p, "\"\u20ac\": 256, \"\": 257, \"");
    for (int i = 0; i < 600; i++) *p++ = 'a';
    sprintf(p, "\": 258");
    tok *t = byte_tok("{\"type\": \"ByteLevel\", \"add_prefix_space\": false}", "null", "null", "[]", extra, "",
                      NULL);
    assert_int_equal(tok_vocab_size(t), 259);
    assert_int_equal(tok_id_of(t, "\xe2\x82\xac"), 256);
    assert_int_equal(tok_id_of(t, ""), 257);
    char longkey[601];
    memset(longkey, 'a', 600);
    longkey[600] = 0;
    assert_int_equal(tok_id_of(t, longkey), 258);
    assert_int_equal(tok_id_of(t, "a"), 'a');
    tok_free(t);
}

/* A vocab id far beyond the number of tokens (the fuzzer's 777777249 among 257) is refused
 * before any table of that size is allocated; a few unused ids are fine. */
static void test_sparse_vocab_ids_are_refused(void **state)
{
    (void)state;
    char err[ERR_MAX] = "";
    const char *pre = "{\"type\": \"ByteLevel\", \"add_prefix_space\": false}";
    assert_null(byte_tok(pre, "null", "null", "[]", "\"xyz\": 777777249", "", err));
    assert_string_equal(strstr(err, "vocab ids are sparse"),
                        "vocab ids are sparse: the largest is 777777249 but there are only 257 tokens "
                        "(corrupt tokenizer.json?)");
    tok *t = byte_tok(pre, "null", "null", "[]", "\"xyz\": 300", "", NULL);   /* 43 unused ids */
    assert_int_equal(tok_vocab_size(t), 301);
    assert_int_equal(tok_id_of(t, "xyz"), 300);
    tok_free(t);
}

/* Keys in another order than Hugging Face writes them (model first, merges before vocab)
 * load to the same tokenizer. */
static void test_key_order_does_not_matter(void **state)
{
    (void)state;
    size_t n;
    char *raw = slurp(path_of("data/qwen3-tokenizer/tokenizer.json"), &n);
    cJSON *j = cJSON_ParseWithLength(raw, n), *model = cJSON_DetachItemFromObject(j, "model");
    free(raw);
    assert_non_null(model);
    cJSON *vocab = cJSON_DetachItemFromObject(model, "vocab"), *merges = cJSON_DetachItemFromObject(model, "merges");
    cJSON_AddItemToObject(model, "merges", merges);
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON *re = cJSON_CreateObject();
    cJSON_AddItemToObject(re, "model", model);
    for (cJSON *c = j->child; c;) {
        cJSON *next = c->next;
        cJSON_AddItemToObject(re, c->string, cJSON_DetachItemViaPointer(j, c));
        c = next;
    }
    char *text = cJSON_PrintUnformatted(re), path[] = "/tmp/moet_tokbl_XXXXXX", err[ERR_MAX];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    tok *t;
    if (tok_load(&t, path, err)) fail_msg("reordered: %s", err);
    unlink(path);
    assert_int_equal(tok_vocab_size(t), tok_vocab_size(qwen3.t));
    assert_int_equal(tok_merge_count(t), tok_merge_count(qwen3.t));
    for (int i = 0; i < qwen3.n; i++)
        assert_true(ids_match(t, qwen3.r[i].text, qwen3.r[i].n, 0, qwen3.r[i].ids, qwen3.r[i].n_ids));
    tok_free(t);
    free(text);
    cJSON_Delete(re);
    cJSON_Delete(j);
}

int main(void)
{
    shared_init();
    load_refset(&qwen3, "qwen3-tokenizer");
    load_refset(&gptoss, "gptoss-tokenizer");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen3_reference_ids_are_reproduced_exactly),
        cmocka_unit_test(test_gptoss_reference_ids_are_reproduced_exactly),
        cmocka_unit_test(test_qwen3_decode_gives_hf_text),
        cmocka_unit_test(test_gptoss_decode_gives_hf_text),
        cmocka_unit_test(test_split_behaviors_and_invert_as_hf),
        cmocka_unit_test(test_bytelevel_prefix_space_per_piece_and_gpt2_regex),
        cmocka_unit_test(test_regex_whitespace_is_oniguruma_s),
        cmocka_unit_test(test_invalid_utf8_round_trips_on_byte_level),
        cmocka_unit_test(test_nfc_normalizer_composes_before_encoding),
        cmocka_unit_test(test_added_tokens_are_matched_in_raw_text),
        cmocka_unit_test(test_byte_level_accessors),
        cmocka_unit_test(test_template_processing_adds_tokens_on_both_sides),
        cmocka_unit_test(test_unsupported_parts_and_bad_regexes_are_named),
        cmocka_unit_test(test_bad_model_type_and_bad_json_are_refused),
        cmocka_unit_test(test_encode_is_thread_safe_on_a_shared_byte_level_tokenizer),
        cmocka_unit_test(test_vocab_entries_outside_the_byte_alphabet_beside_a_long_one),
        cmocka_unit_test(test_sparse_vocab_ids_are_refused),
        cmocka_unit_test(test_key_order_does_not_matter),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    free_refset(&qwen3);
    free_refset(&gptoss);
    return rc;
}
