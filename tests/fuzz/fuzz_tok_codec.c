/* fuzz_tok_codec: arbitrary bytes through tok_encode and arbitrary ids through
 * tok_decode_ex, with four real tokenizers read from $SHARED (default ../shared) once per
 * process: the golden tiny one and Mistral's (SentencePiece style), Qwen3's and gpt-oss's
 * (byte-level; gpt-oss's tokenizer.json is 28 MB). Byte 0 picks them: bit 0 tiny / Mistral,
 * or with bit 3 Qwen3 / gpt-oss; bit 1 decode; bit 2 add_bos (encode) or skip_special (decode).
 * Encode: every id is in the vocabulary, and decoding gives back the text:
 *   Mistral, whose byte fallback covers every byte: exactly, unless the text spells a special
 *     token or "▁" (which decodes as a space), up to one leading space;
 *   gpt-oss (no normalizer): exactly, any bytes, special tokens' text included;
 *   Qwen3: the text with each run of valid UTF-8 between its added tokens put in NFC (as
 *     tests/test_tok_bytelevel.c states decode for Qwen3), the rest byte for byte.
 * Decode: an id outside the vocabulary is an error, never a read out of bounds. */
#include "data/tok.h"
#include "tests/fuzz/fuzz.h"

#include <utf8proc.h>

enum { TINY, MISTRAL, QWEN3, GPTOSS, N_TOK };
static tok *toks[N_TOK];

/* Qwen3's added tokens (all matched on the raw text, no strip rules): texts and lengths. */
static const char *qw_added[64];
static size_t qw_added_len[64];
static int n_qw_added;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *shared = getenv("SHARED") && getenv("SHARED")[0] ? getenv("SHARED") : "../shared";
    const char *rel[N_TOK] = {"golden/tiny-mixtral/model/tokenizer.json", "data/mistral-tokenizer/tokenizer.json",
                              "data/qwen3-tokenizer/tokenizer.json", "data/gptoss-tokenizer/tokenizer.json"};
    char p[1024], err[ERR_MAX];
    for (int i = 0; i < N_TOK; i++) {
        snprintf(p, sizeof p, "%s/%s", shared, rel[i]);
        if (tok_load(&toks[i], p, err)) {
            fprintf(stderr, "fuzz_tok_codec: %s (set SHARED to the shared data folder)\n", err);
            exit(1);
        }
    }
    /* Qwen3's added tokens are the ids past the BPE vocab (151643 on): special or user. */
    for (int id = 151643; id < tok_vocab_size(toks[QWEN3]) && n_qw_added < 64; id++) {
        const char *s = tok_piece(toks[QWEN3], id);
        if (!s || tok_piece_type(toks[QWEN3], id) == TOK_NORMAL) continue;
        qw_added[n_qw_added] = s;
        qw_added_len[n_qw_added++] = strlen(s);
    }
    if (n_qw_added < 20) {
        fprintf(stderr, "fuzz_tok_codec: Qwen3's added tokens not found (%d)\n", n_qw_added);
        exit(1);
    }
    return 0;
}

/* Length of the valid UTF-8 character at s (no overlongs, surrogates, > U+10FFFF), 0 if none. */
static size_t utf8_char(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t k = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (!k || k > n) return 0;
    for (size_t j = 1; j < k; j++)
        if ((s[j] & 0xc0) != 0x80) return 0;
    if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0) || (c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90))
        return 0;
    return k;
}

/* Append s[0..n) to b (room for 3 bytes per byte of s: NFC grows UTF-8 text 3x at most) with
 * each maximal valid UTF-8 run in NFC (utf8proc on the whole run). */
static void put_nfc(char *b, size_t *bn, const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t a = i, k;
        while (i < n && (k = utf8_char(s + i, n - i))) i += k;
        if (i > a) {
            utf8proc_uint8_t *o = NULL;
            utf8proc_ssize_t m = utf8proc_map(s + a, (utf8proc_ssize_t)(i - a), &o, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (m < 0 || (size_t)m > 3 * (i - a)) abort();
            memcpy(b + *bn, o, (size_t)m);
            *bn += (size_t)m;
            free(o);
        }
        if (i < n) b[(*bn)++] = (char)s[i++];   /* an invalid byte, kept */
    }
}

/* What decode(encode(text)) is for Qwen3: the raw text cut at its added tokens (leftmost,
 * longest), each piece between them normalized. malloc'd, *bn bytes. */
static char *qwen3_expected(const unsigned char *s, size_t n, size_t *bn)
{
    char *b = malloc(3 * n + 16);
    if (!b) abort();
    *bn = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        int best = -1;
        for (int k = 0; k < n_qw_added; k++)
            if (qw_added_len[k] <= n - i && !memcmp(s + i, qw_added[k], qw_added_len[k]) &&
                (best < 0 || qw_added_len[k] > qw_added_len[best]))
                best = k;
        if (best < 0) continue;
        put_nfc(b, bn, s + at, i - at);
        memcpy(b + *bn, qw_added[best], qw_added_len[best]);
        *bn += qw_added_len[best];
        at = i + qw_added_len[best];
        i = at - 1;
    }
    put_nfc(b, bn, s + at, n - at);
    return b;
}

static void round_trip(int which, const tok *t, const uint8_t *data, size_t size, const tok_ids *ids)
{
    char err[ERR_MAX] = "", *out;
    size_t len;
    const char *x = (const char *)data;
    if (which == QWEN3 || which == GPTOSS) {
        if (tok_decode_ex(t, ids->ids, ids->n, 0, &out, &len, err)) fuzz_fail("decode of encoded ids failed", err);
        size_t en = size;
        char *exp = which == QWEN3 ? qwen3_expected(data, size, &en) : NULL;
        if (!(len == en && !memcmp(out, exp ? exp : x, en)))
            fuzz_fail(which == QWEN3 ? "Qwen3 decode(encode(text)) is not the text in NFC" : "gpt-oss decode(encode(text)) is not the text", "");
        free(exp);
        free(out);
        return;
    }
    if (tok_decode_ex(t, ids->ids, ids->n, 1, &out, &len, err)) fuzz_fail("decode of encoded ids failed", err);
    /* Mistral: decode(encode(x)) == x, except one leading space ("▁" prefix stripped)
     * and text that spells a special token (split out as that token, dropped here) */
    int special = memmem(data, size, "<s>", 3) || memmem(data, size, "</s>", 4) || memmem(data, size, "<unk>", 5) ||
                  memmem(data, size, "\xe2\x96\x81", 3); /* a literal "▁" decodes as a space */
    if (which == MISTRAL && !special && memchr(data, 0, size) == NULL) {
        size_t n = size;
        if (!(len == n && !memcmp(out, x, n)) && !(n && x[0] == ' ' && len == n - 1 && !memcmp(out, x + 1, len)))
            fuzz_fail("Mistral decode(encode(text)) is not the text", "");
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int which = (data[0] & 1) + (data[0] & 8 ? 2 : 0);
    const tok *t = toks[which];
    int decode = data[0] & 2, flag = (data[0] >> 2) & 1, v = tok_vocab_size(t);
    data++, size--;
    char err[ERR_MAX] = "", *out = NULL;
    size_t len;
    tok_ids ids = {0};
    if (decode) {
        /* ids a little past the vocabulary: 16 bits each, 24 for the vocabularies over 64K */
        size_t w = v + 64 > 65536 ? 3 : 2;
        for (size_t i = 0; i + w <= size; i += w) {
            int id = (int)((data[i] | data[i + 1] << 8 | (w == 3 ? data[i + 2] << 16 : 0)) % (v + 64));
            if (tok_ids_push(&ids, id)) abort();
        }
        int bad = 0;
        for (size_t k = 0; k < ids.n; k++) bad |= ids.ids[k] >= v;
        int rc = tok_decode_ex(t, ids.ids, ids.n, flag, &out, &len, err);
        if (rc) fuzz_check_err(err);
        if (!rc != !bad) fuzz_fail(bad ? "an id outside the vocabulary was decoded" : "decoding valid ids failed", err);
        if (!rc && strlen(out) > len) abort();
    } else {
        if (tok_encode(t, (const char *)data, size, flag, &ids, err)) {
            fuzz_check_err(err);
        } else {
            for (size_t k = 0; k < ids.n; k++)
                if (ids.ids[k] < 0 || ids.ids[k] >= v) fuzz_fail("encode gave an id outside the vocabulary", "");
            round_trip(which, t, data, size, &ids);
        }
    }
    free(out);
    tok_ids_free(&ids);
    return 0;
}
