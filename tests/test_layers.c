/* Layer-by-layer gradient checks: every backward kernel against central finite
 * differences of its forward, along random directions (h = 3e-3 or 1e-3; routing flips
 * are detected and the direction redrawn, since top-k is not differentiable there).
 * Tolerance: |fd - analytic| <= 2e-3 * (|analytic| + |fd|) + floor, where floor is the fp32
 * rounding noise of the finite difference: 1e-6 * |loss terms|_2 / h (each loss is a sum
 * of fp32 terms accumulated in double; ~3e-7 relative error per term, 5x margin). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "model/layers.h"
#include "model/model.h"

#define TOL 2e-3

static rng_state R;

static float *randn(size_t n, float std)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = (float)(std * rng_normal(&R));
    return p;
}

static double g_mag; /* |terms|_2 of the last loss evaluated: sets the noise floor */

static double dotd(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* A loss term <a, b>; records the magnitude of its terms for the noise floor. */
static double loss_dot(const float *a, const float *b, size_t n)
{
    double s = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        double t = (double)a[i] * b[i];
        s += t;
        m += t * t;
    }
    g_mag = sqrt(m);
    return s;
}

/* Compare a directional derivative with its finite-difference estimate taken with step h. */
static void check_dir_h(const char *what, double fd, double ana, double h)
{
    double floor = h > 0 ? 1e-6 * g_mag / h : 0;
    double diff = fabs(fd - ana), allowed = TOL * (fabs(fd) + fabs(ana)) + floor;
    printf("  %-44s analytic % .6e  fd % .6e  diff %.1e (allowed %.1e) %s\n", what, ana, fd, diff, allowed,
           diff <= allowed ? "OK" : "NOT OK");
    assert_true(diff <= allowed);
}
#define check_dir(what, fd, ana) check_dir_h(what, fd, ana, h)

/* ------------------------------------------------------------- RMSNorm */
static double rms_loss(const float *x, const float *w, const float *R_, int N, int D)
{
    float *y = malloc((size_t)N * D * sizeof *y), *rs = malloc(N * sizeof *rs);
    model_rmsnorm_forward(y, rs, x, w, N, D, 1e-5f);
    double l = loss_dot(y, R_, (size_t)N * D);
    free(y);
    free(rs);
    return l;
}

/* model_expf: relative error <= 2e-7 against exp() over [-87, 88]; clamped outside;
 * NaN in gives NaN out (issue 14: the clamp let NaN through to an undefined (int) cast,
 * which UBSan reports in the asan build); row sums with a NaN are NaN. */
static void test_expf_matches_exp_and_is_defined_for_nan_and_inf(void **state)
{
    (void)state;
    double worst = 0;
    for (int i = 0; i <= 200000; i++) {
        float x = -87.0f + 175.0f * (float)i / 200000;
        double want = exp((double)x), rel = fabs(model_expf(x) - want) / want;
        worst = rel > worst ? rel : worst;
    }
    printf("    model_expf worst relative error over [-87, 88]: %.2e (tolerance 2e-7)\n", worst);
    assert_true(worst <= 2e-7);
    assert_true(isnan(model_expf(NAN)) && isnan(model_expf(-NAN)));
    assert_true(fabs(model_expf(INFINITY) - exp(88.0)) <= 2e-7 * exp(88.0));
    assert_true(fabs(model_expf(1e38f) - exp(88.0)) <= 2e-7 * exp(88.0));
    assert_true(model_expf(-INFINITY) >= 0 && model_expf(-INFINITY) <= 1.2e-38f);
    float row[40];
    for (int v = 0; v < 40; v++) row[v] = -(float)v;
    double clean = model_row_expsum(row, 40, 0, 0);
    assert_true(fabs(clean - 1 / (1 - exp(-1.0))) < 1e-6); /* the geometric series, 40 terms */
    row[3] = NAN;                                          /* inside the vectorised lanes */
    assert_true(isnan(model_row_expsum(row, 40, 0, 0)));
    row[3] = 0, row[37] = NAN;                             /* in the scalar tail */
    assert_true(isnan(model_row_expsum(row, 40, 0, 1)) && isnan(row[37]));
}

/* RMSNorm forward and its backward's row dot against double, on rows with and without a
 * tail past the 16-lane sums (model_row_dot): relative 1e-6 of the row's magnitude */
static void test_rmsnorm_and_row_dots_match_double(void **state)
{
    int Ds[] = {5, 16, 37, 256};
    for (size_t t = 0; t < sizeof Ds / sizeof *Ds; t++) {
        int N = 3, D = Ds[t];
        float *x = randn(N * D, 2), *w = randn(D, 1), *y = malloc(N * D * sizeof *y), rs[3];
        model_rmsnorm_forward(y, rs, x, w, N, D, 1e-5f);
        for (int n = 0; n < N; n++) {
            double ss = 0, dot = 0, mag = 0;
            for (int d = 0; d < D; d++) {
                ss += (double)x[n * D + d] * x[n * D + d];
                dot += (double)w[d] * y[n * D + d] * x[n * D + d];
                mag += fabs((double)w[d] * y[n * D + d] * x[n * D + d]);
            }
            double r = 1 / sqrt(ss / D + 1e-5);
            assert_true(fabs(rs[n] - r) <= 1e-6 * r);
            for (int d = 0; d < D; d++)
                assert_true(fabs(y[n * D + d] - w[d] * x[n * D + d] * r) <= 1e-6 * fabs(w[d] * x[n * D + d] * r) + 1e-30);
            float got = model_row_dot(w, y + n * D, x + n * D, D);
            assert_true(fabs(got - dot) <= 1e-6 * mag);
        }
        free(x), free(w), free(y);
    }
}

static void test_rmsnorm_backward_matches_finite_differences(void **state)
{
    int N = 7, D = 33;
    float *x = randn(N * D, 1), *w = randn(D, 1), *Rr = randn(N * D, 1);
    float *y = malloc(N * D * sizeof *y), *rs = malloc(N * sizeof *rs);
    float *dx = calloc(N * D, sizeof *dx), *dw = calloc(D, sizeof *dw);
    model_rmsnorm_forward(y, rs, x, w, N, D, 1e-5f);
    model_rmsnorm_backward(dx, dw, Rr, x, w, rs, N, D);
    float h = 1e-2f;
    for (int rep = 0; rep < 3; rep++) {
        float *vx = randn(N * D, 1), *vw = randn(D, 1);
        float *xp = malloc(N * D * sizeof *xp), *xm = malloc(N * D * sizeof *xm);
        float *wp = malloc(D * sizeof *wp), *wm = malloc(D * sizeof *wm);
        for (int i = 0; i < N * D; i++) xp[i] = x[i] + h * vx[i], xm[i] = x[i] - h * vx[i];
        for (int i = 0; i < D; i++) wp[i] = w[i] + h * vw[i], wm[i] = w[i] - h * vw[i];
        check_dir("rmsnorm dx", (rms_loss(xp, w, Rr, N, D) - rms_loss(xm, w, Rr, N, D)) / (2 * h), dotd(dx, vx, N * D));
        check_dir("rmsnorm dw", (rms_loss(x, wp, Rr, N, D) - rms_loss(x, wm, Rr, N, D)) / (2 * h), dotd(dw, vw, D));
        free(vx), free(vw), free(xp), free(xm), free(wp), free(wm);
    }
    free(x), free(w), free(Rr), free(y), free(rs), free(dx), free(dw);
}

/* ------------------------------------------------------------- RoPE */
static void test_rope_backward_is_the_transpose_and_matches_rotate_half(void **state)
{
    int N = 5, H = 4, KV = 2, hd = 8, QKV = (H + 2 * KV) * hd, half = hd / 2;
    int pos[5] = {0, 1, 2, 7, 3};
    float cs[8 * 4], sn[8 * 4];
    for (int t = 0; t < 8; t++)
        for (int i = 0; i < half; i++) {
            double a = t * pow(10000.0, -2.0 * i / hd);
            cs[t * half + i] = cos(a), sn[t * half + i] = sin(a);
        }
    float *x = randn(N * QKV, 1), *y = randn(N * QKV, 1);
    float *rx = malloc(N * QKV * sizeof *rx), *ry = malloc(N * QKV * sizeof *ry);
    memcpy(rx, x, N * QKV * sizeof *rx);
    memcpy(ry, y, N * QKV * sizeof *ry);
    attn_rope(rx, pos, cs, sn, N, H, KV, hd, 0);
    attn_rope(ry, pos, cs, sn, N, H, KV, hd, 1);
    /* <R x, y> == <x, R^T y> */
    double lhs = dotd(rx, y, N * QKV), rhs = dotd(x, ry, N * QKV);
    printf("  rope <Rx,y> % .8e  <x,R^T y> % .8e\n", lhs, rhs);
    assert_float_equal(lhs, rhs, 1e-5 * fabs(lhs));
    /* rotate_half by hand for one element of a k head; v heads untouched */
    int n = 3, h = H + 1, i = 2;
    double a = pos[n] * pow(10000.0, -2.0 * i / hd);
    const float *xr = x + n * QKV + h * hd;
    double want = xr[i] * cos(a) - xr[i + half] * sin(a);
    assert_float_equal(rx[n * QKV + h * hd + i], want, 1e-5);
    assert_memory_equal(rx + n * QKV + (H + KV) * hd, x + n * QKV + (H + KV) * hd, KV * hd * sizeof(float));
    free(x), free(y), free(rx), free(ry);
}

/* ------------------------------------------------------------- attention */
typedef struct {
    int B, T, H, KV, hd;
    int *ks;
    float *scr;
} attn_case;

static double attn_loss(attn_case *c, const float *qkv, const float *Rr)
{
    size_t N = (size_t)c->B * c->T;
    float *out = malloc(N * c->H * c->hd * sizeof *out), *lse = malloc(N * c->H * sizeof *lse);
    attn_forward(out, lse, qkv, c->ks, c->B, c->T, c->H, c->KV, c->hd, c->scr);
    double l = loss_dot(out, Rr, N * c->H * c->hd);
    free(out), free(lse);
    return l;
}

/* Naive double-precision attention for one output element. */
static double attn_naive(attn_case *c, const float *qkv, int b, int t, int h, int d)
{
    int QKV = (c->H + 2 * c->KV) * c->hd, g = h / (c->H / c->KV);
    const float *q = qkv + ((size_t)b * c->T + t) * QKV + h * c->hd;
    double mx = -1e300, s[1024], z = 0, o = 0;
    int lo = c->ks[b * c->T + t];
    for (int j = lo; j <= t; j++) {
        const float *k = qkv + ((size_t)b * c->T + j) * QKV + (c->H + g) * c->hd;
        s[j] = dotd(q, k, c->hd) / sqrt((double)c->hd);
        mx = s[j] > mx ? s[j] : mx;
    }
    for (int j = lo; j <= t; j++) z += exp(s[j] - mx);
    for (int j = lo; j <= t; j++)
        o += exp(s[j] - mx) / z * qkv[((size_t)b * c->T + j) * QKV + (c->H + c->KV + g) * c->hd + d];
    return o;
}

static void run_attention_case(int B, int T, int H, int KV, int hd, int window, int doc_every)
{
    attn_case c = {B, T, H, KV, hd, malloc(B * T * sizeof(int)), NULL};
    c.scr = malloc((size_t)omp_get_max_threads() * attn_scratch_floats(T, hd) * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int t = 0, start = 0; t < T; t++) {
            if (doc_every && t % doc_every == 0) start = t;
            int lo = start;
            if (window && t - window + 1 > lo) lo = t - window + 1;
            c.ks[b * T + t] = lo;
        }
    int QKV = (H + 2 * KV) * hd;
    size_t N = (size_t)B * T, no = N * H * hd;
    float *qkv = randn(N * QKV, 1), *Rr = randn(no, 1);
    float *out = malloc(no * sizeof *out), *lse = malloc(N * H * sizeof *lse), *dq = malloc(N * QKV * sizeof *dq);
    attn_forward(out, lse, qkv, c.ks, B, T, H, KV, hd, c.scr);
    double maxd = 0;
    for (int s = 0; s < 40; s++) {
        int b = s % B, t = (s * 37) % T, h = (s * 5) % H, d = (s * 3) % hd;
        double want = attn_naive(&c, qkv, b, t, h, d);
        double got = out[((size_t)b * T + t) * H * hd + h * hd + d];
        maxd = fabs(want - got) > maxd ? fabs(want - got) : maxd;
    }
    printf("  attention forward vs naive: max abs diff %.2e\n", maxd);
    assert_true(maxd < 1e-5);
    attn_backward(dq, Rr, out, qkv, lse, c.ks, B, T, H, KV, hd, c.scr);
    float h = getenv("FD_H") ? atof(getenv("FD_H")) : 3e-3f;
    for (int rep = 0; rep < 3; rep++) {
        float *v = randn(N * QKV, 1), *p = malloc(N * QKV * sizeof *p), *m = malloc(N * QKV * sizeof *m);
        for (size_t i = 0; i < N * QKV; i++) p[i] = qkv[i] + h * v[i], m[i] = qkv[i] - h * v[i];
        check_dir("attention dqkv", (attn_loss(&c, p, Rr) - attn_loss(&c, m, Rr)) / (2 * h), dotd(dq, v, N * QKV));
        free(v), free(p), free(m);
    }
    free(c.ks), free(c.scr), free(qkv), free(Rr), free(out), free(lse), free(dq);
}

static void test_attention_backward_matches_finite_differences(void **state)
{
    run_attention_case(2, 24, 4, 2, 16, 0, 0);   /* the golden shapes: GQA 2 groups */
    run_attention_case(1, 150, 4, 1, 8, 0, 0);   /* several query blocks, MQA */
    run_attention_case(4, 70, 4, 2, 16, 0, 0);   /* tasks per kv head at up to 2 threads */
}

/* The forward's tasks are (batch row, kv head) when there are 4 per thread, else one query
 * head: both give the same bits (each head's arithmetic is the same). */
static void test_attention_tasks_per_kv_head_match_per_query_head(void **state)
{
    int B = 4, T = 70, H = 4, KV = 2, hd = 16, QKV = (H + 2 * KV) * hd, N = B * T, keep = omp_get_max_threads();
    int *ks = calloc(N, sizeof *ks);
    float *qkv = randn((size_t)N * QKV, 1), *scr = malloc(8 * attn_scratch_floats(T, hd) * sizeof(float));
    float *out[2], *lse[2];
    for (int v = 0; v < 2; v++) {
        out[v] = malloc((size_t)N * H * hd * sizeof(float)), lse[v] = malloc((size_t)N * H * sizeof(float));
        omp_set_num_threads(v ? 8 : 1); /* 1 thread: B * KV = 8 tasks per kv head; 8 threads: per query head */
        attn_forward(out[v], lse[v], qkv, ks, B, T, H, KV, hd, scr);
    }
    omp_set_num_threads(keep);
    assert_memory_equal(out[0], out[1], (size_t)N * H * hd * sizeof(float));
    assert_memory_equal(lse[0], lse[1], (size_t)N * H * sizeof(float));
    free(ks), free(qkv), free(scr), free(out[0]), free(out[1]), free(lse[0]), free(lse[1]);
}

static void test_attention_with_sliding_window_and_document_mask(void **state)
{
    run_attention_case(2, 130, 2, 2, 8, 40, 0);  /* sliding window across blocks */
    run_attention_case(1, 100, 2, 1, 8, 0, 30);  /* documents restart every 30 tokens */
    run_attention_case(1, 100, 2, 1, 8, 16, 45);
}

/* ------------------------------------------------------------- router + experts */
/* [E] fp32 matrix views over one contiguous buffer of E (rows x cols) blocks (leaked: tests). */
static model_mat *mats(const float *w, int E, int rows, int cols)
{
    model_mat *m = calloc((size_t)E, sizeof *m);
    for (int e = 0; e < E; e++)
        m[e] = (model_mat){.dtype = MODEL_F32, .n = 1, .cols = cols, .p = {w + (size_t)e * rows * cols}, .rows = {rows}};
    return m;
}
static const model_tiles no_tiles = {0};

typedef struct {
    int N, D, F, E, k;
    float *Wg, *w13, *w2;
    float aux_c, z_c;
    int *topi_ref, norm;
} moe_case;

/* MoE block loss: <out, R> + aux_c * sum_e f_e P_e E + z_c * mean lse^2 with f fixed
 * from the reference routing. Returns -1e300 if the top-k selection changed. */
static double moe_loss(moe_case *c, const float *xn, const float *Rr, const double *f)
{
    int N = c->N, D = c->D, E = c->E, k = c->k, F = c->F, Nk = N * k;
    float *lg = malloc(N * E * 4), *pr = malloc(N * E * 4), *tw = malloc(Nk * 4), *out = calloc(N * D, 4);
    int *ti = malloc(Nk * 4), *cnt = calloc(E, 4), *off = malloc((E + 1) * 4), *rt = malloc(Nk * 4),
        *sr = malloc(Nk * 4);
    float *h13 = malloc(Nk * 2 * F * 4), *ye = malloc(Nk * D * 4), *xs = malloc(Nk * D * 4), *act = malloc(Nk * F * 4);
    moe_route(lg, pr, ti, tw, cnt, xn, c->Wg, N, D, E, k, c->norm);
    double l = -1e300;
    if (c->topi_ref && memcmp(ti, c->topi_ref, Nk * sizeof(int))) goto out;
    moe_sort(off, rt, sr, ti, N, E, k);
    moe_experts_forward(&no_tiles, out, h13, ye, xs, act, xn, mats(c->w13, E, 2 * F, D), mats(c->w2, E, D, F), off, rt,
                        sr, tw, N, D, F, E, k, NULL, NULL);
    l = loss_dot(out, Rr, (size_t)N * D);
    for (int e = 0; e < E; e++) {
        double P = 0;
        for (int n = 0; n < N; n++) P += pr[n * E + e];
        l += c->aux_c * E * f[e] * P / N;
    }
    for (int n = 0; n < N; n++) {
        double mx = -1e30, s = 0;
        for (int e = 0; e < E; e++) mx = lg[n * E + e] > mx ? lg[n * E + e] : mx;
        for (int e = 0; e < E; e++) s += exp(lg[n * E + e] - mx);
        l += c->z_c * (mx + log(s)) * (mx + log(s)) / N;
    }
out:
    free(lg), free(pr), free(tw), free(out), free(ti), free(cnt), free(off), free(rt), free(sr), free(h13), free(ye),
        free(xs), free(act);
    return l;
}

static void router_and_experts_case(int norm)
{
    moe_case c = {.N = 40, .D = 16, .F = 24, .E = 4, .k = 2, .aux_c = 0.5f, .z_c = 0.1f, .norm = norm};
    int N = c.N, D = c.D, F = c.F, E = c.E, k = c.k, Nk = N * k;
    c.Wg = randn(E * D, 0.5f), c.w13 = randn(E * 2 * F * D, 0.3f), c.w2 = randn(E * D * F, 0.3f);
    float *xn = randn(N * D, 1), *Rr = randn(N * D, 1);
    /* forward, saving what backward needs */
    float *lg = malloc(N * E * 4), *pr = malloc(N * E * 4), *tw = malloc(Nk * 4), *out = calloc(N * D, 4);
    int *ti = malloc(Nk * 4), *cnt = calloc(E, 4), *off = malloc((E + 1) * 4), *rt = malloc(Nk * 4),
        *sr = malloc(Nk * 4);
    float *h13 = malloc(Nk * 2 * F * 4), *ye = malloc(Nk * D * 4), *xs = malloc(Nk * D * 4), *act = malloc(Nk * F * 4);
    moe_route(lg, pr, ti, tw, cnt, xn, c.Wg, N, D, E, k, norm);
    moe_sort(off, rt, sr, ti, N, E, k);
    moe_experts_forward(&no_tiles, out, h13, ye, xs, act, xn, mats(c.w13, E, 2 * F, D), mats(c.w2, E, D, F), off, rt,
                        sr, tw, N, D, F, E, k, NULL, NULL);
    /* topw sum to 1 (renormalised) or are the top probabilities, counts add up, sorted rows
     * are grouped by expert */
    for (int n = 0; n < N; n++)
        assert_float_equal(tw[n * k] + tw[n * k + 1],
                           norm ? 1.0 : pr[n * E + ti[n * k]] + pr[n * E + ti[n * k + 1]], 1e-6);
    for (int e = 0; e < E; e++) assert_int_equal(off[e + 1] - off[e], cnt[e]);
    double f[4];
    float aux_dp[4];
    for (int e = 0; e < E; e++) f[e] = cnt[e] / (double)N, aux_dp[e] = c.aux_c * E * f[e] / N;
    float *dxn = calloc(N * D, 4), *dw13 = calloc(E * 2 * F * D, 4), *dw2 = calloc(E * D * F, 4),
          *dWg = calloc(E * D, 4), *dtw = malloc(Nk * 4), *dys = malloc(Nk * D * 4),
          *drl = malloc(N * E * 4);
    float *eg = malloc(Nk * F * 4), *erows = malloc(2 * Nk * 4);
    moe_experts_backward(&no_tiles, dxn, dw13, dw2, dtw, Rr, h13, xn, mats(c.w13, E, 2 * F, D), mats(c.w2, E, D, F),
                         off, rt, sr, tw, xs, act, dys, eg, erows, N, D, F, E, k, NULL, 0);
    free(eg), free(erows);
    moe_router_backward(dxn, dWg, drl, dtw, lg, pr, ti, tw, aux_dp, c.z_c / N, xn, c.Wg, N, D, E, k, norm);
    c.topi_ref = ti;
    struct { const char *name; float *p; float *g; size_t n; } ps[] = {
        {"moe d xn", xn, dxn, N * D}, {"moe d gate", c.Wg, dWg, E * D},
        {"moe d w1|w3", c.w13, dw13, E * 2 * F * D}, {"moe d w2", c.w2, dw2, E * D * F}};
    for (int i = 0; i < 4; i++) {
        float *v = NULL, *save = malloc(ps[i].n * 4);
        memcpy(save, ps[i].p, ps[i].n * 4);
        double lp = -1e300, lm = -1e300, h = 2e-3;
        for (int tries = 0; tries < 20 && (lp < -1e299 || lm < -1e299); tries++) { /* redraw if routing flips */
            free(v);
            v = randn(ps[i].n, 1);
            h *= 0.8;
            for (size_t j = 0; j < ps[i].n; j++) ps[i].p[j] = save[j] + h * v[j];
            lp = moe_loss(&c, xn, Rr, f);
            for (size_t j = 0; j < ps[i].n; j++) ps[i].p[j] = save[j] - h * v[j];
            lm = moe_loss(&c, xn, Rr, f);
            memcpy(ps[i].p, save, ps[i].n * 4);
        }
        assert_true(lp > -1e299 && lm > -1e299);
        check_dir(ps[i].name, (lp - lm) / (2 * h), dotd(ps[i].g, v, ps[i].n));
        free(v), free(save);
    }
    free(lg), free(pr), free(tw), free(out), free(ti), free(cnt), free(off), free(rt), free(sr), free(h13), free(ye),
        free(xs), free(act), free(dxn), free(dw13), free(dw2), free(dWg), free(dtw), free(dys), free(drl),
        free(xn), free(Rr), free(c.Wg), free(c.w13), free(c.w2);
}

static void test_router_and_experts_backward_match_finite_differences(void **state)
{
    router_and_experts_case(1); /* Mixtral: top-k weights renormalised */
    router_and_experts_case(0); /* norm_topk_prob false: the top-k probabilities as they are */
}

/* The experts run side by side on the cores, except one holding >= 1/threads of the rows,
 * which runs alone first (model/moe.c). Both schedules against a plain double-precision
 * evaluation of out = sum_j w_j W2 (silu(W1 x) * W3 x) and of its backward. */
static double rel_err(const float *a, const double *ref, size_t n)
{
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) d += (a[i] - ref[i]) * (a[i] - ref[i]), r += ref[i] * ref[i];
    return sqrt(d / (r > 0 ? r : 1));
}

static void run_experts_case(const int *topi, const char *what)
{
    enum { N = 64, D = 16, F = 24, E = 4, k = 2, Nk = N * k };
    float *w13 = randn(E * 2 * F * D, 0.3f), *w2 = randn(E * D * F, 0.3f), *xn = randn(N * D, 1),
          *dout = randn(N * D, 1), *tw = randn(Nk, 1);
    int off[E + 1], rt[Nk], sr[Nk];
    moe_sort(off, rt, sr, topi, N, E, k);
    float *out = malloc(N * D * 4), *h13 = malloc(Nk * 2 * F * 4), *ye = malloc(Nk * D * 4), *xs = malloc(Nk * D * 4),
          *act = malloc(Nk * F * 4), *dxn = malloc(N * D * 4), *dw13 = calloc(E * 2 * F * D, 4),
          *dw2 = calloc(E * D * F, 4), *dtw = malloc(Nk * 4), *dys = malloc(Nk * D * 4), *res = randn(N * D, 1);
    /* as a training step calls them: out = the residual res + the experts' sum (out's old
     * contents ignored), dxn set by the backward (its old contents ignored) */
    for (int i = 0; i < N * D; i++) out[i] = dxn[i] = NAN;
    moe_experts_forward(&no_tiles, out, h13, ye, xs, act, xn, mats(w13, E, 2 * F, D), mats(w2, E, D, F), off, rt, sr,
                        tw, N, D, F, E, k, NULL, res);
    for (int i = 0; i < N * D; i++) out[i] -= res[i];
    float *eg = malloc(Nk * F * 4), *erows = malloc(2 * Nk * 4);
    moe_experts_backward(&no_tiles, dxn, dw13, dw2, dtw, dout, h13, xn, mats(w13, E, 2 * F, D), mats(w2, E, D, F), off,
                         rt, sr, tw, xs, act, dys, eg, erows, N, D, F, E, k, NULL, 1);
    free(eg), free(erows);
    double *ro = calloc(N * D, 8), *rdx = calloc(N * D, 8), *rdw13 = calloc(E * 2 * F * D, 8),
           *rdw2 = calloc(E * D * F, 8), *rdtw = calloc(Nk, 8);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < k; j++) {
            int e = topi[n * k + j];
            const float *W1 = w13 + (size_t)e * 2 * F * D, *W3 = W1 + F * D, *W2 = w2 + (size_t)e * D * F,
                        *x = xn + n * D, *g = dout + n * D;
            double h1[F], h3[F], a[F], y[D], da[F];
            for (int f = 0; f < F; f++) {
                h1[f] = h3[f] = 0;
                for (int d = 0; d < D; d++) h1[f] += W1[f * D + d] * x[d], h3[f] += W3[f * D + d] * x[d];
                a[f] = h1[f] / (1 + exp(-h1[f])) * h3[f];
            }
            for (int d = 0; d < D; d++) {
                y[d] = 0;
                for (int f = 0; f < F; f++) y[d] += W2[d * F + f] * a[f];
                ro[n * D + d] += tw[n * k + j] * y[d];
                rdtw[n * k + j] += g[d] * y[d];
            }
            for (int f = 0; f < F; f++) {
                da[f] = 0;
                for (int d = 0; d < D; d++) {
                    double dy = tw[n * k + j] * g[d];
                    rdw2[(size_t)e * D * F + d * F + f] += dy * a[f];
                    da[f] += W2[d * F + f] * dy;
                }
                double s = 1 / (1 + exp(-h1[f])), dh1 = da[f] * h3[f] * s * (1 + h1[f] * (1 - s)),
                       dh3 = da[f] * h1[f] * s;
                for (int d = 0; d < D; d++) {
                    rdw13[(size_t)e * 2 * F * D + f * D + d] += dh1 * x[d];
                    rdw13[(size_t)e * 2 * F * D + (F + f) * D + d] += dh3 * x[d];
                    rdx[n * D + d] += W1[f * D + d] * dh1 + W3[f * D + d] * dh3;
                }
            }
        }
    struct { const char *name; const float *got; const double *ref; size_t n; } cmp[] = {
        {"out", out, ro, N * D}, {"d xn", dxn, rdx, N * D}, {"d topw", dtw, rdtw, Nk},
        {"d w1|w3", dw13, rdw13, E * 2 * F * D}, {"d w2", dw2, rdw2, E * D * F}};
    for (int i = 0; i < 5; i++) {
        double r = rel_err(cmp[i].got, cmp[i].ref, cmp[i].n);
        printf("    experts %-8s %-7s rel %.2e (tolerance 1e-5)\n", what, cmp[i].name, r);
        assert_true(r < 1e-5);
    }
    free(w13), free(w2), free(xn), free(dout), free(tw), free(out), free(h13), free(ye), free(xs), free(act),
        free(dxn), free(dw13), free(dw2), free(dtw), free(dys), free(ro), free(rdx), free(rdw13), free(rdw2),
        free(rdtw), free(res);
}

static void test_experts_agree_with_a_plain_evaluation_balanced_and_skewed(void **state)
{
    enum { N = 64, k = 2 };
    int bal[N * k], skew[N * k];
    for (int n = 0; n < N; n++) {
        bal[n * k] = n % 4, bal[n * k + 1] = (n + 1) % 4;
        skew[n * k] = 0, skew[n * k + 1] = 1 + n % 3; /* expert 0 holds half the rows: it runs alone */
    }
    /* model/moe.c: at 2 threads the balanced case runs side by side and the skewed one runs
     * expert 0 alone, then the rest side by side; at 3 threads the same; at 1 all alone.
     * Pinned here so a many-core machine still tests both schedules. */
    int saved = omp_get_max_threads();
    for (int t = 1; t <= 3; t++) {
        omp_set_num_threads(t);
        printf("    %d thread(s)\n", t);
        run_experts_case(bal, "balanced");
        run_experts_case(skew, "skewed");
    }
    omp_set_num_threads(saved);
}

/* ------------------------------------------------------------- whole model (loss head, embedding, residuals) */
static void test_model_backward_matches_finite_differences(void **state)
{
    const char *json = "{\"vocab_size\":50,\"hidden_size\":24,\"intermediate_size\":20,\"num_hidden_layers\":2,"
                       "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":6,\"num_local_experts\":4,"
                       "\"num_experts_per_tok\":2,\"rope_theta\":100.0,\"initializer_range\":0.2}";
    model_config cfg;
    char err[512];
    assert_int_equal(model_config_from_json(&cfg, json, err), 0);
    model m;
    assert_int_equal(model_create(&m, &cfg, 1, err), 0);
    model_init_random(&m, 7);
    for (int i = 0; i < m.tab.n; i++) /* random norms too, so their grads are non-trivial */
        if (m.tab.t[i].ndim == 1)
            for (size_t j = 0; j < m.tab.t[i].numel; j++) m.w[m.tab.t[i].offset + j] += 0.3f * rng_normal(&R);
    int B = 2, T = 9;
    int32_t tok[18], lab[18];
    for (int i = 0; i < B * T; i++) tok[i] = (int32_t)(rng_next(&R) % 50), lab[i] = i % 5 == 2 ? -100 : tok[i];
    model_batch b = {B, T, tok, lab, NULL, 0};
    model_acts *a;
    assert_int_equal(model_acts_create(&a, &m, B, T, err), 0);
    model_stats st;
    double aux_c = 0.3, z_c = 0.05;
    /* 2 rows x 8 shifted targets, minus the labels at n%5==2 (n = 2, 7, 12, 17) */
    assert_int_equal(model_forward_backward(&m, a, &b, 1.0 / 12, aux_c, z_c, 1, &st, err), 0);
    assert_int_equal(st.n_targets, 12);
    float *w0 = malloc(m.tab.total * 4), *g = malloc(m.tab.total * 4);
    memcpy(w0, m.w, m.tab.total * 4);
    memcpy(g, m.g, m.tab.total * 4);
    int Lr = cfg.n_layers, Nk = B * T * cfg.top_k;
    int *route0 = malloc((size_t)Lr * Nk * sizeof(int));
    for (int l = 0; l < Lr; l++) memcpy(route0 + l * Nk, model_routing(a, l, NULL), Nk * sizeof(int));
    /* Directions: all parameters, then one tensor at a time so a wrong block cannot hide in the sum. */
    const char *names[] = {NULL, "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                           "model.layers.1.self_attn.k_proj.weight", "model.layers.0.self_attn.o_proj.weight",
                           "model.layers.0.block_sparse_moe.gate.weight",
                           "model.layers.1.block_sparse_moe.experts.2.w2.weight",
                           "model.layers.0.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight"};
    for (int i = 0; i < 10; i++) {
        size_t o = 0, n = m.tab.total;
        if (names[i]) {
            const model_tensor *t = model_find(&m, names[i]);
            assert_non_null(t);
            o = t->offset, n = t->numel;
        }
        double h = 1.25e-3, lp = 0, lm = 0;
        float *v = NULL;
        int tries = 0, flipped = 1;
        while (flipped && tries++ < 20) { /* redraw directions that flip a top-k choice */
            free(v);
            h *= 0.8;
            v = randn(n, 1);
            flipped = 0;
            for (int sgn = 1; sgn >= -1; sgn -= 2) {
                memcpy(m.w, w0, m.tab.total * 4);
                for (size_t j = 0; j < n; j++) m.w[o + j] = w0[o + j] + sgn * (float)h * v[j];
                model_stats s2;
                assert_int_equal(model_forward(&m, a, &b, aux_c, z_c, NULL, &s2, err), 0);
                *(sgn > 0 ? &lp : &lm) = s2.loss;
                for (int l = 0; l < Lr; l++)
                    flipped |= memcmp(route0 + l * Nk, model_routing(a, l, NULL), Nk * sizeof(int)) != 0;
            }
        }
        assert_false(flipped);
        g_mag = 10 * fabs(lp); /* a deep fp32 stack: rounding grows ~10x over the loss itself */
        check_dir(names[i] ? names[i] : "model, all parameters", (lp - lm) / (2 * h), dotd(g + o, v, n));
        free(v);
    }
    memcpy(m.w, w0, m.tab.total * 4);
    free(route0), free(g);
    free(w0);
    model_acts_free(a);
    model_free(&m);
}

int main(void)
{
    rng_seed(&R, getenv("SEED") ? atoi(getenv("SEED")) : 1234, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expf_matches_exp_and_is_defined_for_nan_and_inf),
        cmocka_unit_test(test_rmsnorm_and_row_dots_match_double),
        cmocka_unit_test(test_rmsnorm_backward_matches_finite_differences),
        cmocka_unit_test(test_rope_backward_is_the_transpose_and_matches_rotate_half),
        cmocka_unit_test(test_attention_backward_matches_finite_differences),
        cmocka_unit_test(test_attention_tasks_per_kv_head_match_per_query_head),
        cmocka_unit_test(test_attention_with_sliding_window_and_document_mask),
        cmocka_unit_test(test_router_and_experts_backward_match_finite_differences),
        cmocka_unit_test(test_experts_agree_with_a_plain_evaluation_balanced_and_skewed),
        cmocka_unit_test(test_model_backward_matches_finite_differences),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
