/* trainer_state.json: every way it can be wrong gives one non-empty, printable line
 * (issue 14: a "files" value that was not a string left err unset, and `moet eval` printed
 * "moet eval: " or a stray byte), and the trainer's fields are range-checked. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "checkpoints/ckpt.h"
#include "common/sha256.h"
#include "tests/tmpdir.h"

#include <string.h>

static int setup(void **state) { return tmpdir_make("moet_test_ckpt"); }
static int teardown(void **state) { return tmpdir_remove(); }

/* err must be one line of printable ASCII that contains want */
static void expect_line(const char *err, const char *want)
{
    printf("    %s\n", err);
    assert_true(err[0] != 0);
    for (const char *c = err; *c; c++) assert_true(*c >= 0x20 && *c < 0x7f);
    assert_non_null(strstr(err, want));
}

static void write_state(const char *json)
{
    char err[ERR_MAX];
    assert_int_equal(fs_write_atomic(tmp_path("trainer_state.json"), json, strlen(json), err), 0);
}

static void test_read_state_errors_are_set_and_printable(void **state)
{
    char err[ERR_MAX], hex[65], json[400];
    assert_int_equal(fs_write_atomic(tmp_path("model.safetensors"), "weights", 7, err), 0);
    assert_int_equal(sha256_file(tmp_path("model.safetensors"), hex, err), 0);
    static const struct { const char *json, *want; } cases[] = {
        {"{\"files\": {\"model.safetensors\": true}}", "\"files\" entry 'model.safetensors' is not a file name"},
        {"{\"files\": {\"model.safetensors\": 6}}", "with a sha256 string"},
        {"{\"files\": {\"../model.safetensors\": \"00\"}}", "entry '../model.safetensors' is not a file name"},
        {"{\"files\": {\"\\u0006\\u001b\": \"00\"}}", "entry '\\x06\\x1B' is not"},
        {"{\"files\": {\"trainer_state.json\": \"00\"}}", "entry 'trainer_state.json' is not"},
        {"{\"files\": {\"\": \"00\"}}", "entry '' is not"},
        {"{\"files\": {\"missing.bin\": \"00\"}}", "missing.bin: cannot open"},
        {"{\"files\": {\"model.safetensors\": \"00\"}}", "sha256 does not match"},
        {"{\"files\": []}", "no \"files\" object"},
        {"{\"step\": 1}", "no \"files\" object"},
        {"[1, 2", "not JSON"},
        {"", "not JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *text = (char *)1;
        write_state(cases[i].json);
        err[0] = 0;
        assert_int_equal(ckpt_read_state(dir, &text, err), -1);
        assert_null(text);
        expect_line(err, cases[i].want);
    }
    snprintf(json, sizeof json, "{\"files\": {\"model.safetensors\": \"%s\"}}", hex);
    write_state(json);
    char *text = NULL;
    assert_int_equal(ckpt_read_state(dir, &text, err), 0);
    assert_string_equal(text, json);
    free(text);
}

static void test_state_fields_are_range_checked(void **state)
{
    const char *rng = "\"rng\": [\"0123456789abcdef\", \"0000000000000001\", \"ffffffffffffffff\", \"00000000000000aA\"]";
    char json[600], err[ERR_MAX];
    ckpt_state st;
    snprintf(json, sizeof json, "{\"step\": 7, \"kind\": \"lora\", \"data\": {\"epoch\": 2, \"index\": 3}, %s, "
                                "\"tokens_seen\": 12345, \"elapsed_s\": 61.25, \"chat_template\": \"chatml\"}", rng);
    assert_int_equal(ckpt_state_parse(json, &st, err), 0);
    assert_int_equal(st.step, 7);
    assert_true(st.elapsed_s == 61.25 && !strcmp(st.chat_template, "chatml"));
    assert_true(st.epoch == 2 && st.index == 3 && st.tokens_seen == 12345 && st.lora == 1);
    assert_true(st.rng[0] == 0x0123456789abcdefULL && st.rng[2] == ~0ULL && st.rng[3] == 0xaa);
    static const struct { const char *head, *want; } bad[] = {
        {"\"step\": -1, \"data\": {\"epoch\": 0, \"index\": 0}", "step is not an integer"},
        {"\"step\": 1.5, \"data\": {\"epoch\": 0, \"index\": 0}", "step is not an integer"},
        {"\"step\": 2e9, \"data\": {\"epoch\": 0, \"index\": 0}", "step is not an integer"},
        {"\"step\": 1, \"data\": {\"epoch\": 1e300, \"index\": 0}", "data.epoch / data.index"},
        {"\"step\": 1, \"data\": {\"epoch\": 0, \"index\": \"3\"}", "data.epoch / data.index"},
        {"\"step\": 1, \"data\": {\"epoch\": 0, \"index\": 0}, \"tokens_seen\": -5", "tokens_seen"},
        {"\"step\": 1, \"data\": {\"epoch\": 0, \"index\": 0}, \"tokens_seen\": 1e300", "tokens_seen"},
        {"\"step\": 1, \"data\": {\"epoch\": 0, \"index\": 0}, \"elapsed_s\": -1", "elapsed_s"},
        {"\"step\": 1, \"data\": {\"epoch\": 0, \"index\": 0}, \"elapsed_s\": \"1\"", "elapsed_s"},
        {"\"step\": 1, \"data\": {\"epoch\": 0, \"index\": 0}, \"chat_template\": \"alpaca\"", "chat_template"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(json, sizeof json, "{%s, %s}", bad[i].head, rng);
        assert_int_equal(ckpt_state_parse(json, &st, err), -1);
        expect_line(err, bad[i].want);
    }
    const char *rngs[] = {"[1, 2, 3, 4]", "[\"0123456789abcdef\"]", "\"x\"",
                          "[\"-123456789abcdef\", \"0000000000000001\", \"1\", \"1\"]",
                          "[\" 123456789abcdef\", \"0000000000000001\", \"0000000000000001\", \"0000000000000001\"]",
                          "[\"0000000000000000\", \"0000000000000000\", \"0000000000000000\", \"0000000000000000\"]"};
    for (size_t i = 0; i < sizeof rngs / sizeof rngs[0]; i++) {
        snprintf(json, sizeof json, "{\"step\": 1, \"data\": {\"epoch\": 0, \"index\": 0}, \"rng\": %s}", rngs[i]);
        assert_int_equal(ckpt_state_parse(json, &st, err), -1);
        expect_line(err, "rng");
    }
    snprintf(json, sizeof json, "{\"step\": 1, \"data\": {\"epoch\": 0, \"index\": 0}, %s}", rng);
    assert_int_equal(ckpt_state_parse(json, &st, err), 0); /* an older checkpoint: no elapsed_s, no template */
    assert_true(st.elapsed_s == 0 && st.chat_template[0] == 0);
    assert_int_equal(ckpt_state_parse("[]", &st, err), -1);
    expect_line(err, "not a JSON object");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_state_errors_are_set_and_printable),
        cmocka_unit_test(test_state_fields_are_range_checked),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
