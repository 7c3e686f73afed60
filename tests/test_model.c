/* Model-level checks: config.json parsing, parameter table, memory sizing, HF directory
 * load/save (round trip and every way a directory can disagree with its config). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoints/hf.h"
#include "common/err.h"
#include "common/fsutil.h"
#include "model/model.h"

static const char *TINY = "{\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":12,\"num_hidden_layers\":2,"
                          "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":6,"
                          "\"num_local_experts\":3,\"num_experts_per_tok\":2,"
                          "\"rope_parameters\":{\"rope_theta\":500.0,\"rope_type\":\"default\"}}";

static void test_config_reads_hf_fields_and_defaults(void **state)
{
    model_config c;
    char err[ERR_MAX];
    assert_int_equal(model_config_from_json(&c, TINY, err), 0);
    assert_int_equal(c.head_dim, 6); /* differs from hidden/heads = 4 */
    assert_float_equal(c.rope_theta, 500.0, 0);
    assert_float_equal(c.norm_eps, 1e-5, 0);
    assert_float_equal(c.aux_coef, 0.02, 0);
    assert_int_equal(c.sliding_window, 0);
    const char *j2 = "{\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":12,\"num_hidden_layers\":1,"
                     "\"num_attention_heads\":4,\"rope_theta\":1234.5,\"sliding_window\":64,"
                     "\"tie_word_embeddings\":true}";
    assert_int_equal(model_config_from_json(&c, j2, err), 0);
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.head_dim, 4);
    assert_float_equal(c.rope_theta, 1234.5, 0);
    assert_int_equal(c.sliding_window, 64);
    assert_int_equal(c.tie_embeddings, 1);
    /* to_json -> from_json is the identity on every field */
    char *s = model_config_to_json(&c, "float32");
    model_config c2;
    assert_int_equal(model_config_from_json(&c2, s, err), 0);
    assert_memory_equal(&c, &c2, sizeof c);
    assert_non_null(strstr(s, "\"rope_parameters\""));
    assert_non_null(strstr(s, "\"MixtralForCausalLM\""));
    free(s);
}

static void test_config_rejects_inconsistent_shapes_with_a_clear_message(void **state)
{
    struct { const char *json, *msg; } cases[] = {
        {"{\"hidden_size\":16}", "missing required key 'vocab_size'"},
        {"[1,2]", "not a JSON object"},
        {"{\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":12,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":4,\"num_key_value_heads\":3}", "not a multiple"},
        {"{\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":12,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":4,\"num_local_experts\":2,\"num_experts_per_tok\":3}", "num_experts_per_tok"},
        {"{\"vocab_size\":40.5,\"hidden_size\":16}", "'vocab_size' must be an integer"},
        {"{\"model_type\":\"llama\",\"vocab_size\":40}", "model_type 'llama' is not supported"},
        {"{\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":12,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":4,\"head_dim\":5}", "must be even"},
#define BASE "\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":12,\"num_hidden_layers\":1,\"num_attention_heads\":4,"
        {"{" BASE "\"num_key_value_heads\":0}", "num_key_value_heads is 0, must be positive"},
        {"{" BASE "\"rope_theta\":\"10000\"}", "'rope_theta' must be a number"},
        {"{" BASE "\"rope_scaling\":{\"type\":\"linear\",\"factor\":2}}", "rope_scaling is not supported"},
        {"{" BASE "\"rope_parameters\":{\"factor\":2}}", "rope_parameters 'factor' is not supported (only default RoPE)"},
        /* found by fuzz_config_json: the key unquoted read as a doubled "X: X:" prefix */
        {"{" BASE "\"rope_parameters\":{\"a: b: b: \\u001b\":1}}", "rope_parameters 'a: b: b: \\x1B' is not supported"},
        {"{" BASE "\"router_jitter_noise\":0.01}", "router_jitter_noise 0.01 is not supported"},
        {"{" BASE "\"attention_dropout\":0.1}", "attention_dropout 0.1 is not supported"},
        {"{" BASE "\"tie_word_embeddings\":\"maybe\"}", "'tie_word_embeddings' must be true or false"},
        {"{" BASE "\"max_position_embeddings\":-5}", "max_position_embeddings is -5"},
        /* found by fuzz_config_json: 31 x 26,384 experts built a 1 GB parameter table in 15 s */
        {"{\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":12,\"num_hidden_layers\":31,"
         "\"num_attention_heads\":4,\"num_local_experts\":26384}",
         "num_local_experts 26384 over 31 MoE layers makes 817904 expert MLPs, more than moet's 262144"},
        {"{" BASE "\"num_local_experts\":300000}", "num_local_experts 300000 over 1 MoE layer makes 300000"},
#undef BASE
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        model_config c;
        char err[ERR_MAX] = "";
        assert_int_equal(model_config_from_json(&c, cases[i].json, err), -1);
        printf("  %s\n", err);
        assert_non_null(strstr(err, cases[i].msg));
    }
}

static void test_mixtral_8x7b_has_46_7b_parameters_and_12_9b_active(void **state)
{
    const char *j = "{\"vocab_size\":32000,\"hidden_size\":4096,\"intermediate_size\":14336,\"num_hidden_layers\":32,"
                    "\"num_attention_heads\":32,\"num_key_value_heads\":8,\"num_local_experts\":8,"
                    "\"num_experts_per_tok\":2}";
    model_config c;
    char err[ERR_MAX];
    assert_int_equal(model_config_from_json(&c, j, err), 0);
    size_t total, active;
    model_param_counts(&c, &total, &active);
    assert_int_equal(total, 46702792704ULL); /* the published count of Mixtral-8x7B */
    assert_int_equal(active, 12879925248ULL);
}

static void test_table_covers_the_buffer_exactly_and_counts_agree(void **state)
{
    model_config c;
    char err[ERR_MAX];
    assert_int_equal(model_config_from_json(&c, TINY, err), 0);
    model m;
    assert_int_equal(model_create(&m, &c, 0, err), 0);
    size_t next = 0, total, active;
    for (int i = 0; i < m.tab.n; i++) { /* contiguous, no gaps or overlaps */
        assert_int_equal(m.tab.t[i].offset, next);
        next += m.tab.t[i].numel;
    }
    assert_int_equal(next, m.tab.total);
    model_param_counts(&c, &total, &active);
    assert_int_equal(total, m.tab.total);
    assert_int_equal(m.tab.n, 1 + 2 * (7 + 3 * 3) + 2);
    /* q, k, v are stacked for one GEMM and w1|w3 per expert likewise */
    assert_ptr_equal(m.w + model_find(&m, "model.layers.1.self_attn.q_proj.weight")->offset, m.layers[1].wqkv.p[0]);
    assert_int_equal(model_find(&m, "model.layers.0.self_attn.k_proj.weight")->offset,
                     model_find(&m, "model.layers.0.self_attn.q_proj.weight")->offset + 4 * 6 * 16);
    assert_int_equal(model_find(&m, "model.layers.0.block_sparse_moe.experts.1.w3.weight")->offset,
                     model_find(&m, "model.layers.0.block_sparse_moe.experts.1.w1.weight")->offset + 12 * 16);
    model_free(&m);
}

static void test_activation_memory_grows_linearly_in_sequence_length(void **state)
{
    model_config c;
    char err[ERR_MAX];
    assert_int_equal(model_config_from_json(&c, TINY, err), 0);
    /* bytes(2T) - 2 bytes(T) is a constant (the fixed-size loss chunk), not a T^2 term */
    double d1 = (double)model_acts_bytes(&c, 1, 2048, 0) - 2.0 * model_acts_bytes(&c, 1, 1024, 0);
    double d2 = (double)model_acts_bytes(&c, 1, 4096, 0) - 2.0 * model_acts_bytes(&c, 1, 2048, 0);
    double per_token = model_acts_bytes(&c, 1, 4096, 0) / 4096.0;
    printf("  bytes/token at 4096: %.0f; bytes(2T)-2bytes(T): %.0f then %.0f\n", per_token, d1, d2);
    assert_true(d2 <= 0 && d1 <= 0);                        /* sub-additive: no quadratic term */
    assert_true(model_acts_bytes(&c, 1, 4096, 0) <= 2.0 * model_acts_bytes(&c, 1, 2048, 0));
    assert_true(model_acts_bytes(&c, 4, 1024, 0) <= 4.0 * model_acts_bytes(&c, 1, 1024, 0));
}

/* A model dir in /tmp with the tiny config, random weights; returns the model. */
static void make_dir(const char *dir, model *m)
{
    model_config c;
    char err[ERR_MAX];
    assert_int_equal(model_config_from_json(&c, TINY, err), 0);
    assert_int_equal(model_create(m, &c, 0, err), 0);
    model_init_random(m, 42);
    fs_rm_rf(dir, err);
    assert_int_equal(fs_mkdir_p(dir, err), 0);
    assert_int_equal(ckpt_save_model(m, dir, ST_F32, 0, err), 0);
}

static void test_hf_dir_round_trips_in_f32_bf16_and_sharded(void **state)
{
    char err[ERR_MAX], dir[64];
    snprintf(dir, sizeof dir, "/tmp/moet_test_hf_%d", (int)getpid());
    model m, m2;
    make_dir(dir, &m);
    assert_int_equal(ckpt_load_model(&m2, dir, 0, err), 0);
    assert_memory_equal(m.w, m2.w, m.tab.total * sizeof(float));
    model_free(&m2);
    /* bf16: every value is the rounded one, within 2^-8 relative */
    assert_int_equal(ckpt_save_model(&m, dir, ST_BF16, 0, err), 0);
    assert_int_equal(ckpt_load_model(&m2, dir, 0, err), 0);
    for (size_t i = 0; i < m.tab.total; i++) assert_true(fabsf(m.w[i] - m2.w[i]) <= fabsf(m.w[i]) / 256);
    model_free(&m2);
    /* sharded into ~4 KB pieces with an index */
    fs_rm_rf(dir, err);
    fs_mkdir_p(dir, err);
    assert_int_equal(ckpt_save_model(&m, dir, ST_F32, 4096, err), 0);
    char idx[128];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    assert_true(fs_exists(idx));
    assert_int_equal(ckpt_load_model(&m2, dir, 0, err), 0);
    assert_memory_equal(m.w, m2.w, m.tab.total * sizeof(float));
    model_free(&m2);
    model_free(&m);
    fs_rm_rf(dir, err);
}

static void test_hf_dir_that_disagrees_with_its_config_is_refused(void **state)
{
    char err[ERR_MAX], dir[64], path[128];
    snprintf(dir, sizeof dir, "/tmp/moet_test_hf_bad_%d", (int)getpid());
    model m, m2;
    make_dir(dir, &m);
    st_out *o = ckpt_weight_list(&m, ST_F32);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    /* a missing tensor */
    assert_int_equal(st_write(path, o + 1, m.tab.n - 1, NULL, err), 0);
    assert_int_equal(ckpt_load_model(&m2, dir, 0, err), -1);
    printf("  %s\n", err);
    assert_non_null(strstr(err, "missing tensor 'model.embed_tokens.weight'"));
    /* a wrong shape */
    o[3].shape[0] = 7;
    assert_int_equal(st_write(path, o, m.tab.n, NULL, err), 0);
    assert_int_equal(ckpt_load_model(&m2, dir, 0, err), -1);
    printf("  %s\n", err);
    assert_non_null(strstr(err, "has shape [7,16], the config needs"));
    o[3].shape[0] = m.tab.t[3].shape[0];
    /* an extra tensor from another architecture */
    st_out *o2 = calloc(m.tab.n + 1, sizeof *o2);
    memcpy(o2, o, m.tab.n * sizeof *o2);
    o2[m.tab.n] = o[0];
    o2[m.tab.n].name = "model.layers.0.mlp.gate_proj.weight";
    assert_int_equal(st_write(path, o2, m.tab.n + 1, NULL, err), 0);
    assert_int_equal(ckpt_load_model(&m2, dir, 0, err), -1);
    printf("  %s\n", err);
    assert_non_null(strstr(err, "unexpected tensor 'model.layers.0.mlp.gate_proj.weight'"));
    /* no config.json */
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    assert_int_equal(ckpt_load_model(&m2, dir, 0, err), -1);
    printf("  %s\n", err);
    assert_non_null(strstr(err, "config.json"));
    free(o), free(o2);
    model_free(&m);
    fs_rm_rf(dir, err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_reads_hf_fields_and_defaults),
        cmocka_unit_test(test_config_rejects_inconsistent_shapes_with_a_clear_message),
        cmocka_unit_test(test_mixtral_8x7b_has_46_7b_parameters_and_12_9b_active),
        cmocka_unit_test(test_table_covers_the_buffer_exactly_and_counts_agree),
        cmocka_unit_test(test_activation_memory_grows_linearly_in_sequence_length),
        cmocka_unit_test(test_hf_dir_round_trips_in_f32_bf16_and_sharded),
        cmocka_unit_test(test_hf_dir_that_disagrees_with_its_config_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
