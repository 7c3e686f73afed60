/* fuzz_trainer_state: a checkpoint's trainer_state.json through what reads it: the sha256
 * check of its "files" (ckpt_read_state; the checkpoint holds a "model.safetensors" whose
 * sha256 the seeds name), the trainer's fields (ckpt_state_parse, as a resume reads them),
 * the config snapshot (cfg_from_json, as load_any_model and the resume check read it) and
 * the tokenizer lookup (load_find_tokenizer, as generate / export do). */
#include "checkpoints/ckpt.h"
#include "train/load.h"
#include "tests/fuzz/fuzz.h"

#include <cJSON.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_write("model.safetensors", "moet fuzz\n", 10); /* its sha256 78e080fe... is in the seeds */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[ERR_MAX] = "", *text = NULL, *json = fuzz_str(data, size), tk[4096];
    fuzz_write("trainer_state.json", data, size);
    if (ckpt_read_state(fuzz_tmp(), &text, err)) fuzz_check_err(err);
    else if (strcmp(text, json)) abort();
    free(text);
    ckpt_state st;
    err[0] = 0;
    if (ckpt_state_parse(json, &st, err)) fuzz_check_err(err);
    else if (st.step < 0 || st.epoch < 0 || st.index < 0 || st.tokens_seen < 0) abort();
    cJSON *o = cJSON_Parse(json);
    char *c = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(o, "config"));
    cJSON_Delete(o);
    if (c) {
        cfg conf;
        err[0] = 0;
        if (cfg_from_json(&conf, c, err)) fuzz_check_err(err);
        else cfg_free(&conf);
        free(c);
    }
    err[0] = 0;
    if (load_find_tokenizer(fuzz_tmp(), json, NULL, tk, sizeof tk, err)) fuzz_check_err(err);
    free(json);
    return 0;
}
