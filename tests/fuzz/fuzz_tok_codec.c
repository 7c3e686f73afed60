/* fuzz_tok_codec: arbitrary bytes through tok_encode and arbitrary ids through
 * tok_decode_ex, with the golden tiny tokenizer and the real Mistral one (read from
 * $SHARED, default ../shared, at start). Byte 0 picks tokenizer, direction and flags.
 * Encode: every id is in the vocabulary, and decoding gives back the text (for Mistral, whose
 * byte fallback covers every byte: exactly, unless the text spells a special token or "▁",
 * which decodes as a space). Decode: an id outside the vocabulary is an error, never a read
 * out of bounds. */
#include "data/tok.h"
#include "tests/fuzz/fuzz.h"

static tok *toks[2];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *shared = getenv("SHARED") && getenv("SHARED")[0] ? getenv("SHARED") : "../shared";
    const char *rel[2] = {"golden/tiny-mixtral/model/tokenizer.json", "data/mistral-tokenizer/tokenizer.json"};
    char p[1024], err[ERR_MAX];
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", shared, rel[i]);
        if (tok_load(&toks[i], p, err)) {
            fprintf(stderr, "fuzz_tok_codec: %s (set SHARED to the shared data folder)\n", err);
            exit(1);
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const tok *t = toks[data[0] & 1];
    int decode = data[0] & 2, flag = (data[0] >> 2) & 1, v = tok_vocab_size(t);
    data++, size--;
    char err[ERR_MAX] = "", *out = NULL;
    size_t len;
    tok_ids ids = {0};
    if (decode) {
        for (size_t i = 0; i + 2 <= size; i += 2) { /* 16-bit ids, a little past the vocabulary */
            int id = (data[i] | data[i + 1] << 8) % (v + 64);
            if (tok_ids_push(&ids, id)) abort();
        }
        int bad = 0;
        for (size_t k = 0; k < ids.n; k++) bad |= ids.ids[k] >= v;
        int rc = tok_decode_ex(t, ids.ids, ids.n, flag, &out, &len, err);
        if (rc) fuzz_check_err_tok(err);
        if (!rc != !bad) fuzz_fail(bad ? "an id outside the vocabulary was decoded" : "decoding valid ids failed", err);
        if (!rc && strlen(out) > len) abort();
    } else {
        if (tok_encode(t, (const char *)data, size, flag, &ids, err)) {
            fuzz_check_err_tok(err);
        } else {
            for (size_t k = 0; k < ids.n; k++)
                if (ids.ids[k] < 0 || ids.ids[k] >= v) fuzz_fail("encode gave an id outside the vocabulary", "");
            err[0] = 0;
            if (tok_decode_ex(t, ids.ids, ids.n, 1, &out, &len, err)) fuzz_fail("decode of encoded ids failed", err);
            /* Mistral: decode(encode(x)) == x, except one leading space ("▁" prefix stripped)
             * and text that spells a special token (split out as that token, dropped here) */
            int special = memmem(data, size, "<s>", 3) || memmem(data, size, "</s>", 4) || memmem(data, size, "<unk>", 5) ||
                          memmem(data, size, "\xe2\x96\x81", 3); /* a literal "▁" decodes as a space */
            if (t == toks[1] && !special && memchr(data, 0, size) == NULL) {
                const char *x = (const char *)data;
                size_t n = size;
                if (!(len == n && !memcmp(out, x, n)) && !(n && x[0] == ' ' && len == n - 1 && !memcmp(out, x + 1, len)))
                    fuzz_fail("Mistral decode(encode(text)) is not the text", "");
            }
        }
    }
    free(out);
    tok_ids_free(&ids);
    return 0;
}
