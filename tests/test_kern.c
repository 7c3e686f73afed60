/* moet's own kernels (model/kern.h) against plain double-precision evaluations, on both
 * kernel sets the CPU has (the AVX-512 and AVX2 builds are called directly, whatever
 * MOET_ISA picks for the process):
 *   - GEMM, all four transposes, odd shapes (tails of every tile and block), alpha / beta,
 *     leading dimensions past the width: |C - C_ref| <= 1e-5 * sum_k |a||b| per element (fp32
 *     rounding of a k-term sum, 30x margin at k ~ 2000);
 *   - a bf16 / f16 B gives bit for bit the product of the fp32-widened B;
 *   - the two sets, both modes (C or C^T computed) and any split of M or N over calls give bit
 *     for bit the same C (one FMA chain per element over k, in the same k blocks);
 *   - model_gemm's OpenBLAS products at the top level, split over M into one call per thread
 *     (model/gemm.c blas_parts), against double with the same bound, and against the same call
 *     made unsplit (inside a one-thread region), all four transposes, uneven parts, beta != 0;
 *   - short in-place products, transposes and row copies (exact), the attention softmax passes, SwiGLU and
 *     the cross-entropy row against double precision (relative 2e-6: exp's 2e-7 and a sum). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/half.h"
#include "common/rng.h"
#include "model/kern.h"
#include "model/layers.h"

#include <omp.h>

/* the kernel sets, called directly */
void kern512_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const void *B, int ldb,
                  int bdt, float beta, float *C, int ldc, float *pack);
void kern256_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const void *B, int ldb,
                  int bdt, float beta, float *C, int ldc, float *pack);
typedef void (*gemm_fn)(int, int, int, int, int, float, const float *, int, const void *, int, int, float, float *,
                        int, float *);

static rng_state R;

static float *randv(size_t n)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = (float)rng_normal(&R);
    return p;
}

static int sets(gemm_fn *fns, const char **names)
{
    int n = 0;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        fns[n] = kern512_gemm, names[n++] = "AVX-512";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        fns[n] = kern256_gemm, names[n++] = "AVX2";
    return n;
}

typedef struct {
    int ta, tb, M, N, K;
} shape;

static const shape shapes[] = {
    {0, 1, 37, 45, 333},   {0, 0, 29, 77, 701},   {1, 0, 41, 19, 650},  {1, 1, 13, 50, 99},   {0, 1, 7, 300, 130},
    {0, 0, 100, 5, 17},    {0, 1, 64, 200, 1500}, {0, 0, 64, 96, 1400}, {1, 0, 300, 70, 77}, {0, 1, 2048 / 8, 16, 256},
    {0, 1, 250, 256, 16},  {0, 0, 250, 256, 8},   {1, 0, 16, 600, 300}, {0, 1, 1, 1, 1},     {0, 0, 3, 1, 1000},
};

/* C = alpha op(A) op(B) + beta C0 for one shape on one set; checks against double. */
static void check_gemm(gemm_fn fn, const char *name, const shape *s, float alpha, float beta, float **Cout)
{
    int ar = s->ta ? s->K : s->M, ac = s->ta ? s->M : s->K, br = s->tb ? s->N : s->K, bc = s->tb ? s->K : s->N;
    int lda = ac + 3, ldb = bc + 5, ldc = s->N + 2;
    float *A = randv((size_t)ar * lda), *B = randv((size_t)br * ldb), *C0 = randv((size_t)s->M * ldc);
    float *C = malloc((size_t)s->M * ldc * sizeof *C), *pack = malloc(kern_pack_floats() * sizeof(float));
    memcpy(C, C0, (size_t)s->M * ldc * sizeof *C);
    fn(s->ta, s->tb, s->M, s->N, s->K, alpha, A, lda, B, ldb, KERN_F32, beta, C, ldc, pack);
    double worst = 0;
    for (int i = 0; i < s->M; i++)
        for (int j = 0; j < s->N; j++) {
            double acc = 0, mag = 0;
            for (int k = 0; k < s->K; k++) {
                double a = s->ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                double b = s->tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                acc += a * b;
                mag += fabs(a * b);
            }
            double want = alpha * acc + (beta != 0 ? beta * C0[(size_t)i * ldc + j] : 0);
            double tol = 1e-5 * (fabs(alpha) * mag + fabs(beta * C0[(size_t)i * ldc + j])) + 1e-30;
            double d = fabs(C[(size_t)i * ldc + j] - want) / tol;
            worst = d > worst ? d : worst;
        }
    for (int i = 0; i < s->M; i++) /* the padding past N is untouched */
        for (int j = s->N; j < ldc; j++) assert_true(C[(size_t)i * ldc + j] == C0[(size_t)i * ldc + j]);
    if (worst > 1) printf("  %s %c%c %dx%dx%d: error %.2f x the bound\n", name, "NT"[s->ta], "NT"[s->tb], s->M, s->N,
                          s->K, worst);
    assert_true(worst <= 1);
    free(A), free(B), free(C0), free(pack);
    *Cout = C;
}

static void test_gemm_matches_double_on_every_transpose_and_tail(void **state)
{
    gemm_fn fns[2];
    const char *names[2];
    int n = sets(fns, names);
    if (!n) skip();
    for (int f = 0; f < n; f++) {
        for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
            float *C;
            rng_seed(&R, 100 + i, 0);
            check_gemm(fns[f], names[f], &shapes[i], 1, 0, &C);
            free(C);
            rng_seed(&R, 200 + i, 0);
            check_gemm(fns[f], names[f], &shapes[i], 0.37f, 1, &C);
            free(C);
        }
        printf("  %s: %zu shapes x (alpha 1 beta 0, alpha 0.37 beta 1) within 1e-5 sum|ab|\n", names[f],
               sizeof shapes / sizeof *shapes);
    }
}

static void test_the_kernel_sets_agree_bit_for_bit(void **state)
{
    gemm_fn fns[2];
    const char *names[2];
    if (sets(fns, names) < 2) skip();
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        float *C1, *C2;
        rng_seed(&R, 300 + i, 0);
        check_gemm(fns[0], names[0], &shapes[i], 0.5f, 1, &C1);
        rng_seed(&R, 300 + i, 0);
        check_gemm(fns[1], names[1], &shapes[i], 0.5f, 1, &C2);
        assert_memory_equal(C1, C2, (size_t)shapes[i].M * (shapes[i].N + 2) * sizeof(float));
        free(C1), free(C2);
    }
}

/* any split of M or N over calls (what model/gemm.c does over threads) and the C / C^T modes
 * give the same bits */
static void test_splits_and_modes_give_the_same_bits(void **state)
{
    gemm_fn fns[2];
    const char *names[2];
    int n = sets(fns, names);
    if (!n) skip();
    const shape ss[] = {{0, 1, 64, 300, 700}, {0, 0, 200, 90, 333}, {1, 0, 120, 64, 900}, {0, 1, 300, 40, 200}};
    float *pack = malloc(kern_pack_floats() * sizeof(float));
    for (int f = 0; f < n; f++)
        for (size_t i = 0; i < sizeof ss / sizeof *ss; i++) {
            const shape *s = &ss[i];
            int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N, ldc = s->N;
            float *A = randv((size_t)(s->ta ? s->K : s->M) * lda), *B = randv((size_t)(s->tb ? s->N : s->K) * ldb);
            float *C = calloc((size_t)s->M * ldc, 4), *P = calloc((size_t)s->M * ldc, 4);
            fns[f](s->ta, s->tb, s->M, s->N, s->K, 1, A, lda, B, ldb, KERN_F32, 0, C, ldc, pack);
            for (int m0 = 0; m0 < s->M; m0 += 13) { /* rows in pieces of 13 */
                int m = s->M - m0 < 13 ? s->M - m0 : 13;
                fns[f](s->ta, s->tb, m, s->N, s->K, 1, s->ta ? A + m0 : A + (size_t)m0 * lda, lda, B, ldb, KERN_F32, 0,
                       P + (size_t)m0 * ldc, ldc, pack);
            }
            assert_memory_equal(C, P, (size_t)s->M * ldc * 4);
            memset(P, 0, (size_t)s->M * ldc * 4);
            for (int n0 = 0; n0 < s->N; n0 += 35) { /* columns in pieces of 35 */
                int w = s->N - n0 < 35 ? s->N - n0 : 35;
                fns[f](s->ta, s->tb, s->M, w, s->K, 1, A, lda, s->tb ? B + (size_t)n0 * ldb : B + n0, ldb, KERN_F32, 0,
                       P + n0, ldc, pack);
            }
            assert_memory_equal(C, P, (size_t)s->M * ldc * 4);
            free(A), free(B), free(C), free(P);
        }
    free(pack);
}

/* model_gemm at the top level with 2 threads: split over M where B is narrow or small (every
 * shape here), OpenBLAS single-threaded inside a region (no split): both within the bound of
 * check_gemm against double; the rows past each part's end and the padding past N untouched. */
static void test_top_level_products_split_over_m_match_double(void **state)
{
    static const shape top[] = {{0, 1, 333, 256, 256}, {0, 0, 300, 200, 515}, {1, 0, 257, 96, 700},
                                {1, 1, 130, 64, 33},   {0, 1, 260, 4096, 64}};
    int keep = omp_get_max_threads();
    omp_set_num_threads(2);
    for (size_t c = 0; c < sizeof top / sizeof top[0]; c++) {
        const shape *s = &top[c];
        int ar = s->ta ? s->K : s->M, ac = s->ta ? s->M : s->K, br = s->tb ? s->N : s->K, bc = s->tb ? s->K : s->N;
        int lda = ac + 3, ldb = bc + 5, ldc = s->N + 2;
        float *A = randv((size_t)ar * lda), *B = randv((size_t)br * ldb), *C0 = randv((size_t)s->M * ldc);
        float *C[2];
        for (int v = 0; v < 2; v++) {
            C[v] = malloc((size_t)s->M * ldc * sizeof(float));
            memcpy(C[v], C0, (size_t)s->M * ldc * sizeof(float));
        }
        model_gemm(s->ta, s->tb, s->M, s->N, s->K, 0.75f, A, lda, B, ldb, 0.5f, C[0], ldc); /* split */
#pragma omp parallel num_threads(1)
        model_gemm(s->ta, s->tb, s->M, s->N, s->K, 0.75f, A, lda, B, ldb, 0.5f, C[1], ldc); /* one call */
        double worst = 0, apart = 0;
        for (int i = 0; i < s->M; i++) {
            for (int j = 0; j < s->N; j++) {
                double acc = 0, mag = 0;
                for (int k = 0; k < s->K; k++) {
                    double a = s->ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                    double b = s->tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                    acc += a * b, mag += fabs(a * b);
                }
                double c0 = C0[(size_t)i * ldc + j], want = 0.75 * acc + 0.5 * c0;
                double tol = 1e-5 * (0.75 * mag + 0.5 * fabs(c0)) + 1e-30;
                double d = fabs(C[0][(size_t)i * ldc + j] - want) / tol, e = fabs(C[1][(size_t)i * ldc + j] - want) / tol;
                worst = d > worst ? d : e > worst ? e : worst;
                double x = fabs(C[0][(size_t)i * ldc + j] - C[1][(size_t)i * ldc + j]) / tol;
                apart = x > apart ? x : apart;
            }
            for (int j = s->N; j < ldc; j++)
                assert_true(C[0][(size_t)i * ldc + j] == C0[(size_t)i * ldc + j]);
        }
        printf("  %c%c %dx%dx%d: split and unsplit within %.3f of the bound of double, %.3f apart\n", "NT"[s->ta],
               "NT"[s->tb], s->M, s->N, s->K, worst, apart);
        assert_true(worst <= 1);
        assert_true(apart <= 1);
        free(A), free(B), free(C0), free(C[0]), free(C[1]);
    }
    omp_set_num_threads(keep);
}

static void test_16_bit_b_is_the_product_of_the_widened_b(void **state)
{
    gemm_fn fns[2];
    const char *names[2];
    int n = sets(fns, names);
    if (!n) skip();
    const shape ss[] = {{0, 1, 37, 45, 333}, {0, 0, 29, 77, 701}, {0, 1, 64, 100, 64}, {0, 0, 130, 33, 17}};
    float *pack = malloc(kern_pack_floats() * sizeof(float));
    for (int f = 0; f < n; f++)
        for (int dt = KERN_BF16; dt <= KERN_F16; dt++)
            for (size_t i = 0; i < sizeof ss / sizeof *ss; i++) {
                const shape *s = &ss[i];
                int lda = s->K, ldb = s->tb ? s->K + 1 : s->N + 1, br = s->tb ? s->N : s->K;
                float *A = randv((size_t)s->M * lda), *Bf = randv((size_t)br * ldb);
                uint16_t *Bh = malloc((size_t)br * ldb * 2);
                for (size_t t = 0; t < (size_t)br * ldb; t++) {
                    Bh[t] = dt == KERN_BF16 ? half_f32_to_bf16(Bf[t]) : half_f32_to_f16(Bf[t]);
                    Bf[t] = dt == KERN_BF16 ? half_bf16_to_f32(Bh[t]) : half_f16_to_f32(Bh[t]);
                }
                float *C1 = calloc((size_t)s->M * s->N, 4), *C2 = calloc((size_t)s->M * s->N, 4);
                fns[f](0, s->tb, s->M, s->N, s->K, 1, A, lda, Bh, ldb, dt, 0, C1, s->N, pack);
                fns[f](0, s->tb, s->M, s->N, s->K, 1, A, lda, Bf, ldb, KERN_F32, 0, C2, s->N, pack);
                assert_memory_equal(C1, C2, (size_t)s->M * s->N * 4);
                free(A), free(Bf), free(Bh), free(C1), free(C2);
            }
    free(pack);
}

static void test_short_products_and_transposes(void **state)
{
    rng_seed(&R, 7, 0);
    int M = 48, N = 64, K = 40, lda = 70, ldb = 90, ldc = 80;
    /* A is read as M rows of K and as K rows of M (transposed): room for the longer */
    float *A = randv((size_t)(M > K ? M : K) * lda), *B = randv((size_t)K * ldb), *C = randv((size_t)M * ldc);
    float *C0 = malloc((size_t)M * ldc * 4);
    memcpy(C0, C, (size_t)M * ldc * 4);
    for (int col = 0; col < 2; col++) { /* A by rows, then A transposed (columns) */
        memcpy(C, C0, (size_t)M * ldc * 4);
        long rsa = col ? 1 : lda, csa = col ? lda : 1;
        kern_mm(M, N, K, 0.5f, A, rsa, csa, B, ldb, 1, C, ldc);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double acc = 0, mag = 0;
                for (int k = 0; k < K; k++) acc += (double)A[i * rsa + k * csa] * B[k * ldb + j],
                                            mag += fabs((double)A[i * rsa + k * csa] * B[k * ldb + j]);
                double want = 0.5 * acc + C0[i * ldc + j];
                assert_true(fabs(C[i * ldc + j] - want) <= 1e-5 * (mag + fabs(C0[i * ldc + j])));
            }
    }
    float *T = malloc((size_t)N * (M + 5) * 4);
    kern_transpose(T, M + 5, C, ldc, M, N);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) assert_true(T[j * (M + 5) + i] == C[i * ldc + j]);
    for (int cols = 1; cols <= 40; cols += 13) { /* rows of a head: whole vectors, a tail, both */
        float *D = malloc((size_t)M * 50 * 4);
        for (int i = 0; i < M * 50; i++) D[i] = -1;
        kern_copy_rows(D, 50, C, ldc, M, cols);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < 50; j++) assert_true(D[i * 50 + j] == (j < cols ? C[i * ldc + j] : -1));
        free(D);
    }
    free(A), free(B), free(C), free(C0), free(T);
}

static double expd(double x) { return exp(x); }

static void test_softmax_swiglu_and_cross_entropy_match_double(void **state)
{
    rng_seed(&R, 11, 0);
    enum { M = 20, LD = 64 };
    float *S = randv(M * LD), *S0 = malloc(M * LD * 4), mprev[M], mnew[M], sum[M];
    int lo[M], hi[M], nk = 57;
    memcpy(S0, S, M * LD * 4);
    for (int i = 0; i < M; i++) {
        lo[i] = i % 3 == 0 ? 0 : i % 7, hi[i] = i % 5 == 0 ? nk - 1 : 10 + i;
        mprev[i] = i % 2 ? -INFINITY : 0.5f;
    }
    lo[3] = 30, hi[3] = 20; /* a row that sees nothing */
    kern_attn_block_fwd(S, LD, M, nk, lo, hi, mprev, mnew, sum);
    double worst = 0;
    for (int i = 0; i < M; i++) {
        double mx = mprev[i], t = 0;
        for (int j = lo[i]; j <= hi[i]; j++) mx = S0[i * LD + j] > mx ? S0[i * LD + j] : mx;
        assert_true(mnew[i] == (float)mx);
        for (int j = 0; j < nk; j++) {
            double e = j >= lo[i] && j <= hi[i] ? expd(S0[i * LD + j] - mx) : 0;
            t += e;
            double d = fabs(S[i * LD + j] - e) / (e + 1e-30);
            worst = e > 0 && d > worst ? d : worst;
            if (e == 0) assert_true(S[i * LD + j] == 0);
        }
        if (t > 0) worst = fabs(sum[i] - t) / t > worst ? fabs(sum[i] - t) / t : worst;
    }
    printf("  attention block softmax: worst relative error %.2e\n", worst);
    assert_true(worst < 2e-6);

    int F = 37, rows = 3; /* several rows: the kernels fetch the next one ahead */
    float *h13 = randv(rows * 2 * F), *act = malloc(rows * F * 4), *g = randv(rows * F), w[3] = {0.5f, 1, 2};
    float *h0 = malloc(rows * 2 * F * 4), *h13b = malloc(rows * 2 * F * 4), *act2 = malloc(rows * F * 4);
    memcpy(h0, h13, rows * 2 * F * 4);
    memcpy(h13b, h13, rows * 2 * F * 4);
    kern_swiglu(act, h13, rows, F);
    kern_swiglu_backward(NULL, h13, g, w, rows, F);
    kern_swiglu_backward(act2, h13b, g, w, rows, F); /* recomputes act on the way: the same floats */
    assert_memory_equal(act2, act, rows * F * 4);
    assert_memory_equal(h13b, h13, rows * 2 * F * 4);
    worst = 0;
    for (int r = 0; r < rows; r++)
        for (int f = 0; f < F; f++) {
            double x1 = h0[r * 2 * F + f], x3 = h0[r * 2 * F + F + f], s = 1 / (1 + expd(-x1)), d = g[r * F + f] * w[r];
            double want[3] = {x1 * s * x3, d * x3 * s * (1 + x1 * (1 - s)), d * x1 * s};
            double got[3] = {act[r * F + f], h13[r * 2 * F + f], h13[r * 2 * F + F + f]};
            for (int q = 0; q < 3; q++)
                worst = fmax(worst, fabs(got[q] - want[q]) / (fabs(want[q]) + 1e-6));
        }
    printf("  SwiGLU forward and backward: worst relative error %.2e\n", worst);
    assert_true(worst < 2e-6);

    int V = 5000; /* several chunks and a tail */
    float *z = randv(V), *z0 = malloc(V * 4);
    for (int v = 0; v < V; v++) z[v] *= 4, z0[v] = z[v];
    double mx = -1e300, s = 0;
    for (int v = 0; v < V; v++) mx = z0[v] > mx ? z0[v] : mx;
    for (int v = 0; v < V; v++) s += expd(z0[v] - mx);
    double lse = kern_ce_row(z, V, 0.25f, 1), lse2 = kern_ce_row(z0, V, 1, 0);
    printf("  cross-entropy row: lse %.9f vs %.9f (double)\n", lse, mx + log(s));
    assert_true(fabs(lse - (mx + log(s))) < 1e-6 && fabs(lse2 - lse) < 1e-12);
    worst = 0;
    for (int v = 0; v < V; v++) {
        double want = 0.25 * expd(z0[v] - mx) / s;
        worst = fmax(worst, fabs(z[v] - want) / want);
    }
    printf("  cross-entropy row softmax: worst relative error %.2e\n", worst);
    assert_true(worst < 2e-6);
    free(S), free(S0), free(h13), free(act), free(g), free(h0), free(h13b), free(act2), free(z), free(z0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_matches_double_on_every_transpose_and_tail),
        cmocka_unit_test(test_the_kernel_sets_agree_bit_for_bit),
        cmocka_unit_test(test_splits_and_modes_give_the_same_bits),
        cmocka_unit_test(test_top_level_products_split_over_m_match_double),
        cmocka_unit_test(test_16_bit_b_is_the_product_of_the_widened_b),
        cmocka_unit_test(test_short_products_and_transposes),
        cmocka_unit_test(test_softmax_swiglu_and_cross_entropy_match_double),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
