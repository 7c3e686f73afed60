/* test_optim: AdamW against real torch (run at test time), clipping against a double
 * reference, and the learning-rate schedules at their boundaries. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/sched.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- helpers ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double rng_uniform(void) /* splitmix64 -> [0, 1) */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0;
}

static float rng_normal(void)
{
    double u = rng_uniform() + 1e-12, v = rng_uniform();
    return (float)(sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v));
}

static void write_floats(const char *path, const float *x, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(x, sizeof *x, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static void read_floats(const char *path, float *x, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("torch reference did not write %s", path);
    assert_int_equal(fread(x, sizeof *x, n, f), n);
    fclose(f);
}

/* Largest |a - b| / (|b| + scale[i]) over n elements (scale NULL: 0; 1e-30 guards exact
 * zeros); prints the worst index. */
static double max_rel_diff(const char *what, const float *a, const float *b, size_t n,
                           const float *scale)
{
    double worst = 0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / (fabs((double)b[i]) + (scale ? scale[i] : 0) + 1e-30);
        if (!(d <= worst)) worst = d, wi = i;
    }
    printf("  %-4s max rel diff %.3g at %zu (moet %.9g, torch %.9g)\n", what, worst, wi,
           a[wi], b[wi]);
    return worst;
}

/* ---- AdamW ---- */

/* Run torch.optim.AdamW (foreach=False: the single-tensor path) on the same data.
 * Layout of the files in dir: in.bin = p0 (n) then K grads (K*n) then K lrs;
 * out.bin = p, m, v (3*n) after K steps. */
static const char *torch_script =
    "import sys, numpy as np, torch\n"
    "d, n0, gap, n1, K, b1, b2, eps, wd = sys.argv[1], *map(int, sys.argv[2:6]), *map(float, sys.argv[6:10])\n"
    "n = n0 + gap + n1\n"
    "x = np.fromfile(d + '/in.bin', dtype=np.float32)\n"
    "p0, G, lrs = x[:n], x[n:n + K * n].reshape(K, n), x[n + K * n:]\n"
    "w = torch.tensor(p0[:n0].copy(), requires_grad=True)\n"
    "b = torch.tensor(p0[n0 + gap:].copy(), requires_grad=True)\n"
    "opt = torch.optim.AdamW([{'params': [w], 'weight_decay': wd}, {'params': [b], 'weight_decay': 0.0}],\n"
    "                        lr=1.0, betas=(b1, b2), eps=eps, foreach=False)\n"
    "for k in range(K):\n"
    "    for gr in opt.param_groups: gr['lr'] = float(lrs[k])\n"
    "    w.grad = torch.tensor(G[k, :n0].copy()); b.grad = torch.tensor(G[k, n0 + gap:].copy())\n"
    "    opt.step()\n"
    "out = np.zeros((3, n), dtype=np.float32)\n"
    "out[0] = p0\n"
    "for t, lo in ((w, 0), (b, n0 + gap)):\n"
    "    s = opt.state[t]\n"
    "    out[0, lo:lo + t.numel()] = t.detach().numpy()\n"
    "    out[1, lo:lo + t.numel()] = s['exp_avg'].numpy()\n"
    "    out[2, lo:lo + t.numel()] = s['exp_avg_sq'].numpy()\n"
    "out.tofile(d + '/out.bin')\n";

static void test_adamw_matches_torch_over_several_steps_with_and_without_decay(void **state)
{
    /* A "2-D" segment with decay, 5 untouched elements, a "1-D" segment without decay;
     * odd sizes so vector tails are exercised. Grads span several magnitudes. */
    enum { N0 = 37 * 11, GAP = 5, N1 = 29, N = N0 + GAP + N1, K = 6 };
    const adamw_cfg c = {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1};
    const adamw_seg segs[] = {{0, N0, 1}, {N0 + GAP, N1, 0}};
    static float in[N + K * N + K], p[N], m[N], v[N], ref[3 * N];
    rng_state = 42;
    for (int i = 0; i < N; i++) in[i] = rng_normal();
    for (int k = 0; k < K; k++)
        for (int i = 0; i < N; i++)
            in[N + k * N + i] = rng_normal() * (float)pow(10.0, -(i % 4)); /* 1 .. 1e-3 */
    for (int k = 0; k < K; k++) in[N + K * N + k] = 1e-2f * (float)(k + 1) / K; /* lr ramps */

    const char *py = getenv("PY") ? getenv("PY") : "/usr/bin/python3";
    char dir[] = "/tmp/moet_adamw_XXXXXX", path[256], cmd[1024];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/in.bin", dir);
    write_floats(path, in, N + K * N + K);
    snprintf(path, sizeof path, "%s/ref.py", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(torch_script, f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "'%s' %s/ref.py %s %d %d %d %d %.17g %.17g %.17g %.17g", py, dir,
             dir, N0, GAP, N1, K, c.beta1, c.beta2, c.eps, c.weight_decay);
    int rc = system(cmd);
    if (rc != 0) fail_msg("torch reference failed (%d): %s", rc, cmd);
    snprintf(path, sizeof path, "%s/out.bin", dir);
    read_floats(path, ref, 3 * N);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);

    memcpy(p, in, sizeof p);
    memset(m, 0, sizeof m);
    memset(v, 0, sizeof v);
    for (int k = 0; k < K; k++)
        adamw_step(&c, p, in + N + k * N, m, v, segs, 2, k + 1, in[N + K * N + k]);

    /* Same float operations in the same order (and FMAs) as torch's AVX2 kernels: bit-equal
     * on this machine. 1e-6 relative leaves room for the non-FMA fallback (or torch 2's lerp
     * for m); m and v are compared relative to their own scale (max |g|, max g^2 of the
     * element), since b1*m + (1-b1)*g may cancel to far below the rounding of its terms. */
    static float gmax[N], g2max[N];
    for (int i = 0; i < N; i++) {
        gmax[i] = g2max[i] = 0;
        for (int k = 0; k < K; k++) {
            float gk = fabsf(in[N + k * N + i]);
            gmax[i] = fmaxf(gmax[i], gk);
            g2max[i] = fmaxf(g2max[i], gk * gk);
        }
    }
    assert_true(max_rel_diff("p", p, ref, N, NULL) < 1e-6);
    assert_true(max_rel_diff("m", m, ref + N, N, gmax) < 1e-6);
    assert_true(max_rel_diff("v", v, ref + 2 * N, N, g2max) < 1e-6);
    for (int i = N0; i < N0 + GAP; i++) assert_true(p[i] == in[i] && m[i] == 0 && v[i] == 0);
    /* The run moved the parameters by far more than the tolerance, so it is not vacuous. */
    assert_true(fabsf(p[0] - in[0]) > 1e-3f);
}

static void test_adamw_first_step_moves_each_param_by_lr_against_its_grad(void **state)
{
    /* Step 1: m_hat = g, v_hat = g^2, so the update is -lr * g / (|g| + eps) = -lr*sign(g). */
    const adamw_cfg c = {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0};
    float p[4] = {1, 2, 3, 4}, g[4] = {0.5f, -2, 1e-3f, 0}, m[4] = {0}, v[4] = {0};
    const adamw_seg seg = {0, 4, 1};
    adamw_step(&c, p, g, m, v, &seg, 1, 1, 0.01f);
    assert_float_equal(p[0], 1 - 0.01, 1e-6);
    assert_float_equal(p[1], 2 + 0.01, 1e-6);
    assert_float_equal(p[2], 3 - 0.01, 1e-6);
    assert_float_equal(p[3], 4, 0);   /* zero grad: no move */
    assert_float_equal(m[1], -0.2, 1e-7);
    assert_float_equal(v[1], 0.2, 1e-7);
}

static void test_adamw_weight_decay_only_on_flagged_segments(void **state)
{
    /* With g = 0 the moments stay 0 and the only change is p *= 1 - lr*wd. */
    const adamw_cfg c = {.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.5};
    float p[6] = {1, 2, 3, 4, 5, 6}, g[6] = {0}, m[6] = {0}, v[6] = {0};
    const adamw_seg segs[] = {{0, 2, 1}, {2, 2, 0}, {4, 2, 1}};
    adamw_step(&c, p, g, m, v, segs, 3, 1, 0.1f);
    const double f = 1 - 0.1 * 0.5;
    const float want[6] = {(float)(1 * f), (float)(2 * f), 3, 4, (float)(5 * f), (float)(6 * f)};
    for (int i = 0; i < 6; i++) assert_float_equal(p[i], want[i], 1e-6);
}

/* ---- clipping ---- */

static double norm_double(const float *g, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return sqrt(s);
}

static void test_clip_returns_norm_before_clipping_exact_to_double(void **state)
{
    enum { N = 100003 };
    float *g = malloc(N * sizeof *g);
    rng_state = 7;
    for (int i = 0; i < N; i++) g[i] = rng_normal() * 1e-3f;
    double want = norm_double(g, N);
    double got = clip_grad_norm(g, N, 1e9); /* no clipping */
    /* Only the summation order differs (OpenMP reduction): ~1e-15 relative. */
    assert_float_equal(got, want, want * 1e-12);
    free(g);
}

static void test_clip_scales_gradients_to_max_norm(void **state)
{
    enum { N = 1000 };
    float g[N], g0[N];
    rng_state = 8;
    for (int i = 0; i < N; i++) g0[i] = g[i] = rng_normal();
    double norm0 = norm_double(g0, N);
    double got = clip_grad_norm(g, N, 1.0);
    assert_float_equal(got, norm0, norm0 * 1e-12);
    const double coef = 1.0 / (norm0 + 1e-6); /* torch: max_norm / (total_norm + 1e-6) */
    for (int i = 0; i < N; i++) assert_float_equal(g[i], g0[i] * coef, 1e-6 * fabs(g0[i] * coef) + 1e-12);
    assert_float_equal(norm_double(g, N), 1.0, 1e-5);
}

static void test_clip_leaves_gradients_alone_under_threshold_or_disabled(void **state)
{
    float g[3] = {3, 4, 0}, g0[3] = {3, 4, 0};
    assert_float_equal(clip_grad_norm(g, 3, 5.0), 5.0, 1e-12); /* coef 5/(5+1e-6) < 1: clipped */
    assert_true(g[0] < 3 && g[0] > 3 * (1 - 1e-6));
    memcpy(g, g0, sizeof g);
    assert_float_equal(clip_grad_norm(g, 3, 10.0), 5.0, 1e-12);
    assert_memory_equal(g, g0, sizeof g);
    assert_float_equal(clip_grad_norm(g, 3, 0.0), 5.0, 1e-12);   /* disabled */
    assert_float_equal(clip_grad_norm(g, 3, -1.0), 5.0, 1e-12);
    assert_memory_equal(g, g0, sizeof g);
}

/* The trainer fuses clipping into AdamW (clip_norm + clip_coef + adamw_step_scaled); that
 * must be bit-identical to clip_grad_norm followed by adamw_step, clipped or not. */
static void test_clip_fused_into_adamw_is_bit_identical(void **state)
{
    enum { N = 1000 };
    adamw_cfg c = {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1};
    adamw_seg segs[2] = {{0, 600, 1}, {600, 400, 0}};
    static float p1[N], m1[N], v1[N], p2[N], m2[N], v2[N], g[N], gc[N];
    for (int i = 0; i < N; i++) p1[i] = p2[i] = rng_normal(), m1[i] = m2[i] = v1[i] = v2[i] = 0;
    for (int step = 1; step <= 4; step++) {
        double max_norm = step % 2 ? 1.0 : 1e9; /* clipped, then not */
        for (int i = 0; i < N; i++) g[i] = gc[i] = 0.3f * rng_normal();
        double n1 = clip_grad_norm(gc, N, max_norm);
        adamw_step(&c, p1, gc, m1, v1, segs, 2, step, 1e-3f);
        double n2 = clip_norm(g, N);
        float coef = clip_coef(n2, max_norm);
        assert_true(step % 2 ? coef < 1.0f : coef == 1.0f);
        adamw_step_scaled(&c, p2, g, m2, v2, segs, 2, step, 1e-3f, coef);
        assert_true(n1 == n2);
        assert_memory_equal(p1, p2, sizeof p1);
        assert_memory_equal(m1, m2, sizeof m1);
        assert_memory_equal(v1, v2, sizeof v1);
    }
}

/* The trainer's AdamW also zeroes the gradients it reads (adamw_step_consume): the same p, m, v
 * as adamw_step_scaled bit for bit, every element of a segment zeroed, the gap between two
 * segments (no tensor there) left as it was. */
static void test_adamw_consume_matches_scaled_and_zeroes_the_segments(void **state)
{
    enum { N = 1000 };
    adamw_cfg c = {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1};
    adamw_seg segs[2] = {{0, 600, 1}, {610, 390, 0}};
    static float p1[N], m1[N], v1[N], p2[N], m2[N], v2[N], g1[N], g2[N];
    for (int i = 0; i < N; i++) p1[i] = p2[i] = rng_normal(), m1[i] = m2[i] = v1[i] = v2[i] = 0;
    for (int step = 1; step <= 3; step++) {
        for (int i = 0; i < N; i++) g1[i] = g2[i] = 0.3f * rng_normal();
        adamw_step_scaled(&c, p1, g1, m1, v1, segs, 2, step, 1e-3f, 0.7f);
        adamw_step_consume(&c, p2, g2, m2, v2, segs, 2, step, 1e-3f, 0.7f);
        assert_memory_equal(p1, p2, sizeof p1);
        assert_memory_equal(m1, m2, sizeof m1);
        assert_memory_equal(v1, v2, sizeof v1);
        for (int i = 0; i < N; i++) {
            if (i >= 600 && i < 610) assert_true(g2[i] == g1[i] && g1[i] != 0); /* the gap */
            else assert_true(g2[i] == 0.0f && !signbit(g2[i]));
        }
    }
}

static void test_clip_returns_nonfinite_norm_without_scaling(void **state)
{
    float g[3] = {1, INFINITY, 2}, g2[3] = {1, NAN, 2};
    assert_true(isinf(clip_grad_norm(g, 3, 1.0)));
    assert_true(g[0] == 1 && g[2] == 2);
    assert_true(isnan(clip_grad_norm(g2, 3, 1.0)));
    assert_true(g2[0] == 1 && g2[2] == 2);
}

/* ---- schedules ---- */

static sched_cfg sched(sched_kind k, int warmup, int max_steps, int decay)
{
    return (sched_cfg){.kind = k, .lr = 1e-3, .warmup_steps = warmup, .max_steps = max_steps,
                       .min_lr_ratio = 0.1, .decay_steps = decay};
}

static void test_sched_warmup_is_linear_from_lr_over_w_to_lr(void **state)
{
    for (sched_kind k = SCHED_CONSTANT; k <= SCHED_WSD; k++) {
        sched_cfg s = sched(k, 10, 100, 20);
        assert_float_equal(sched_lr(&s, 1), 1e-4, 1e-15);
        assert_float_equal(sched_lr(&s, 5), 5e-4, 1e-15);
        assert_float_equal(sched_lr(&s, 10), 1e-3, 1e-15);
        assert_float_equal(sched_lr(&s, 0), 1e-4, 1e-15); /* clamped to step 1 */
    }
}

static void test_sched_constant_is_lr_everywhere_after_warmup(void **state)
{
    sched_cfg s = sched(SCHED_CONSTANT, 0, 50, 0);
    for (int t = 1; t <= 60; t++) assert_float_equal(sched_lr(&s, t), 1e-3, 0);
}

static void test_sched_cosine_boundaries_midpoint_and_floor(void **state)
{
    sched_cfg s = sched(SCHED_COSINE, 10, 110, 0);
    assert_float_equal(sched_lr(&s, 10), 1e-3, 1e-15);
    assert_float_equal(sched_lr(&s, 60), 0.5 * (1e-3 + 1e-4), 1e-15);  /* p = 1/2 */
    assert_float_equal(sched_lr(&s, 35), 1e-4 + 0.9e-3 * 0.5 * (1 + cos(M_PI / 4)), 1e-15);
    assert_float_equal(sched_lr(&s, 110), 1e-4, 1e-15);
    assert_float_equal(sched_lr(&s, 500), 1e-4, 1e-15);
    s.warmup_steps = 0;
    assert_float_equal(sched_lr(&s, 1), 1e-4 + 0.9e-3 * 0.5 * (1 + cos(M_PI / 110)), 1e-15);
}

static void test_sched_linear_boundaries_and_midpoint(void **state)
{
    sched_cfg s = sched(SCHED_LINEAR, 0, 100, 0);
    assert_float_equal(sched_lr(&s, 1), 1e-3 - 0.9e-3 / 100, 1e-15);
    assert_float_equal(sched_lr(&s, 50), 0.55e-3, 1e-15);
    assert_float_equal(sched_lr(&s, 100), 1e-4, 1e-15);
    s.min_lr_ratio = 0;
    assert_float_equal(sched_lr(&s, 100), 0, 0);
}

static void test_sched_wsd_is_stable_then_decays_over_the_last_d_steps(void **state)
{
    sched_cfg s = sched(SCHED_WSD, 10, 100, 20);
    assert_float_equal(sched_lr(&s, 11), 1e-3, 0);
    assert_float_equal(sched_lr(&s, 80), 1e-3, 0);                  /* last stable step */
    assert_float_equal(sched_lr(&s, 81), 1e-3 - 0.9e-3 / 20, 1e-15);
    assert_float_equal(sched_lr(&s, 90), 0.55e-3, 1e-15);
    assert_float_equal(sched_lr(&s, 100), 1e-4, 1e-15);
    s.decay_steps = 0;
    assert_float_equal(sched_lr(&s, 100), 1e-3, 0);                 /* no decay phase */
}

static void test_sched_every_kind_is_monotone_and_ends_at_min_ratio(void **state)
{
    for (sched_kind k = SCHED_CONSTANT; k <= SCHED_WSD; k++) {
        sched_cfg s = sched(k, 7, 93, 19);
        double prev = 0;
        for (int t = 1; t <= 93; t++) {
            double lr = sched_lr(&s, t);
            if (t <= 7) assert_true(lr > prev);       /* warmup rises */
            else assert_true(lr <= prev);             /* then never rises */
            assert_true(lr >= 1e-4 - 1e-18 && lr <= 1e-3);
            prev = lr;
        }
        assert_float_equal(prev, k == SCHED_CONSTANT ? 1e-3 : 1e-4, 1e-15);
    }
}

static void test_sched_names_round_trip(void **state)
{
    for (sched_kind k = SCHED_CONSTANT; k <= SCHED_WSD; k++) {
        sched_kind back;
        assert_int_equal(sched_parse(sched_name(k), &back), 0);
        assert_int_equal(back, k);
    }
    sched_kind x;
    assert_int_equal(sched_parse("cosine_with_restarts", &x), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adamw_matches_torch_over_several_steps_with_and_without_decay),
        cmocka_unit_test(test_adamw_first_step_moves_each_param_by_lr_against_its_grad),
        cmocka_unit_test(test_adamw_weight_decay_only_on_flagged_segments),
        cmocka_unit_test(test_clip_returns_norm_before_clipping_exact_to_double),
        cmocka_unit_test(test_clip_scales_gradients_to_max_norm),
        cmocka_unit_test(test_clip_leaves_gradients_alone_under_threshold_or_disabled),
        cmocka_unit_test(test_clip_returns_nonfinite_norm_without_scaling),
        cmocka_unit_test(test_clip_fused_into_adamw_is_bit_identical),
        cmocka_unit_test(test_sched_warmup_is_linear_from_lr_over_w_to_lr),
        cmocka_unit_test(test_sched_constant_is_lr_everywhere_after_warmup),
        cmocka_unit_test(test_adamw_consume_matches_scaled_and_zeroes_the_segments),
        cmocka_unit_test(test_sched_cosine_boundaries_midpoint_and_floor),
        cmocka_unit_test(test_sched_linear_boundaries_and_midpoint),
        cmocka_unit_test(test_sched_wsd_is_stable_then_decays_over_the_last_d_steps),
        cmocka_unit_test(test_sched_every_kind_is_monotone_and_ends_at_min_ratio),
        cmocka_unit_test(test_sched_names_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
