/* fuzz_yaml_config: a run config through the validation `moet train --print-config` runs:
 * the YAML text (up to the first NUL byte) and up to 4 key.path=value overrides (the
 * NUL-separated parts after it) through cfg_parse_string; an accepted config must print
 * (cfg_print_yaml, what --print-config shows) as YAML that parses back to the same config,
 * and go through cfg_to_json / cfg_from_json (the trainer_state.json snapshot) unchanged. */
#include "train/config.h"
#include "tests/fuzz/fuzz.h"

static char *json_of_yaml(const char *text)
{
    cfg c;
    char err[ERR_MAX] = "";
    if (cfg_parse_string(&c, text, NULL, 0, err)) fuzz_fail("printed config does not parse back", err);
    char *j = cfg_to_json(&c);
    cfg_free(&c);
    return j;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1), *ov[4];
    if (!buf) abort();
    memcpy(buf, data, size);
    buf[size] = 0;
    int n = 0;
    for (char *p = buf + strlen(buf); p < buf + size && n < 4; p += strlen(p)) ov[n++] = ++p;
    cfg c;
    char err[ERR_MAX] = "";
    if (cfg_parse_string(&c, buf, ov, n, err)) {
        fuzz_check_err(err);
        free(buf);
        return 0;
    }
    char *text = NULL, *json = cfg_to_json(&c);
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cfg_print_yaml(&c, f);
    fclose(f);
    char *again = json_of_yaml(text);
    if (!json || !again || strcmp(json, again)) fuzz_fail("--print-config output reads back differently", text);
    cfg back;
    err[0] = 0;
    if (cfg_from_json(&back, json, err)) fuzz_fail("cfg_to_json output does not read back", err);
    char *json2 = cfg_to_json(&back);
    if (!json2 || strcmp(json, json2)) fuzz_fail("cfg_to_json round trip changed the config", json);
    cfg_free(&back);
    cfg_free(&c);
    free(json), free(json2), free(again), free(text), free(buf);
    return 0;
}
