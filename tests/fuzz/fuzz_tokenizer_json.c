/* fuzz_tokenizer_json: a tokenizer.json through tok_load (it takes a path: the input is
 * written to a temp file; nothing is added to data/), then what prep, tokenize, generate and
 * the GGUF export ask of a loaded tokenizer: encode and decode a few texts, every piece, its
 * type and score. */
#include "data/tok.h"
#include "tests/fuzz/fuzz.h"

static const char *texts[] = {"Hello world", " leading space, trailing ", "a\nb\tc\r\n", "\xe2\x96\x81x \xff\xfe",
                              "<s>[INST] hi [/INST]</s><unk>", "", "日本語 ́",
                              "<|im_start|>user\ncre\xcc\x80me 12345<think>'s<|endoftext|>", "\xc3(\xe2\x82 \x80 x\xf0\x9f"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[ERR_MAX] = "";
    const char *path = fuzz_write("tokenizer.json", data, size);
    tok *t;
    if (tok_load(&t, path, err)) {
        fuzz_check_err(err);
        return 0;
    }
    int v = tok_vocab_size(t);
    if (v < 0) abort();
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        tok_ids ids = {0};
        err[0] = 0;
        if (tok_encode(t, texts[i], strlen(texts[i]), (int)(i & 1), &ids, err)) {
            fuzz_check_err(err);
        } else {
            for (size_t k = 0; k < ids.n; k++)
                if (ids.ids[k] < 0 || ids.ids[k] >= v) fuzz_fail("encode gave an id outside the vocabulary", texts[i]);
            char *out;
            size_t len;
            err[0] = 0;
            if (tok_decode_ex(t, ids.ids, ids.n, (int)(i & 2), &out, &len, err)) fuzz_check_err(err);
            else free(out);
        }
        tok_ids_free(&ids);
    }
    for (int id = 0; id < v && id < 4096; id++) {
        const char *p = tok_piece(t, id);
        (void)tok_piece_type(t, id);
        (void)tok_piece_score(t, id);
        if (p) (void)tok_id_of(t, p);
    }
    (void)tok_bos_id(t), (void)tok_eos_id(t), (void)tok_unk_id(t), (void)tok_sha256(t);
    tok_free(t);
    return 0;
}
