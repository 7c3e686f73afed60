/* fuzz_prep_line: a .jsonl line through prep_json_line, as `moet prep` reads each one
 * ({"text"} or {"messages": [...]} with the mistral or chatml template), with the golden tiny
 * tokenizer and the Mistral one. Byte 0 picks tokenizer and template. A document comes out
 * as BOS ... EOS with every id in the vocabulary and a 0/1 mask that is 0 on the BOS. */
#include "data/prep.h"
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
            fprintf(stderr, "fuzz_prep_line: %s (set SHARED to the shared data folder)\n", err);
            exit(1);
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const tok *t = toks[data[0] & 1];
    chat_template tpl = data[0] & 2 ? CHAT_CHATML : CHAT_MISTRAL;
    char why[ERR_MAX] = "";
    chat_seq s = {0};
    int rc = prep_json_line(t, tpl, (const char *)data + 1, size - 1, &s, why);
    if (rc < 0) fuzz_check_err(why);
    if (rc == 0) {
        int v = tok_vocab_size(t);
        if (s.n < 2 || s.ids[0] != tok_bos_id(t) || s.ids[s.n - 1] != tok_eos_id(t) || s.mask[0] != 0)
            fuzz_fail("a document is not BOS ... EOS", "");
        for (size_t i = 0; i < s.n; i++)
            if (s.ids[i] < 0 || s.ids[i] >= v || s.mask[i] > 1) fuzz_fail("bad id or mask in a document", "");
    }
    if (rc != 0 && s.n) fuzz_fail("a refused line left ids behind", why);
    chat_seq_free(&s);
    return 0;
}
