/* fuzz_prep_line: a .jsonl line through prep_json_line, as `moet prep` reads each one
 * ({"text"} or {"messages": [...]} with the mistral or chatml template), with the golden tiny
 * tokenizer, the Mistral one and Qwen3's (byte-level, no BOS). Byte 0 picks them: bit 0 tiny /
 * Mistral, bit 2 Qwen3 instead; bit 1 the chatml template. A document ends with EOS, every id
 * is in the vocabulary, the mask is 0/1; it starts with BOS (mask 0) when the tokenizer has
 * one; a text document is all targets after that; a conversation starts with a mask-0 piece,
 * and with chatml and no BOS (Qwen3) with <|im_start|> (data/chat.h). */
#include "data/prep.h"
#include "tests/fuzz/fuzz.h"

#include <cJSON.h>

enum { TINY, MISTRAL, QWEN3, N_TOK };
static tok *toks[N_TOK];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *shared = getenv("SHARED") && getenv("SHARED")[0] ? getenv("SHARED") : "../shared";
    const char *rel[N_TOK] = {"golden/tiny-mixtral/model/tokenizer.json", "data/mistral-tokenizer/tokenizer.json",
                              "data/qwen3-tokenizer/tokenizer.json"};
    char p[1024], err[ERR_MAX];
    for (int i = 0; i < N_TOK; i++) {
        snprintf(p, sizeof p, "%s/%s", shared, rel[i]);
        if (tok_load(&toks[i], p, err)) {
            fprintf(stderr, "fuzz_prep_line: %s (set SHARED to the shared data folder)\n", err);
            exit(1);
        }
    }
    if (tok_bos_id(toks[QWEN3]) >= 0 || tok_id_of(toks[QWEN3], "<|im_start|>") < 0) {
        fprintf(stderr, "fuzz_prep_line: Qwen3's tokenizer should have <|im_start|> and no BOS\n");
        exit(1);
    }
    return 0;
}

/* 1 if the line is an object with a "text" member (prep reads it as a text document). */
static int is_text_doc(const char *line, size_t len)
{
    cJSON *j = cJSON_ParseWithLengthOpts(line, len, NULL, 0);
    int text = cJSON_IsObject(j) && cJSON_GetObjectItemCaseSensitive(j, "text");
    cJSON_Delete(j);
    return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const tok *t = toks[data[0] & 4 ? QWEN3 : data[0] & 1];
    chat_template tpl = data[0] & 2 ? CHAT_CHATML : CHAT_MISTRAL;
    const char *line = (const char *)data + 1;
    char why[ERR_MAX] = "";
    chat_seq s = {0};
    int rc = prep_json_line(t, tpl, line, size - 1, &s, why);
    if (rc < 0) fuzz_check_err(why);
    if (rc == 0) {
        int v = tok_vocab_size(t), bos = tok_bos_id(t), text = is_text_doc(line, size - 1);
        size_t first = bos >= 0;
        if (s.n < first + 1 || s.ids[s.n - 1] != tok_eos_id(t)) fuzz_fail("a document does not end with EOS", "");
        if (bos >= 0 && (s.ids[0] != bos || s.mask[0] != 0)) fuzz_fail("a document does not start with BOS", "");
        for (size_t i = 0; i < s.n; i++)
            if (s.ids[i] < 0 || s.ids[i] >= v || s.mask[i] > 1) fuzz_fail("bad id or mask in a document", "");
        if (text) {
            for (size_t i = first; i < s.n; i++)
                if (!s.mask[i]) fuzz_fail("a text document has a non-target token", "");
        } else {
            if (s.n < first + 2 || s.mask[first]) fuzz_fail("a conversation does not start with a prompt piece", "");
            if (bos < 0 && tpl == CHAT_CHATML && s.ids[0] != tok_id_of(t, "<|im_start|>"))
                fuzz_fail("a chatml conversation without BOS does not start with <|im_start|>", "");
        }
    }
    if (rc != 0 && s.n) fuzz_fail("a refused line left ids behind", why);
    chat_seq_free(&s);
    return 0;
}
