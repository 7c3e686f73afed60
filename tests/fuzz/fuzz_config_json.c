/* fuzz_config_json: an HF config.json through model_config_from_json (what every model load
 * and `moet info` read), then what info computes from it; a config that parses must print
 * (model_config_to_json) and parse back to the same fields. */
#include "model/config.h"
#include "model/model.h"
#include "tests/fuzz/fuzz.h"

#include <math.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[ERR_MAX] = "", *json = fuzz_str(data, size);
    model_config c, back;
    if (model_config_from_json(&c, json, err)) {
        fuzz_check_err(err);
        free(json);
        return 0;
    }
    size_t total, active;
    model_param_counts(&c, &total, &active);
    if (active > total) abort();
    (void)model_acts_bytes(&c, 1, 16, 0);
    (void)model_acts_bytes(&c, 2, 64, 8);
    char *out = model_config_to_json(&c, "float32");
    if (!out) abort();
    err[0] = 0;
    if (model_config_from_json(&back, out, err)) fuzz_fail("a parsed config does not parse back", err);
    if (back.vocab != c.vocab || back.dim != c.dim || back.ffn != c.ffn || back.n_layers != c.n_layers ||
        back.n_heads != c.n_heads || back.n_kv_heads != c.n_kv_heads || back.head_dim != c.head_dim ||
        back.n_experts != c.n_experts || back.top_k != c.top_k || back.tie_embeddings != c.tie_embeddings ||
        back.sliding_window != c.sliding_window || back.max_pos != c.max_pos)
        fuzz_fail("config.json round trip changed a shape", out);
    free(out);
    free(json);
    return 0;
}
