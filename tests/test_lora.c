/* LoRA: gradients of every adapter kind (attention, per-expert w1/w2/w3, trained router,
 * with and without dropout) against finite differences; merge equals the adapted model;
 * the frozen base gets no gradient; PEFT files round-trip and bad ones are refused.
 * FD tolerance: 2e-3 relative + an fp32 noise floor of 2e-7 |loss| / h (a loss of ~4
 * evaluated in fp32 differs by ~1e-7 relative between the two sides). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoints/peft.h"
#include "common/err.h"
#include "common/fsutil.h"
#include "common/rng.h"
#include "model/lora.h"

static const char *CFG = "{\"vocab_size\":60,\"hidden_size\":24,\"intermediate_size\":20,\"num_hidden_layers\":2,"
                         "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":8,\"num_local_experts\":4,"
                         "\"num_experts_per_tok\":2,\"rope_theta\":100.0,\"initializer_range\":0.2}";

typedef struct {
    model m;
    lora *lo;
    model_acts *a;
    model_batch b;
    int32_t tok[2 * 10], lab[2 * 10];
} fixture;

static void setup(fixture *f, double dropout, unsigned targets, int router)
{
    model_config c;
    char err[ERR_MAX];
    assert_int_equal(model_config_from_json(&c, CFG, err), 0);
    assert_int_equal(model_create(&f->m, &c, 0, err), 0); /* frozen base: no gradient buffer */
    model_init_random(&f->m, 11);
    lora_config lc = {.r = 3, .alpha = 6, .dropout = dropout, .targets = targets, .train_router = router};
    assert_int_equal(lora_create(&f->lo, &f->m, &lc, 5, err), 0);
    rng_state r;
    rng_seed(&r, 99, 0);
    for (size_t i = 0; i < f->lo->tab.total; i++) f->lo->w[i] += 0.1f * (float)rng_normal(&r); /* B != 0 */
    lora_attach(&f->m, f->lo);
    for (int i = 0; i < 20; i++) f->tok[i] = (int32_t)(rng_next(&r) % 60), f->lab[i] = i % 7 == 3 ? -100 : f->tok[i];
    f->b = (model_batch){2, 10, f->tok, f->lab, NULL, 0};
    assert_int_equal(model_acts_create(&f->a, &f->m, 2, 10, err), 0);
}

static void teardown(fixture *f)
{
    model_acts_free(f->a);
    lora_free(f->lo);
    model_free(&f->m);
}

/* Loss of the training pass (dropout on, fixed key); grads go to a scratch copy. */
static double train_loss(fixture *f, int *route, int Nk)
{
    char err[ERR_MAX];
    model_stats st;
    float *save = malloc(f->lo->tab.total * 4);
    memcpy(save, f->lo->g, f->lo->tab.total * 4);
    assert_int_equal(model_forward_backward(&f->m, f->a, &f->b, 1.0 / 16, 0.1, 0.01, 1, &st, err), 0);
    memcpy(f->lo->g, save, f->lo->tab.total * 4);
    free(save);
    int flipped = 0;
    for (int l = 0; l < f->m.c.n_layers; l++)
        flipped |= memcmp(route + l * Nk, model_routing(f->a, l, NULL), Nk * sizeof(int)) != 0;
    return flipped ? NAN : st.loss;
}

static void check_fd(double dropout, unsigned targets, int router)
{
    fixture f;
    setup(&f, dropout, targets, router);
    lora_set_dropout_key(f.lo, 1, 2, 0);
    char err[ERR_MAX];
    model_stats st;
    memset(f.lo->g, 0, f.lo->tab.total * 4);
    assert_int_equal(model_forward_backward(&f.m, f.a, &f.b, 1.0 / 16, 0.1, 0.01, 1, &st, err), 0);
    assert_int_equal(st.n_targets, 16);
    int L = f.m.c.n_layers, Nk = 20 * f.m.c.top_k;
    int *route = malloc((size_t)L * Nk * sizeof(int));
    for (int l = 0; l < L; l++) memcpy(route + l * Nk, model_routing(f.a, l, NULL), Nk * sizeof(int));
    size_t n = f.lo->tab.total;
    float *w0 = malloc(n * 4), *g = malloc(n * 4), *v = malloc(n * 4);
    memcpy(w0, f.lo->w, n * 4);
    memcpy(g, f.lo->g, n * 4);
    rng_state r;
    rng_seed(&r, 7, 1);
    for (int rep = 0; rep < 3; rep++) {
        double h = 6e-4, lp = NAN, lm = NAN;
        for (int tries = 0; tries < 20 && (isnan(lp) || isnan(lm)); tries++) { /* redraw on a routing flip */
            h *= 0.8;
            for (size_t i = 0; i < n; i++) v[i] = (float)rng_normal(&r);
            for (size_t i = 0; i < n; i++) f.lo->w[i] = w0[i] + (float)h * v[i];
            lp = train_loss(&f, route, Nk);
            for (size_t i = 0; i < n; i++) f.lo->w[i] = w0[i] - (float)h * v[i];
            lm = train_loss(&f, route, Nk);
        }
        memcpy(f.lo->w, w0, n * 4);
        assert_false(isnan(lp) || isnan(lm));
        double fd = (lp - lm) / (2 * h), ana = 0;
        for (size_t i = 0; i < n; i++) ana += (double)g[i] * v[i];
        double allowed = 2e-3 * (fabs(fd) + fabs(ana)) + 2e-7 * fabs(lp) / h;
        printf("  dropout %.1f targets 0x%02x router %d: analytic % .6e fd % .6e diff %.1e (allowed %.1e)\n", dropout,
               targets, router, ana, fd, fabs(fd - ana), allowed);
        assert_true(fabs(fd - ana) <= allowed);
    }
    free(w0), free(g), free(v), free(route);
    teardown(&f);
}

static void test_adapter_gradients_match_finite_differences_on_every_target(void **state)
{
    check_fd(0, 1u << LORA_Q | 1u << LORA_K | 1u << LORA_V | 1u << LORA_O, 0);
    check_fd(0, 1u << LORA_W1 | 1u << LORA_W2 | 1u << LORA_W3, 0);
    check_fd(0, 0x7f, 1); /* everything, plus the router trained as modules_to_save */
}

static void test_adapter_gradients_with_dropout_match_finite_differences(void **state)
{
    check_fd(0.3, 0x7f, 0);
}

static void test_merged_weights_give_the_adapted_logits_and_base_stays_frozen(void **state)
{
    fixture f;
    setup(&f, 0.2, 0x7f, 1);
    char err[ERR_MAX];
    model_stats st;
    size_t nl = (size_t)20 * f.m.c.vocab;
    float *l1 = malloc(nl * 4), *l2 = malloc(nl * 4), *base0 = malloc(f.m.tab.total * 4);
    memcpy(base0, f.m.w, f.m.tab.total * 4);
    assert_int_equal(model_forward_backward(&f.m, f.a, &f.b, 1.0 / 16, 0.1, 0, 1, &st, err), 0);
    assert_null(f.m.g); /* no gradient buffer for the base at all */
    assert_memory_equal(base0, f.m.w, f.m.tab.total * 4);
    assert_int_equal(model_forward(&f.m, f.a, &f.b, 0.1, 0, l1, &st, err), 0); /* eval: no dropout */
    assert_int_equal(lora_merge(&f.m, err), 0);
    assert_null(f.m.lora);
    assert_int_equal(model_forward(&f.m, f.a, &f.b, 0.1, 0, l2, &st, err), 0);
    double num = 0, den = 0;
    for (size_t i = 0; i < nl; i++) num += (l1[i] - l2[i]) * (double)(l1[i] - l2[i]), den += (double)l1[i] * l1[i];
    printf("  merged vs adapted logits: rel %.2e\n", sqrt(num / den));
    assert_true(sqrt(num / den) < 1e-5);
    free(l1), free(l2), free(base0);
    model_acts_free(f.a);
    f.a = NULL;
    lora_free(f.lo);
    f.lo = NULL;
    model_free(&f.m);
}

/* A fresh adapter is PEFT's init: every A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform,
 * a = sqrt(5)), every B = 0; so the first backward gives B a gradient and training moves.
 * Statistics per A tensor (n = r*in >= 72 values): all inside the bound, none zero, and the
 * standard deviation within 35% of bound/sqrt(3) (the uniform's; 5 sigma of its sampling
 * error at n = 72 is ~30%). */
static void test_a_fresh_adapter_has_kaiming_a_zero_b_and_learns(void **state)
{
    model_config c;
    model m;
    char err[ERR_MAX];
    assert_int_equal(model_config_from_json(&c, CFG, err), 0);
    assert_int_equal(model_create(&m, &c, 0, err), 0);
    model_init_random(&m, 11);
    lora_config lc = {.r = 3, .alpha = 6, .targets = 1u << LORA_Q | 1u << LORA_O | 1u << LORA_W1 | 1u << LORA_W2};
    lora *lo;
    assert_int_equal(lora_create(&lo, &m, &lc, 5, err), 0);
    int n_a = 0, n_b = 0;
    for (int j = 0; j < lo->tab.n; j++) {
        const model_tensor *t = &lo->tab.t[j];
        const float *w = lo->w + t->offset;
        if (strstr(t->name, ".lora_B.")) {
            n_b++;
            for (size_t k = 0; k < t->numel; k++) assert_true(w[k] == 0.0f);
            continue;
        }
        assert_non_null(strstr(t->name, ".lora_A."));
        n_a++;
        double bound = 1.0 / sqrt((double)t->shape[1]), ss = 0;
        for (size_t k = 0; k < t->numel; k++) {
            assert_true(fabs(w[k]) <= bound && w[k] != 0.0f);
            ss += (double)w[k] * w[k];
        }
        double sd = sqrt(ss / t->numel), want = bound / sqrt(3.0);
        if (fabs(sd - want) > 0.35 * want) fail_msg("%s: sd %.4f, uniform's %.4f", t->name, sd, want);
    }
    assert_int_equal(n_a, n_b);
    assert_true(n_a >= 4);
    /* one backward: B gets a gradient (A's is zero while B is zero, as in PEFT) */
    lora_attach(&m, lo);
    model_acts *a;
    int32_t tok[2 * 10];
    for (int i = 0; i < 20; i++) tok[i] = (i * 7 + 3) % 60;
    model_batch b = {2, 10, tok, NULL, NULL, 0};
    assert_int_equal(model_acts_create(&a, &m, 2, 10, err), 0);
    model_stats st;
    assert_int_equal(model_forward_backward(&m, a, &b, 1.0 / 18, 0.1, 0, 1, &st, err), 0);
    double gb = 0;
    for (int j = 0; j < lo->tab.n; j++)
        if (strstr(lo->tab.t[j].name, ".lora_B."))
            for (size_t k = 0; k < lo->tab.t[j].numel; k++) gb += fabs(lo->g[lo->tab.t[j].offset + k]);
    assert_true(gb > 1e-6);
    model_acts_free(a);
    lora_free(lo);
    model_free(&m);
}

static void test_peft_files_round_trip_and_bad_configs_are_refused(void **state)
{
    fixture f;
    setup(&f, 0.1, 1u << LORA_Q | 1u << LORA_V | 1u << LORA_W2, 1);
    char err[ERR_MAX], dir[64], p[128];
    snprintf(dir, sizeof dir, "/tmp/moet_test_peft_%d", (int)getpid());
    fs_rm_rf(dir, err);
    fs_mkdir_p(dir, err);
    assert_int_equal(peft_save(f.lo, dir, "base/model", ST_F32, err), 0);
    lora_config lc;
    char base[64];
    assert_int_equal(peft_read_config(dir, &lc, base, sizeof base, err), 0);
    assert_string_equal(base, "base/model");
    assert_int_equal(lc.r, 3);
    assert_int_equal(lc.targets, f.lo->lc.targets);
    assert_int_equal(lc.train_router, 1);
    lora *lo2;
    assert_int_equal(lora_create(&lo2, &f.m, &lc, 0, err), 0);
    assert_int_equal(peft_load_weights(lo2, dir, err), 0);
    assert_memory_equal(lo2->w, f.lo->w, f.lo->tab.total * 4);
    /* every expert has its own per-expert PEFT name */
    assert_non_null(strstr(lo2->tab.t[8].name, "block_sparse_moe.experts."));
    /* an adapter with another rank does not load into these shapes */
    lora_config lc3 = lc;
    lc3.r = 2;
    lora *lo3;
    assert_int_equal(lora_create(&lo3, &f.m, &lc3, 0, err), 0);
    assert_int_equal(peft_load_weights(lo3, dir, err), -1);
    printf("  %s\n", err);
    assert_non_null(strstr(err, "has shape"));
    lora_free(lo3);
    lora_free(lo2);
    struct { const char *json, *msg; } bad[] = {
        {"{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"],\"use_dora\":true}", "'use_dora'"},
        {"{\"peft_type\":\"IA3\",\"r\":4}", "peft_type 'IA3'"},
        {"{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"fc1\"]}", "'fc1'"},
        {"{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"],"
         "\"target_parameters\":[\"gate_up_proj\"]}", "'target_parameters'"},
        {"{\"peft_type\":\"LORA\",\"lora_alpha\":8,\"target_modules\":[\"q_proj\"]}", "needs an integer r in [1, 65536]"},
        {"{\"peft_type\":\"LORA\",\"r\":1.5,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"]}", "needs an integer r"},
        {"{\"peft_type\":\"LORA\",\"r\":2e9,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"]}", "needs an integer r"},
        {"{\"peft_type\":\"LORA\",\"r\":0,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"]}", "needs an integer r"},
        {"{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":\"8\",\"target_modules\":[\"q_proj\"]}", "numeric lora_alpha"},
        {"{\"peft_type\":\"LORA\\u001b\",\"r\":4}", "peft_type 'LORA\\x1B'"},
    };
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(fs_write_atomic(p, bad[i].json, strlen(bad[i].json), err), 0);
        assert_int_equal(peft_read_config(dir, &lc, NULL, 0, err), -1);
        printf("  %s\n", err);
        assert_non_null(strstr(err, bad[i].msg));
    }
    fs_rm_rf(dir, err);
    teardown(&f);
}

/* peft_config_json writes lora_alpha and lora_dropout so that they read back bit for bit
 * (found by fuzz_peft_config: cJSON's 15 digits turned 8.888888888888889e20 into
 * 8.88888888888889e+20), and plain values stay plain ("lora_alpha": 16, 0.1). */
static void test_peft_config_keeps_alpha_and_dropout_exactly(void **state)
{
    (void)state;
    char err[ERR_MAX], dir[64], p[128];
    snprintf(dir, sizeof dir, "/tmp/moet_test_peftx_%d", (int)getpid());
    fs_rm_rf(dir, err);
    fs_mkdir_p(dir, err);
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    const double alphas[] = {16, 0.5, 1.0 / 3, 8.888888888888889e20, 0x1.fffffffffffffp-3};
    for (size_t i = 0; i < sizeof alphas / sizeof *alphas; i++) {
        lora_config lc = {.r = 4, .alpha = alphas[i], .dropout = i ? 0.1 : 1.0 / 7, .targets = 1u << LORA_Q}, back;
        char *json = peft_config_json(&lc, FAM_MIXTRAL, "base");
        assert_non_null(json);
        if (i == 0) assert_non_null(strstr(json, "\"lora_alpha\":\t16,"));
        if (i == 1) assert_non_null(strstr(json, "\"lora_dropout\":\t0.1,"));
        assert_int_equal(fs_write_atomic(p, json, strlen(json), err), 0);
        free(json);
        assert_int_equal(peft_read_config(dir, &back, NULL, 0, err), 0);
        assert_true(back.alpha == lc.alpha);
        assert_true(back.dropout == lc.dropout);
    }
    fs_rm_rf(dir, err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adapter_gradients_match_finite_differences_on_every_target),
        cmocka_unit_test(test_adapter_gradients_with_dropout_match_finite_differences),
        cmocka_unit_test(test_merged_weights_give_the_adapted_logits_and_base_stays_frozen),
        cmocka_unit_test(test_peft_files_round_trip_and_bad_configs_are_refused),
        cmocka_unit_test(test_peft_config_keeps_alpha_and_dropout_exactly),
        cmocka_unit_test(test_a_fresh_adapter_has_kaiming_a_zero_b_and_learns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
