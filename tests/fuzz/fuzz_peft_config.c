/* fuzz_peft_config: a PEFT adapter_config.json through peft_read_config (what forward --lora,
 * train's lora.init_from and a LoRA checkpoint read), then lora_create on a tiny model with
 * what it accepted (r, targets, router), and peft_config_json's output read back the same. */
#include "checkpoints/peft.h"
#include "tests/fuzz/fuzz.h"

static model m;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *cfg = "{\"vocab_size\": 16, \"hidden_size\": 8, \"intermediate_size\": 8, \"num_hidden_layers\": 1, "
                      "\"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"num_local_experts\": 2, "
                      "\"num_experts_per_tok\": 1}";
    model_config c;
    char err[ERR_MAX];
    if (model_config_from_json(&c, cfg, err) || model_create(&m, &c, 0, err)) {
        fprintf(stderr, "fuzz_peft_config: %s\n", err);
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[ERR_MAX] = "", base[256];
    fuzz_write("adapter_config.json", data, size);
    lora_config lc, back;
    if (peft_read_config(fuzz_tmp(), &lc, base, sizeof base, err)) {
        fuzz_check_err(err);
        return 0;
    }
    lora *lo = NULL;
    err[0] = 0;
    if (lora_create(&lo, &m, &lc, 1, err)) fuzz_check_err(err);
    lora_free(lo);
    char *json = peft_config_json(&lc, m.c.family, base);
    if (!json) abort();
    fuzz_write("adapter_config.json", json, strlen(json));
    err[0] = 0;
    if (peft_read_config(fuzz_tmp(), &back, NULL, 0, err)) fuzz_fail("written adapter_config.json does not read back", err);
    if (back.r != lc.r || back.alpha != lc.alpha || back.rslora != lc.rslora || back.targets != lc.targets ||
        back.train_router != lc.train_router)
        fuzz_fail("adapter_config.json round trip changed the adapter", json);
    free(json);
    return 0;
}
