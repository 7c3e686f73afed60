/* test_tok: the tokenizer against Hugging Face's own output.
 *
 * Golden sets (read at test time from $SHARED, default ../shared):
 *   data/mistral-tokenizer/reference_ids.json   617 texts, ids from HF tokenizers
 *   golden/tiny-mixtral/tokenizer_golden.json    13 texts: ids, tokens, decoded
 * Variant tokenizers (Metaspace pre-tokenizer, added-token flags, no byte
 * fallback, ignore_merges) are built here from those files; their expected
 * pieces are what HF tokenizers 0.23.2 gives for the same files (checked by hand
 * with it during development) and follow from its documented rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "common/err.h"
#include "data/tok.h"
#include "data/tok_internal.h"
#include "tests/ref_files.h"

#include <cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static tok *mistral;
static cJSON *mistral_ref;          /* [{text, ids}] */

static cJSON *load_json(const char *path)
{
    char *b = slurp(path, NULL);
    if (!b) fail_msg("cannot read %s", path);
    cJSON *j = cJSON_Parse(b);
    free(b);
    if (!j) fail_msg("%s is not JSON", path);
    return j;
}

/* The "text" strings of a golden file with their true lengths: cJSON ends a
 * string at an escaped NUL, and the reference set has one ("\u0000"). */
typedef struct {
    char *s;
    size_t n;
} text;

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static unsigned hex4(const char *p)
{
    return (unsigned)(hexval(p[0]) << 12 | hexval(p[1]) << 8 | hexval(p[2]) << 4 | hexval(p[3]));
}

static size_t put_utf8(char *o, unsigned c)
{
    if (c < 0x80) return o[0] = (char)c, 1;
    if (c < 0x800) return o[0] = (char)(0xc0 | c >> 6), o[1] = (char)(0x80 | (c & 63)), 2;
    if (c < 0x10000)
        return o[0] = (char)(0xe0 | c >> 12), o[1] = (char)(0x80 | (c >> 6 & 63)), o[2] = (char)(0x80 | (c & 63)), 3;
    o[0] = (char)(0xf0 | c >> 18), o[1] = (char)(0x80 | (c >> 12 & 63));
    o[2] = (char)(0x80 | (c >> 6 & 63)), o[3] = (char)(0x80 | (c & 63));
    return 4;
}

static text *json_texts(const char *path, int *count)
{
    char *raw = slurp(path, NULL);
    if (!raw) fail_msg("cannot read %s", path);
    text *out = NULL;
    int n = 0;
    for (char *p = raw; (p = strstr(p, "\"text\"")); ) {   /* inside strings quotes are escaped */
        p += 6;
        while (*p == ' ' || *p == ':' || *p == '\n') p++;
        assert_true(*p == '"');
        char *o = malloc(strlen(p) + 1);
        size_t k = 0;
        for (p++; *p != '"'; p++) {
            if (*p != '\\') {
                o[k++] = *p;
                continue;
            }
            char c = *++p;
            if (c == 'u') {
                unsigned u = hex4(p + 1);
                p += 4;
                if (u >= 0xd800 && u < 0xdc00 && p[1] == '\\' && p[2] == 'u') {
                    u = 0x10000 + ((u - 0xd800) << 10) + (hex4(p + 3) - 0xdc00);
                    p += 6;
                }
                k += put_utf8(o + k, u);
            } else {
                o[k++] = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c == 'b' ? '\b' : c == 'f' ? '\f' : c;
            }
        }
        o[k] = 0;
        out = realloc(out, (size_t)(n + 1) * sizeof *out);
        out[n++] = (text){o, k};
    }
    free(raw);
    *count = n;
    return out;
}

static void free_texts(text *t, int n)
{
    for (int i = 0; i < n; i++) free(t[i].s);
    free(t);
}

static text *ref;                   /* the reference texts, in order */
static int n_ref;

static const cJSON *ref_ids(int i)
{
    return cJSON_GetObjectItem(cJSON_GetArrayItem(mistral_ref, i), "ids");
}

static char *write_tmp(const char *text)
{
    static char name[8][64];
    static int k;
    char *n = name[k++ % 8];
    snprintf(n, 64, "/tmp/moet_tok_test_XXXXXX");
    int fd = mkstemp(n);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return n;
}

/* A copy of tokenizer JSON j, changed by fn, loaded as a tok. */
static tok *variant(const cJSON *j, void (*fn)(cJSON *))
{
    cJSON *c = cJSON_Duplicate(j, 1);
    fn(c);
    char *text = cJSON_PrintUnformatted(c);
    char *path = write_tmp(text);
    char err[ERR_MAX];
    tok *t = NULL;
    if (tok_load(&t, path, err)) fail_msg("variant does not load: %s", err);
    unlink(path);
    free(text);
    cJSON_Delete(c);
    return t;
}

/* Assert encode(text, add_bos) gives exactly the ids of the JSON array want. */
static int ids_match(const tok *t, const char *text, size_t len, int add_bos, const cJSON *want)
{
    tok_ids got = {0};
    char err[ERR_MAX];
    if (tok_encode(t, text, len, add_bos, &got, err)) fail_msg("encode: %s", err);
    int ok = (size_t)cJSON_GetArraySize(want) == got.n;
    const cJSON *e;
    size_t i = 0;
    cJSON_ArrayForEach(e, want) if (ok && (int)e->valuedouble != got.ids[i++]) ok = 0;
    if (!ok) {
        fprintf(stderr, "first mismatching text: \"%s\"\n", text);
        print_ids("moet    ", got.ids, got.n);
        int32_t *w = malloc(((size_t)cJSON_GetArraySize(want) + 1) * sizeof *w);
        i = 0;
        cJSON_ArrayForEach(e, want) w[i++] = (int32_t)e->valuedouble;
        print_ids("expected", w, i);
        free(w);
    }
    tok_ids_free(&got);
    return ok;
}

/* Encode text (BOS on) and compare with pieces, looked up by name. */
static void expect_pieces(const tok *t, const char *text, const char *const *pieces, int n)
{
    tok_ids got = {0};
    char err[ERR_MAX];
    assert_int_equal(tok_encode(t, text, strlen(text), 1, &got, err), 0);
    int ok = got.n == (size_t)n;
    for (int i = 0; ok && i < n; i++) ok = got.ids[i] == tok_id_of(t, pieces[i]);
    if (!ok) {
        fprintf(stderr, "text \"%s\": got", text);
        for (size_t i = 0; i < got.n; i++) fprintf(stderr, " [%s]", tok_piece(t, got.ids[i]));
        fprintf(stderr, "\n  expected");
        for (int i = 0; i < n; i++) fprintf(stderr, " [%s]", pieces[i]);
        fprintf(stderr, "\n");
    }
    tok_ids_free(&got);
    assert_true(ok);
}
#define EXPECT(t, text, ...)                                                     \
    do {                                                                         \
        static const char *const p_[] = {__VA_ARGS__};                           \
        expect_pieces(t, text, p_, (int)(sizeof p_ / sizeof p_[0]));             \
    } while (0)

static int has_special_text(const char *s)
{
    return strstr(s, TOK_META) || strstr(s, "<s>") || strstr(s, "</s>") || strstr(s, "<unk>");
}


/* ------------------------------------------------------------- golden sets */

static void test_mistral_reference_ids_are_reproduced_exactly(void **state)
{
    (void)state;
    assert_int_equal(n_ref, cJSON_GetArraySize(mistral_ref));
    assert_true(n_ref > 0);
    for (int i = 0; i < n_ref; i++)   /* the first mismatch is printed */
        assert_true(ids_match(mistral, ref[i].s, ref[i].n, 1, ref_ids(i)));
}

static void test_tiny_mixtral_golden_ids_tokens_and_decoded_text(void **state)
{
    (void)state;
    char err[ERR_MAX];
    tok *t;
    if (tok_load(&t, path_of("golden/tiny-mixtral/model/tokenizer.json"), err)) fail_msg("%s", err);
    assert_int_equal(tok_vocab_size(t), 512);
    cJSON *g = load_json(path_of("golden/tiny-mixtral/tokenizer_golden.json"));
    int nt;
    text *texts = json_texts(path_of("golden/tiny-mixtral/tokenizer_golden.json"), &nt);
    const cJSON *e;
    int n = 0;
    cJSON_ArrayForEach(e, g) {
        const cJSON *ids = cJSON_GetObjectItem(e, "ids"), *tk = cJSON_GetObjectItem(e, "tokens"), *x;
        assert_true(n < nt);
        assert_true(ids_match(t, texts[n].s, texts[n].n, 1, ids));
        int i = 0;
        cJSON_ArrayForEach(x, ids) {   /* every id's piece is the token HF names */
            assert_string_equal(tok_piece(t, (int)x->valuedouble), cJSON_GetArrayItem(tk, i)->valuestring);
            i++;
        }
        /* "decoded" is HF decode(skip_special_tokens=True). */
        int32_t v[4096];
        size_t k = 0;
        cJSON_ArrayForEach(x, ids) v[k++] = (int32_t)x->valuedouble;
        char *out;
        size_t len;
        assert_int_equal(tok_decode_ex(t, v, k, 1, &out, &len, err), 0);
        assert_string_equal(out, cJSON_GetObjectItem(e, "decoded")->valuestring);
        free(out);
        n++;
    }
    assert_true(n > 0);
    assert_int_equal(n, nt);
    free_texts(texts, nt);
    cJSON_Delete(g);
    tok_free(t);
}

/* decode(encode(x)) == x holds for every text without "▁" or the text of a
 * special token (those two are not invertible: "▁" decodes to a space, "<s>"
 * is matched as the token).  That is 560-odd of the 617 reference texts. */
static void test_decode_inverts_encode_on_reference_texts(void **state)
{
    (void)state;
    int checked = 0;
    for (int i = 0; i < n_ref; i++) {
        if (has_special_text(ref[i].s)) continue;
        tok_ids ids = {0};
        char err[ERR_MAX], *out;
        size_t len;
        assert_int_equal(tok_encode(mistral, ref[i].s, ref[i].n, 0, &ids, err), 0);
        assert_int_equal(tok_decode(mistral, ids.ids, ids.n, &out, &len, err), 0);
        assert_int_equal(len, ref[i].n);
        assert_memory_equal(out, ref[i].s, len);
        free(out);
        tok_ids_free(&ids);
        checked++;
    }
    assert_true(checked > 500);
}

static void test_decode_keeps_special_token_text_unless_skipped(void **state)
{
    (void)state;
    const char *text = "Hello</s> world";
    tok_ids ids = {0};
    char err[ERR_MAX], *out;
    size_t len;
    assert_int_equal(tok_encode(mistral, text, strlen(text), 1, &ids, err), 0);
    assert_int_equal(ids.ids[0], tok_bos_id(mistral));
    assert_int_equal(tok_decode(mistral, ids.ids, ids.n, &out, &len, err), 0);
    assert_string_equal(out, "<s> Hello</s>  world");   /* HF: Strip acts on the fused text */
    free(out);
    assert_int_equal(tok_decode_ex(mistral, ids.ids, ids.n, 1, &out, &len, err), 0);
    assert_string_equal(out, "Hello  world");
    free(out);
    tok_ids_free(&ids);
}

static void test_invalid_utf8_round_trips_through_byte_pieces(void **state)
{
    (void)state;
    static const char text[] = "ok \xff\xfe tail\xc3(\xe2\x82 \x80 end\xf0\x9f";
    size_t n = sizeof text - 1;
    tok_ids ids = {0};
    char err[ERR_MAX], *out;
    size_t len;
    assert_int_equal(tok_encode(mistral, text, n, 0, &ids, err), 0);
    int found_ff = 0, found_80 = 0;
    for (size_t i = 0; i < ids.n; i++) {
        found_ff |= ids.ids[i] == tok_id_of(mistral, "<0xFF>");
        found_80 |= ids.ids[i] == tok_id_of(mistral, "<0x80>");
        assert_int_not_equal(ids.ids[i], tok_unk_id(mistral));
    }
    assert_true(found_ff && found_80);
    assert_int_equal(tok_decode(mistral, ids.ids, ids.n, &out, &len, err), 0);
    assert_int_equal(len, n);
    assert_memory_equal(out, text, n);
    free(out);
    tok_ids_free(&ids);
}

static void test_empty_text_gives_only_bos(void **state)
{
    (void)state;
    tok_ids ids = {0};
    char err[ERR_MAX];
    assert_int_equal(tok_encode(mistral, "", 0, 1, &ids, err), 0);
    assert_int_equal(ids.n, 1);
    assert_int_equal(ids.ids[0], tok_bos_id(mistral));
    assert_int_equal(tok_encode(mistral, "", 0, 0, &ids, err), 0);
    assert_int_equal(ids.n, 1);               /* appends: nothing added */
    char *out;
    size_t len;
    assert_int_equal(tok_decode(mistral, NULL, 0, &out, &len, err), 0);
    assert_int_equal(len, 0);
    assert_string_equal(out, "");
    free(out);
    tok_ids_free(&ids);
}

static void test_decode_rejects_an_id_outside_the_vocab(void **state)
{
    (void)state;
    int32_t ids[] = {1, 32000};
    char err[ERR_MAX], *out;
    size_t len;
    assert_int_equal(tok_decode(mistral, ids, 2, &out, &len, err), -1);
    assert_non_null(strstr(err, "32000"));
    ids[1] = -5;
    assert_int_equal(tok_decode(mistral, ids, 2, &out, &len, err), -1);
}

/* ------------------------------------------------------------- accessors */

static void test_mistral_vocab_accessors_types_and_scores(void **state)
{
    (void)state;
    assert_int_equal(tok_vocab_size(mistral), 32000);
    assert_int_equal(tok_bos_id(mistral), tok_id_of(mistral, "<s>"));
    assert_int_equal(tok_eos_id(mistral), tok_id_of(mistral, "</s>"));
    assert_int_equal(tok_unk_id(mistral), tok_id_of(mistral, "<unk>"));
    assert_int_equal(tok_piece_type(mistral, tok_unk_id(mistral)), TOK_UNKNOWN);
    assert_int_equal(tok_piece_type(mistral, tok_bos_id(mistral)), TOK_CONTROL);
    assert_int_equal(tok_piece_type(mistral, tok_eos_id(mistral)), TOK_CONTROL);
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        int id = tok_id_of(mistral, name);
        assert_int_equal(id, 3 + b);          /* the SentencePiece layout */
        assert_int_equal(tok_piece_type(mistral, id), TOK_BYTE);
        assert_true(tok_piece_score(mistral, id) == 0.0f);
    }
    for (int id = 0; id < tok_vocab_size(mistral); id++)   /* piece <-> id is a bijection */
        assert_int_equal(tok_id_of(mistral, tok_piece(mistral, id)), id);
    int the = tok_id_of(mistral, TOK_META "the");
    assert_true(the >= 259);
    assert_int_equal(tok_piece_type(mistral, the), TOK_NORMAL);
    assert_true(tok_piece_score(mistral, the) == -(float)(the - 259));
    assert_true(tok_piece_score(mistral, tok_id_of(mistral, TOK_META TOK_META)) == -1e9f);
    assert_int_equal(tok_id_of(mistral, "no such piece"), -1);
    assert_null(tok_piece(mistral, 32000));
    assert_null(tok_piece(mistral, -1));
}

static void test_sha256_is_that_of_the_file_bytes(void **state)
{
    (void)state;
    char cmd[1200], line[128] = {0};
    snprintf(cmd, sizeof cmd, "sha256sum '%s'", path_of("data/mistral-tokenizer/tokenizer.json"));
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    assert_non_null(fgets(line, sizeof line, p));
    pclose(p);
    line[64] = 0;
    assert_string_equal(tok_sha256(mistral), line);
}

/* ------------------------------------------------------------- bad input */

static void expect_load_error(const char *json, const char *needle)
{
    char *path = write_tmp(json), err[ERR_MAX] = "";
    tok *t = (tok *)1;
    int rc = tok_load(&t, path, err);
    unlink(path);
    if (rc != -1 || !strstr(err, needle))
        fail_msg("load of %s: rc %d, error \"%s\", wanted one naming \"%s\"", json, rc, err, needle);
    assert_null(t);
    assert_null(strchr(err, '\n'));
}

static void test_unsupported_types_are_named_in_the_error(void **state)
{
    (void)state;
    expect_load_error("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}", "WordPiece");
    expect_load_error("{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}", "Unigram");
    expect_load_error("{\"model\": {\"type\": \"WordLevel\", \"vocab\": {\"a\": 0}}}", "WordLevel");
    const char *bpe = "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]}";
    char j[512];
    snprintf(j, sizeof j, "{\"pre_tokenizer\": {\"type\": \"Whitespace\"}, %s}", bpe);
    expect_load_error(j, "Whitespace");
    snprintf(j, sizeof j, "{\"normalizer\": {\"type\": \"Lowercase\"}, %s}", bpe);
    expect_load_error(j, "Lowercase");
    snprintf(j, sizeof j, "{\"decoder\": {\"type\": \"WordPiece\", \"prefix\": \"##\"}, %s}", bpe);
    expect_load_error(j, "WordPiece");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], "
                      "\"continuing_subword_prefix\": \"##\"}}", "continuing_subword_prefix");
}

static void test_missing_corrupt_and_inconsistent_files_fail_with_one_line(void **state)
{
    (void)state;
    char err[ERR_MAX];
    tok *t = (tok *)1;
    assert_int_equal(tok_load(&t, "/nonexistent/tokenizer.json", err), -1);
    assert_non_null(strstr(err, "/nonexistent/tokenizer.json"));
    assert_null(t);
    /* Truncated anywhere: never a crash, always an error. */
    size_t n;
    char *full = slurp(path_of("golden/tiny-mixtral/model/tokenizer.json"), &n);
    assert_non_null(full);
    for (size_t cut = 0; cut < n; cut += n / 23 + 1) {
        char save = full[cut];
        full[cut] = 0;
        char *p = write_tmp(full);
        full[cut] = save;
        assert_int_equal(tok_load(&t, p, err), -1);
        unlink(p);
    }
    free(full);
    expect_load_error("[1, 2, 3]", "model");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}",
                      "'ab' is not in the vocab");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"ab\"]}}",
                      "merge 1");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}, \"merges\": []}}", "'a'");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}",
                      "used twice");
}

/* ------------------------------------------------------- variant tokenizers */

static cJSON *mistral_json;

static cJSON *metaspace(const char *scheme, int split)
{
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "type", "Metaspace");
    cJSON_AddStringToObject(m, "replacement", TOK_META);
    cJSON_AddStringToObject(m, "prepend_scheme", scheme);
    cJSON_AddBoolToObject(m, "split", split);
    return m;
}

static void set_meta(cJSON *j, const char *scheme, int split)
{
    cJSON_ReplaceItemInObject(j, "normalizer", cJSON_CreateNull());
    cJSON_ReplaceItemInObject(j, "pre_tokenizer", metaspace(scheme, split));
}
static void meta_first_nosplit(cJSON *j) { set_meta(j, "first", 0); }
static void meta_always_split(cJSON *j) { set_meta(j, "always", 1); }
static void meta_never_split(cJSON *j) { set_meta(j, "never", 1); }

/* Without a leading space, "▁" or special text, the Metaspace forms equal the
 * legacy normalizer (Prepend + Replace); with no double space, split does too. */
static void test_metaspace_pre_tokenizer_variants(void **state)
{
    (void)state;
    tok *first = variant(mistral_json, meta_first_nosplit);
    tok *always = variant(mistral_json, meta_always_split);
    tok *never = variant(mistral_json, meta_never_split);
    int same = 0;
    for (int i = 0; i < n_ref; i++) {
        const char *text = ref[i].s;
        if (!*text || text[0] == ' ' || has_special_text(text)) continue;
        assert_true(ids_match(first, text, ref[i].n, 1, ref_ids(i)));
        if (!strstr(text, "  ")) assert_true(ids_match(always, text, ref[i].n, 1, ref_ids(i))), same++;
    }
    assert_true(same > 100);
    /* Where they differ (HF tokenizers 0.23.2 gives these). */
    EXPECT(mistral, " Hello", "<s>", TOK_META, TOK_META "Hello");   /* legacy: Prepend always */
    EXPECT(first, " Hello", "<s>", TOK_META "Hello");                /* no second "▁" */
    EXPECT(first, "<s>hi", "<s>", "<s>", "hi");                       /* not at offset 0 */
    EXPECT(always, "<s>hi", "<s>", "<s>", TOK_META "hi");
    EXPECT(first, "Hello   world", "<s>", TOK_META "Hello", TOK_META TOK_META, TOK_META "world");
    EXPECT(always, "Hello   world", "<s>", TOK_META "Hello", TOK_META, TOK_META, TOK_META "world");
    EXPECT(never, "Hello   world", "<s>", "Hello", TOK_META, TOK_META, TOK_META "world");
    EXPECT(never, "hurting", "<s>", "h", "ur", "ting");
    tok_free(first);
    tok_free(always);
    tok_free(never);
}

static void add_token(cJSON *list, int id, const char *content, int single, int l, int r, int norm, int special)
{
    cJSON *a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "id", id);
    cJSON_AddStringToObject(a, "content", content);
    cJSON_AddBoolToObject(a, "single_word", single);
    cJSON_AddBoolToObject(a, "lstrip", l);
    cJSON_AddBoolToObject(a, "rstrip", r);
    cJSON_AddBoolToObject(a, "normalized", norm);
    cJSON_AddBoolToObject(a, "special", special);
    cJSON_AddItemToArray(list, a);
}

static void more_added(cJSON *j)
{
    cJSON *l = cJSON_GetObjectItem(j, "added_tokens");
    add_token(l, 32000, "<mask>", 1, 1, 1, 0, 1);
    add_token(l, 32001, "bar", 1, 0, 0, 0, 0);
    add_token(l, 32002, " and", 0, 1, 0, 1, 0);
    add_token(l, 32003, "ing", 0, 0, 0, 0, 0);   /* already in the vocab: takes that id */
}

static void test_added_tokens_follow_hf_flags_and_ids(void **state)
{
    (void)state;
    tok *t = variant(mistral_json, more_added);
    int mask = tok_id_of(t, "<mask>"), ing = tok_id_of(t, "ing"), bar = tok_id_of(t, "bar");
    assert_int_equal(mask, 32000);
    assert_int_equal(ing, tok_id_of(mistral, "ing"));          /* HF reuses the vocab id */
    assert_int_equal(bar, tok_id_of(mistral, "bar"));
    assert_int_equal(tok_vocab_size(t), 32002);                /* <mask> and " and" are new */
    assert_string_equal(tok_piece(t, 32001), TOK_META TOK_META "and");   /* normalized content */
    assert_int_equal(tok_piece_type(t, mask), TOK_CONTROL);
    assert_int_equal(tok_piece_type(t, 32001), TOK_USER);
    EXPECT(t, "x <mask> y", "<s>", TOK_META "x", "<mask>", TOK_META "y");       /* l/rstrip */
    EXPECT(t, "a<mask>b", "<s>", TOK_META "a", "<", "mask", ">", "b");          /* single_word */
    EXPECT(t, "hurting", "<s>", TOK_META "hurt", "ing");
    EXPECT(t, "xbar bar.", "<s>", TOK_META "x", "bar", TOK_META, "bar", TOK_META ".");
    int32_t ids[] = {1, 32001};
    char err[ERR_MAX], *out;
    size_t len;
    assert_int_equal(tok_decode(t, ids, 2, &out, &len, err), 0);
    assert_string_equal(out, "<s>  and");
    free(out);
    tok_free(t);
}

/* A small BPE with no byte fallback: unknown chars become <unk>, fused or not;
 * ignore_merges takes a whole word that is in the vocab as it is. */
static const char *tiny_bpe =
    "{\"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"single_word\": false, \"lstrip\": false,"
    " \"rstrip\": false, \"normalized\": false, \"special\": true}],"
    " \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": \"\xe2\x96\x81\"},"
    " {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\xe2\x96\x81\"}]},"
    " \"pre_tokenizer\": null, \"post_processor\": null,"
    " \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": \"\xe2\x96\x81\"},"
    " \"content\": \" \"}, {\"type\": \"Fuse\"}, {\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]},"
    " \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": %s, \"byte_fallback\": false,"
    " \"ignore_merges\": %s, \"vocab\": {\"<unk>\": 0, \"\xe2\x96\x81\": 1, \"a\": 2, \"b\": 3, \"c\": 4,"
    " \"\xe2\x96\x81" "a\": 5, \"bc\": 6, \"\xe2\x96\x81" "abc\": 7, \"ab\": 8},"
    " \"merges\": [[\"\xe2\x96\x81\", \"a\"], [\"b\", \"c\"], [\"a\", \"b\"]]}}";

static tok *tiny(const char *fuse, const char *ignore)
{
    char j[2048], err[ERR_MAX];
    snprintf(j, sizeof j, tiny_bpe, fuse, ignore);
    char *p = write_tmp(j);
    tok *t;
    if (tok_load(&t, p, err)) fail_msg("%s", err);
    unlink(p);
    return t;
}

static void test_unk_fusing_and_ignore_merges(void **state)
{
    (void)state;
    tok *fuse = tiny("true", "false"), *nofuse = tiny("false", "false"), *ign = tiny("true", "true");
    assert_int_equal(tok_bos_id(fuse), -1);          /* no post-processor, no "<s>" */
    EXPECT(fuse, "abc", TOK_META "a", "bc");         /* ranks: ▁a first, then bc; no ▁a+bc */
    EXPECT(ign, "abc", TOK_META "abc");              /* the whole word is in the vocab */
    EXPECT(ign, "abc abc", TOK_META "a", "bc", TOK_META "a", "bc");
    EXPECT(fuse, "xyz abc", TOK_META, "<unk>", TOK_META "a", "bc");
    EXPECT(nofuse, "xyz abc", TOK_META, "<unk>", "<unk>", "<unk>", TOK_META "a", "bc");
    EXPECT(fuse, "a\xf0\x9f\x98\x80\xf0\x9f\x98\x80" "b", TOK_META "a", "<unk>", "b");
    int32_t ids[] = {1, 0, 5, 6};
    char err[ERR_MAX], *out;
    size_t len;
    assert_int_equal(tok_decode(fuse, ids, 4, &out, &len, err), 0);
    assert_string_equal(out, "<unk> abc");
    free(out);
    tok_free(fuse);
    tok_free(nofuse);
    tok_free(ign);
}

/* With no unk token HF drops what is not in the vocab, so a word can encode to no ids.
 * The first such word, cached while nothing is in the output yet (its ids NULL), and
 * the cache hit on it later were NULL + 0 and memcpy(NULL, .., 0) (undefined; UBSan
 * reported them under make asan / make fuzz; found by fuzz_tokenizer_json). */
static void test_word_that_encodes_to_nothing_is_cached_as_nothing(void **state)
{
    (void)state;
    char *p = write_tmp("{\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},"
                        " \"decoder\": {\"type\": \"ByteLevel\"},"
                        " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": []}}");
    tok *t;
    char err[ERR_MAX];
    if (tok_load(&t, p, err)) fail_msg("%s", err);
    unlink(p);
    for (int pass = 0; pass < 2; pass++) {   /* the second pass hits the cache */
        tok_ids ids = {0};
        assert_int_equal(tok_encode(t, "xyz", 3, 1, &ids, err), 0);
        assert_int_equal(ids.n, 0);
        assert_int_equal(tok_encode(t, "xyz ab", 6, 1, &ids, err), 0);   /* "xyz", " ab": the space dropped */
        assert_int_equal(ids.n, 2);
        assert_int_equal(ids.ids[0], 0);
        assert_int_equal(ids.ids[1], 1);
        tok_ids_free(&ids);
    }
    tok_free(t);
}

/* ------------------------------------------------------------ speed paths */

/* Encoding per "▁"-chunk (with the per-thread cache) must equal BPE over the
 * whole text as one word, which is what HF does. */
static void test_chunked_bpe_equals_whole_text_bpe(void **state)
{
    (void)state;
    assert_int_equal(mistral->chunked, 1);
    /* One long text: all reference texts joined, twice (the second pass is cached). */
    size_t cap = 1 << 20, n = 0;
    char *all = malloc(cap);
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < n_ref; i++) {
            size_t k = ref[i].n;
            if (n + k + 2 > cap) all = realloc(all, cap *= 2);
            memcpy(all + n, ref[i].s, k);
            n += k;
            all[n++] = pass ? '\n' : ' ';
        }
    }
    tok_ids a = {0}, b = {0};
    char err[ERR_MAX];
    assert_int_equal(tok_encode(mistral, all, n, 1, &a, err), 0);
    mistral->chunked = 0;
    assert_int_equal(tok_encode(mistral, all, n, 1, &b, err), 0);
    mistral->chunked = 1;
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.ids, b.ids, a.n * sizeof *a.ids);
    assert_true(a.n > 10000);
    tok_ids_free(&a);
    tok_ids_free(&b);
    free(all);
}

typedef struct {
    int rounds, bad;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *w = p;
    for (int r = 0; r < w->rounds; r++) {
        for (int k = 0; k < n_ref; k++) {
            tok_ids ids = {0};
            char err[ERR_MAX];
            if (tok_encode(mistral, ref[k].s, ref[k].n, 1, &ids, err)) w->bad++;
            const cJSON *want = ref_ids(k), *x;
            if ((size_t)cJSON_GetArraySize(want) != ids.n) w->bad++;
            size_t i = 0;
            cJSON_ArrayForEach(x, want) if (i < ids.n && ids.ids[i++] != (int32_t)x->valuedouble) w->bad++;
            tok_ids_free(&ids);
        }
    }
    return NULL;
}

static void test_encode_is_thread_safe_on_a_shared_tokenizer(void **state)
{
    (void)state;
    pthread_t th[4];
    worker_arg w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker_arg){.rounds = 3};
        assert_int_equal(pthread_create(&th[i], NULL, worker, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].bad, 0);
    }
}

/* A second tokenizer on the same thread must not see the first one's cache. */
static void test_per_thread_cache_is_keyed_by_tokenizer(void **state)
{
    (void)state;
    char err[ERR_MAX];
    tok *tiny_t;
    if (tok_load(&tiny_t, path_of("golden/tiny-mixtral/model/tokenizer.json"), err)) fail_msg("%s", err);
    const char *text = "the license of the work";
    tok_ids a = {0}, b = {0}, c = {0};
    assert_int_equal(tok_encode(mistral, text, strlen(text), 0, &a, err), 0);
    assert_int_equal(tok_encode(tiny_t, text, strlen(text), 0, &b, err), 0);
    assert_int_equal(tok_encode(mistral, text, strlen(text), 0, &c, err), 0);
    assert_true(a.n != b.n || memcmp(a.ids, b.ids, a.n * sizeof *a.ids));
    assert_int_equal(a.n, c.n);
    assert_memory_equal(a.ids, c.ids, a.n * sizeof *a.ids);
    tok_ids_free(&a);
    tok_ids_free(&b);
    tok_ids_free(&c);
    tok_free(tiny_t);
}

/* ------------------------------------------------------------------ train */

static void test_trained_tokenizer_has_the_mistral_layout_and_round_trips(void **state)
{
    (void)state;
    /* Training text: the reference texts without special text, repeated. */
    char in[] = "/tmp/moet_tok_train_in_XXXXXX";
    int fd = mkstemp(in);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < n_ref; i++)
            if (!has_special_text(ref[i].s)) {
                fwrite(ref[i].s, 1, ref[i].n, f);
                fputc('\n', f);
            }
    fclose(f);
    char out[64];
    snprintf(out, sizeof out, "%s.json", in);
    char err[ERR_MAX];
    const char *files[] = {in};
    assert_int_equal(tok_train(files, 1, 700, 2, out, err), 0);
    tok *t;
    if (tok_load(&t, out, err)) fail_msg("trained tokenizer does not load: %s", err);
    assert_int_equal(tok_vocab_size(t), 700);
    assert_string_equal(tok_piece(t, 0), "<unk>");
    assert_string_equal(tok_piece(t, 1), "<s>");
    assert_string_equal(tok_piece(t, 2), "</s>");
    assert_string_equal(tok_piece(t, 3 + 0x41), "<0x41>");
    assert_int_equal(tok_piece_type(t, 3 + 0x41), TOK_BYTE);
    assert_int_equal(tok_bos_id(t), 1);
    for (int id = 259; id < 700; id++) {   /* "▁" only at the start of a piece */
        const char *p = tok_piece(t, id);
        const char *m = strstr(p + 1, TOK_META);
        if (m) fail_msg("piece %d '%s' has a word start inside", id, p);
    }
    size_t n;
    char *text = slurp(in, &n);
    tok_ids ids = {0};
    char *back;
    size_t len;
    assert_int_equal(tok_encode(t, text, n, 0, &ids, err), 0);
    assert_true(ids.n < n / 2);                /* it does compress */
    assert_int_equal(tok_decode(t, ids.ids, ids.n, &back, &len, err), 0);
    assert_int_equal(len, n);
    assert_memory_equal(back, text, n);
    free(back);
    free(text);
    tok_ids_free(&ids);
    tok_free(t);
    /* Deterministic: a second run writes the same bytes. */
    char out2[72];
    snprintf(out2, sizeof out2, "%s.2.json", in);
    assert_int_equal(tok_train(files, 1, 700, 2, out2, err), 0);
    size_t n1, n2;
    char *a = slurp(out, &n1), *b = slurp(out2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    free(a);
    free(b);
    /* Bad requests. */
    assert_int_equal(tok_train(files, 1, 200, 2, out2, err), -1);
    assert_non_null(strstr(err, "200"));
    const char *missing[] = {"/nonexistent/corpus.txt"};
    assert_int_equal(tok_train(missing, 1, 700, 2, out2, err), -1);
    assert_non_null(strstr(err, "/nonexistent/corpus.txt"));
    unlink(in);
    unlink(out);
    unlink(out2);
}

int main(void)
{
    shared_init();
    char err[ERR_MAX];
    if (tok_load(&mistral, path_of("data/mistral-tokenizer/tokenizer.json"), err)) {
        fprintf(stderr, "cannot load the Mistral tokenizer: %s\n", err);
        return 1;
    }
    mistral_ref = load_json(path_of("data/mistral-tokenizer/reference_ids.json"));
    ref = json_texts(path_of("data/mistral-tokenizer/reference_ids.json"), &n_ref);
    mistral_json = load_json(path_of("data/mistral-tokenizer/tokenizer.json"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mistral_reference_ids_are_reproduced_exactly),
        cmocka_unit_test(test_tiny_mixtral_golden_ids_tokens_and_decoded_text),
        cmocka_unit_test(test_decode_inverts_encode_on_reference_texts),
        cmocka_unit_test(test_decode_keeps_special_token_text_unless_skipped),
        cmocka_unit_test(test_invalid_utf8_round_trips_through_byte_pieces),
        cmocka_unit_test(test_empty_text_gives_only_bos),
        cmocka_unit_test(test_decode_rejects_an_id_outside_the_vocab),
        cmocka_unit_test(test_mistral_vocab_accessors_types_and_scores),
        cmocka_unit_test(test_sha256_is_that_of_the_file_bytes),
        cmocka_unit_test(test_unsupported_types_are_named_in_the_error),
        cmocka_unit_test(test_missing_corrupt_and_inconsistent_files_fail_with_one_line),
        cmocka_unit_test(test_metaspace_pre_tokenizer_variants),
        cmocka_unit_test(test_added_tokens_follow_hf_flags_and_ids),
        cmocka_unit_test(test_unk_fusing_and_ignore_merges),
        cmocka_unit_test(test_word_that_encodes_to_nothing_is_cached_as_nothing),
        cmocka_unit_test(test_chunked_bpe_equals_whole_text_bpe),
        cmocka_unit_test(test_encode_is_thread_safe_on_a_shared_tokenizer),
        cmocka_unit_test(test_per_thread_cache_is_keyed_by_tokenizer),
        cmocka_unit_test(test_trained_tokenizer_has_the_mistral_layout_and_round_trips),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    cJSON_Delete(mistral_ref);
    cJSON_Delete(mistral_json);
    free_texts(ref, n_ref);
    tok_free(mistral);
    return rc;
}
