/* Inference: the KV-cache path (prefill + one-token steps) gives model_forward's logits at
 * every position, on the golden model and on a random model with every shape option; the
 * samplers keep exactly the distribution HF's warpers keep and draw from it faithfully. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/hf.h"
#include "common/err.h"
#include "common/rng.h"
#include "model/infer.h"
#include "model/model.h"
#include "model/sample.h"

#define LOGIT_TOL 1e-5 /* ||infer - forward|| / ||forward|| per position */

static void golden_dir(char *out, size_t cap)
{
    const char *sh = getenv("SHARED");
    snprintf(out, cap, "%s/golden/tiny-mixtral/model", sh && *sh ? sh : "../shared");
}

static void random_tokens(int32_t *t, int n, int V, uint64_t seed)
{
    rng_state r;
    rng_seed(&r, seed, 7);
    for (int i = 0; i < n; i++) t[i] = (int32_t)(rng_next(&r) % (uint64_t)V);
}

/* Reference logits (T, V) of one row through model_forward. */
static float *forward_logits(model *m, const int32_t *tokens, int T)
{
    char err[ERR_MAX];
    model_acts *a;
    assert_int_equal(model_acts_create(&a, m, 1, T, err), 0);
    float *lg = malloc((size_t)T * m->c.vocab * sizeof *lg);
    model_batch b = {1, T, tokens, NULL, NULL, 0};
    model_stats st;
    assert_int_equal(model_forward(m, a, &b, 0, 0, lg, &st, err), 0);
    model_acts_free(a);
    return lg;
}

static double rel_err(const float *a, const float *ref, int n)
{
    double d = 0, r = 0;
    for (int i = 0; i < n; i++) {
        d += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
        r += (double)ref[i] * ref[i];
    }
    return sqrt(d) / (r > 0 ? sqrt(r) : 1);
}

/* Run the sequence as prefills of the given sizes (summing to p), then steps to T, and
 * check every position's logits against ref; returns the worst relative error. */
static double check_split(model *m, infer *st, const int32_t *tok, int T, const int *prefills, int np,
                          const float *ref)
{
    char err[ERR_MAX];
    int V = m->c.vocab, pos = 0;
    float *lg = malloc((size_t)T * V * sizeof *lg), *last = malloc((size_t)V * sizeof *last);
    double worst = 0;
    infer_reset(st);
    for (int i = 0; i < np; i++) {
        int rc = infer_prefill(st, tok + pos, prefills[i], last, lg + (size_t)pos * V, err);
        if (rc) fprintf(stderr, "prefill: %s\n", err);
        assert_int_equal(rc, 0);
        pos += prefills[i];
        assert_int_equal(infer_pos(st), pos);
        assert_memory_equal(last, lg + (size_t)(pos - 1) * V, (size_t)V * sizeof *last);
    }
    for (; pos < T; pos++) assert_int_equal(infer_step(st, tok[pos], lg + (size_t)pos * V, err), 0);
    for (int t = 0; t < T; t++) {
        double e = rel_err(lg + (size_t)t * V, ref + (size_t)t * V, V);
        if (e > worst) worst = e;
        if (e > LOGIT_TOL) fprintf(stderr, "position %d: rel err %.3g\n", t, e);
    }
    free(lg);
    free(last);
    return worst;
}

/* Every split of T tokens into prefill chunks and steps gives the forward logits. */
static void check_model(model *m, int T, const char *what)
{
    char err[ERR_MAX];
    int32_t *tok = malloc((size_t)T * sizeof *tok);
    random_tokens(tok, T, m->c.vocab, 42);
    float *ref = forward_logits(m, tok, T);
    infer *st;
    assert_int_equal(infer_create(&st, m, T, err), 0);
    struct { int n, p[3]; } splits[] = {
        {1, {1}},            /* one token of prefill, the rest one step at a time */
        {1, {T / 3}},
        {1, {T}},            /* the whole sequence batched */
        {3, {7, T / 2 - 7, 5}}, /* prefill continued twice (a chat appended to a cache) */
    };
    for (size_t i = 0; i < sizeof splits / sizeof splits[0]; i++) {
        double w = check_split(m, st, tok, T, splits[i].p, splits[i].n, ref);
        printf("  %s T=%d prefill %d (+%d more chunks) + steps: max rel err %.2e (tol %.0e)\n", what, T,
               splits[i].p[0], splits[i].n - 1, w, LOGIT_TOL);
        assert_true(w <= LOGIT_TOL);
    }
    infer_free(st);
    free(ref);
    free(tok);
}

static void test_kv_cache_logits_match_model_forward_on_the_golden_model(void **state)
{
    char dir[4096], err[ERR_MAX];
    golden_dir(dir, sizeof dir);
    model m;
    int rc = ckpt_load_model(&m, dir, 0, err);
    if (rc) fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, 0);
    check_model(&m, 50, "golden");
    model_free(&m);
}

/* head_dim 10 != 48/6, GQA 6:2, sliding window 16 < 50, tied embeddings, 5 experts top-2. */
static const char *ODD = "{\"vocab_size\":97,\"hidden_size\":48,\"intermediate_size\":40,\"num_hidden_layers\":3,"
                         "\"num_attention_heads\":6,\"num_key_value_heads\":2,\"head_dim\":10,"
                         "\"num_local_experts\":5,\"num_experts_per_tok\":2,\"sliding_window\":16,"
                         "\"tie_word_embeddings\":true,\"rope_theta\":100.0,\"initializer_range\":0.1,"
                         "\"max_position_embeddings\":1024}";

static void test_kv_cache_logits_match_with_head_dim_gqa_sliding_window_and_tied_embeddings(void **state)
{
    model_config c;
    model m;
    char err[ERR_MAX];
    assert_int_equal(model_config_from_json(&c, ODD, err), 0);
    assert_int_equal(model_create(&m, &c, 0, err), 0);
    model_init_random(&m, 11);
    assert_ptr_equal(m.lm_head.p[0], m.embed.p[0]);
    check_model(&m, 50, "odd-shapes");
    /* longer than one prefill chunk: chunks must see the cache of the previous ones */
    check_model(&m, INFER_CHUNK + 44, "odd-shapes");
    model_free(&m);
}

static void test_full_context_and_bad_tokens_are_errors_not_crashes(void **state)
{
    model_config c;
    model m;
    char err[ERR_MAX] = "";
    assert_int_equal(model_config_from_json(&c, ODD, err), 0);
    assert_int_equal(model_create(&m, &c, 0, err), 0);
    model_init_random(&m, 3);
    infer *st;
    float lg[97];
    int32_t t[4] = {1, 2, 3, 4};
    assert_int_equal(infer_create(&st, &m, 4, err), 0);
    assert_int_equal(infer_prefill(st, t, 3, lg, NULL, err), 0);
    assert_int_equal(infer_prefill(st, t, 2, lg, NULL, err), -1);
    assert_non_null(strstr(err, "context full"));
    assert_int_equal(infer_pos(st), 3); /* a refused call changes nothing */
    assert_int_equal(infer_step(st, 97, lg, err), -1);
    assert_non_null(strstr(err, "outside the vocabulary"));
    assert_int_equal(infer_step(st, 4, lg, err), 0);
    assert_int_equal(infer_step(st, 4, lg, err), -1);
    infer *none;
    assert_int_equal(infer_create(&none, &m, 0, err), -1);
    assert_null(none);
    infer_free(st);
    model_free(&m);
}

/* ------------------------------------------------------------------------ sampling */

static sampler *make(int V, float T, int k, float p, float rep, uint64_t seed)
{
    sampler *s;
    char err[ERR_MAX];
    sample_params sp = {T, k, p, rep};
    assert_int_equal(sample_create(&s, V, &sp, seed, err), 0);
    return s;
}

static void test_greedy_and_top_k_1_take_the_argmax(void **state)
{
    enum { V = 1000 };
    float z[V];
    rng_state r;
    rng_seed(&r, 5, 0);
    sampler *g = make(V, 0, 0, 1, 1, 1), *k1 = make(V, 1.5f, 1, 1, 1, 2);
    for (int trial = 0; trial < 50; trial++) {
        for (int v = 0; v < V; v++) z[v] = (float)rng_normal(&r);
        int best = 0;
        for (int v = 0; v < V; v++) best = z[v] > z[best] ? v : best;
        assert_int_equal(sample_next(g, z, NULL, 0), best);
        assert_int_equal(sample_next(k1, z, NULL, 0), best);
    }
    z[3] = z[700] = 100; /* ties: the lower id, as torch.argmax */
    assert_int_equal(sample_argmax(z, V), 3);
    assert_int_equal(sample_next(g, z, NULL, 0), 3);
    float pr[V];
    assert_int_equal(sample_probs(g, z, NULL, 0, pr), 1);
    assert_float_equal(pr[3], 1.0f, 0);
    sample_free(g);
    sample_free(k1);
}

/* logits = log(probs): the softmax at T=1 gives back probs. */
static void log_of(float *z, const double *p, int n)
{
    for (int i = 0; i < n; i++) z[i] = (float)log(p[i]);
}

static void test_top_p_keeps_the_smallest_set_reaching_p_and_renormalises(void **state)
{
    const double p[6] = {0.05, 0.5, 0.1, 0.2, 0.15, 0.0}; /* ranked: 1, 3, 4, 2, 0, 5 */
    float z[6], pr[6];
    log_of(z, p, 5);
    z[5] = -INFINITY;
    struct { float top_p; int kept; } cases[] = {{0.49f, 1}, {0.51f, 2}, {0.69f, 2}, {0.71f, 3}, {0.84f, 3},
                                                 {0.86f, 4}, {0.96f, 5}, {1.0f, 6}};
    const int rank[6] = {1, 3, 4, 2, 0, 5};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sampler *s = make(6, 1, 0, cases[i].top_p, 1, 1);
        int n = sample_probs(s, z, NULL, 0, pr);
        assert_int_equal(n, cases[i].kept);
        double mass = 0;
        for (int j = 0; j < n; j++) mass += p[rank[j]];
        for (int j = 0; j < 6; j++) {
            double want = j < n ? p[rank[j]] / mass : 0;
            assert_float_equal(pr[rank[j]], want, 1e-6);
        }
        sample_free(s);
    }
    /* top-k first, then top-p over the renormalised top-k: {0.5, 0.2, 0.15} / 0.85 =
     * {0.588, 0.235, 0.176}: p = 0.8 needs two of them (0.824). */
    sampler *s = make(6, 1, 3, 0.8f, 1, 1);
    assert_int_equal(sample_probs(s, z, NULL, 0, pr), 2);
    assert_float_equal(pr[1], 0.5 / 0.7, 1e-6);
    assert_float_equal(pr[3], 0.2 / 0.7, 1e-6);
    sample_free(s);
    /* temperature: probs proportional to p^(1/T) */
    s = make(6, 0.5f, 0, 1, 1, 1);
    assert_int_equal(sample_probs(s, z, NULL, 0, pr), 6);
    double sq = 0;
    for (int j = 0; j < 5; j++) sq += p[j] * p[j];
    for (int j = 0; j < 5; j++) assert_float_equal(pr[j], p[j] * p[j] / sq, 1e-6);
    sample_free(s);
}

/* Reference nucleus by a full sort, to check the heap and the partial-sort shortcut. */
static int cmp_desc(const void *a, const void *b)
{
    const double *x = a, *y = b;
    return x[0] > y[0] ? -1 : x[0] < y[0] ? 1 : (x[1] < y[1] ? -1 : 1);
}

static void test_top_k_and_top_p_on_a_large_vocab_equal_a_full_sort(void **state)
{
    enum { V = 32000 };
    static float z[V], pr[V];
    static double ref[V][2];
    rng_state r;
    rng_seed(&r, 9, 0);
    struct { double spread; int k; float p; } cases[] = {
        {8.0, 0, 0.9f},   /* peaked: the nucleus is within the 1e-4 candidates (shortcut) */
        {0.0, 0, 0.9f},   /* one token of weight 1, 31999 of ~e^-10 (< 1e-4) holding 59% of the
                             mass: the shortcut does not hold, full sort */
        {1.0, 50, 1.0f},  /* top-k only, with ties (logits rounded to 1/8) */
        {1.0, 400, 0.5f},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (int v = 0; v < V; v++) {
            z[v] = (float)(cases[c].spread * rng_normal(&r));
            if (cases[c].spread == 0) z[v] = v == 17 ? 20.0f : (float)(10 + 0.1 * rng_normal(&r));
            if (c >= 2) z[v] = roundf(z[v] * 8) / 8;
            ref[v][0] = z[v];
            ref[v][1] = v;
        }
        qsort(ref, V, sizeof ref[0], cmp_desc);
        int n = cases[c].k ? cases[c].k : V;
        double sum = 0, cum = 0;
        for (int i = 0; i < n; i++) sum += exp(ref[i][0] - ref[0][0]);
        int m = 0;
        while (m < n && cum < cases[c].p * sum) cum += exp(ref[m++][0] - ref[0][0]);
        sampler *s = make(V, 1, cases[c].k, cases[c].p, 1, 1);
        int got = sample_probs(s, z, NULL, 0, pr);
        printf("  spread %.1f top-k %d top-p %.2f: kept %d of %d\n", cases[c].spread, cases[c].k, cases[c].p, got, V);
        assert_int_equal(got, m);
        for (int i = 0; i < m; i++) assert_float_equal(pr[(int)ref[i][1]], exp(ref[i][0] - ref[0][0]) / cum, 1e-6);
        for (int i = m; i < V; i++) assert_float_equal(pr[(int)ref[i][1]], 0, 0);
        sample_free(s);
    }
}

static void test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits(void **state)
{
    float z[4] = {2.0f, 1.5f, -1.0f, -2.0f}, pr[4];
    int32_t hist[3] = {0, 2, 0}; /* repeats count once */
    sampler *g = make(4, 0, 0, 1, 1.5f, 1);
    assert_int_equal(sample_next(g, z, hist, 3), 1); /* 2/1.5 = 1.33 < 1.5 */
    assert_int_equal(sample_next(g, z, NULL, 0), 0);
    sample_free(g);
    sampler *s = make(4, 1, 0, 1, 1.5f, 1);
    sample_probs(s, z, hist, 3, pr);
    double e[4] = {exp(2.0 / 1.5), exp(1.5), exp(-1.5), exp(-2.0)}, sum = e[0] + e[1] + e[2] + e[3];
    for (int i = 0; i < 4; i++) assert_float_equal(pr[i], e[i] / sum, 1e-6);
    assert_float_equal(z[0], 2.0f, 0); /* the caller's logits are left alone */
    sample_free(s);
}

static void test_same_seed_same_draws_and_another_seed_other_draws(void **state)
{
    enum { V = 50, N = 200 };
    float z[V];
    for (int v = 0; v < V; v++) z[v] = 0.1f * (v % 7);
    int a[N], b[N], c[N], differ = 0;
    sampler *s1 = make(V, 1, 0, 0.95f, 1, 123), *s2 = make(V, 1, 0, 0.95f, 1, 123), *s3 = make(V, 1, 0, 0.95f, 1, 124);
    for (int i = 0; i < N; i++) {
        a[i] = sample_next(s1, z, NULL, 0);
        b[i] = sample_next(s2, z, NULL, 0);
        c[i] = sample_next(s3, z, NULL, 0);
        differ += a[i] != c[i];
    }
    assert_memory_equal(a, b, sizeof a);
    assert_true(differ > N / 2); /* ~49 of 50 ids are kept: most draws of two seeds differ */
    sample_free(s1);
    sample_free(s2);
    sample_free(s3);
}

/* chi-square critical value (Wilson-Hilferty) at the upper z-quantile of a normal. */
static double chi2_crit(int df, double zq)
{
    double a = 2.0 / (9.0 * df);
    return df * pow(1 - a + zq * sqrt(a), 3);
}

static void test_draw_frequencies_match_the_filtered_distribution(void **state)
{
    enum { V = 12, N = 200000 };
    float z[V], pr[V];
    rng_state r;
    rng_seed(&r, 77, 0);
    for (int v = 0; v < V; v++) z[v] = (float)rng_normal(&r);
    struct { float T; int k; float p; } cases[] = {{1, 0, 1}, {0.7f, 8, 1}, {1.3f, 0, 0.8f}, {0.8f, 6, 0.9f}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        sampler *s = make(V, cases[c].T, cases[c].k, cases[c].p, 1, 1000 + c);
        int kept = sample_probs(s, z, NULL, 0, pr);
        long cnt[V] = {0};
        for (int i = 0; i < N; i++) cnt[sample_next(s, z, NULL, 0)]++;
        double chi = 0;
        for (int v = 0; v < V; v++) {
            if (pr[v] == 0) {
                assert_int_equal(cnt[v], 0); /* filtered out: never drawn */
                continue;
            }
            double e = (double)N * pr[v];
            chi += (cnt[v] - e) * (cnt[v] - e) / e;
        }
        double crit = chi2_crit(kept - 1, 3.09); /* p = 0.001 */
        printf("  T %.1f top-k %d top-p %.1f: %d kept, chi2 %.2f (df %d, p=0.001 bound %.2f)\n", cases[c].T,
               cases[c].k, cases[c].p, kept, chi, kept - 1, crit);
        assert_true(kept > 1);
        assert_true(chi < crit);
        sample_free(s);
    }
}

static void test_bad_sampling_settings_are_refused(void **state)
{
    char err[ERR_MAX];
    sample_params bad[] = {{-1, 0, 1, 1}, {1, -2, 1, 1}, {1, 0, 0, 1}, {1, 0, 1.5f, 1}, {1, 0, 1, 0}, {NAN, 0, 1, 1}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sampler *s = (sampler *)1;
        assert_int_equal(sample_create(&s, 10, &bad[i], 0, err), -1);
        assert_null(s);
        printf("  %s\n", err);
    }
    assert_int_equal(sample_check(&SAMPLE_GREEDY, err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_cache_logits_match_model_forward_on_the_golden_model),
        cmocka_unit_test(test_kv_cache_logits_match_with_head_dim_gqa_sliding_window_and_tied_embeddings),
        cmocka_unit_test(test_full_context_and_bad_tokens_are_errors_not_crashes),
        cmocka_unit_test(test_greedy_and_top_k_1_take_the_argmax),
        cmocka_unit_test(test_top_p_keeps_the_smallest_set_reaching_p_and_renormalises),
        cmocka_unit_test(test_top_k_and_top_p_on_a_large_vocab_equal_a_full_sort),
        cmocka_unit_test(test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits),
        cmocka_unit_test(test_same_seed_same_draws_and_another_seed_other_draws),
        cmocka_unit_test(test_draw_frequencies_match_the_filtered_distribution),
        cmocka_unit_test(test_bad_sampling_settings_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
