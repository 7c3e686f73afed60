/* kern: which kernel set runs (model/kern.h). */
#include "model/kern.h"

#include "common/half.h"

#include <cpuid.h>
#include <math.h>
#include <stdint.h>

#include <stdlib.h>
#include <string.h>
#include <strings.h>

void kern512_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const void *B, int ldb,
                  int bdt, float beta, float *C, int ldc, float *pack);
void kern256_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const void *B, int ldb,
                  int bdt, float beta, float *C, int ldc, float *pack);

void kern512_mm(int M, int N, int K, float alpha, const float *A, long rsa, long csa, const float *B, long ldb,
                float beta, float *C, long ldc);
void kern256_mm(int M, int N, int K, float alpha, const float *A, long rsa, long csa, const float *B, long ldb,
                float beta, float *C, long ldc);
void kern512_transpose(float *dst, long ldd, const float *src, long lds, int rows, int cols);
void kern256_transpose(float *dst, long ldd, const float *src, long lds, int rows, int cols);
void kern512_copy_rows(float *dst, long ldd, const float *src, long lds, int rows, int cols);
void kern256_copy_rows(float *dst, long ldd, const float *src, long lds, int rows, int cols);

void kern512_attn_block_fwd(float *S, long ld, int m, int nk, const int *lo, const int *hi, const float *mprev,
                            float *mnew, float *sum);
void kern256_attn_block_fwd(float *S, long ld, int m, int nk, const int *lo, const int *hi, const float *mprev,
                            float *mnew, float *sum);
void kern512_attn_block_bwd(float *P, float *dS, long ld, int m, int nk, const int *lo, const int *hi,
                            const float *lse, const float *D);
void kern256_attn_block_bwd(float *P, float *dS, long ld, int m, int nk, const int *lo, const int *hi,
                            const float *lse, const float *D);

void kern512_swiglu(float *act, const float *h13, int rows, int F);
void kern256_swiglu(float *act, const float *h13, int rows, int F);
void kern512_swiglu_backward(float *act, float *h13, const float *g, const float *w, int rows, int F);
void kern256_swiglu_backward(float *act, float *h13, const float *g, const float *w, int rows, int F);
double kern512_ce_row(float *z, int n, float scale, int grad);
double kern256_ce_row(float *z, int n, float scale, int grad);

/* F16C (CPUID leaf 1, ECX bit 29): __builtin_cpu_supports knows it in GCC, not in clang 14 */
static int has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

static int cpu_isa(void)
{
    __builtin_cpu_init();
    /* libgcc also checks that the OS saves the wider registers (XCR0) */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return KERN_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c())
        return KERN_AVX2;
    return KERN_NONE;
}

int kern_isa(void)
{
    static int isa = -1; /* racy first call: every thread computes the same value */
    if (isa >= 0) return isa;
    int best = cpu_isa(), want = best;
    const char *e = getenv("MOET_ISA");
    if (e && !strcasecmp(e, "avx2")) want = KERN_AVX2;
    else if (e && !strcasecmp(e, "none")) want = KERN_NONE;
    isa = want > best ? best : want;
    return isa;
}

const char *kern_isa_name(int isa)
{
    return isa == KERN_AVX512 ? "AVX-512" : isa == KERN_AVX2 ? "AVX2" : "none";
}

/* the largest packed block of B (NC columns, a multiple of every set's panel, by KQ deep) and of A (MC rows, rounded up to a tile, by KQ) */
size_t kern_pack_floats(void) { return (size_t)(512 + 192 + 24) * 320; }

void kern_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const void *B, int ldb,
               int bdt, float beta, float *C, int ldc, float *pack)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0 ? 0 : beta * C[(size_t)i * ldc + j];
        return;
    }
    if (kern_isa() == KERN_NONE) { /* never chosen by the policy; plain loops to stay correct */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float acc = 0;
                for (int k = 0; k < K; k++) {
                    float a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                    size_t o = tb ? (size_t)j * ldb + k : (size_t)k * ldb + j;
                    float b = bdt == KERN_F32 ? ((const float *)B)[o] : bdt == KERN_BF16
                              ? half_bf16_to_f32(((const uint16_t *)B)[o]) : half_f16_to_f32(((const uint16_t *)B)[o]);
                    acc = fmaf(a, b, acc);
                }
                float *c = C + (size_t)i * ldc + j;
                *c = beta == 0 ? alpha * acc : beta * *c + alpha * acc;
            }
        return;
    }
    if (kern_isa() == KERN_AVX512) kern512_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, bdt, beta, C, ldc, pack);
    else kern256_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, bdt, beta, C, ldc, pack);
}

void kern_mm(int M, int N, int K, float alpha, const float *A, long rsa, long csa, const float *B, long ldb, float beta,
             float *C, long ldc)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || kern_isa() == KERN_NONE) { /* plain loops (K = 0: C = beta C) */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float acc = 0;
                for (int k = 0; k < K; k++) acc = fmaf(A[i * rsa + k * csa], B[k * ldb + j], acc);
                float *c = C + i * ldc + j;
                *c = beta == 0 ? alpha * acc : beta * *c + alpha * acc;
            }
        return;
    }
    if (kern_isa() == KERN_AVX512) kern512_mm(M, N, K, alpha, A, rsa, csa, B, ldb, beta, C, ldc);
    else kern256_mm(M, N, K, alpha, A, rsa, csa, B, ldb, beta, C, ldc);
}

void kern_transpose(float *dst, long ldd, const float *src, long lds, int rows, int cols)
{
    if (kern_isa() == KERN_AVX512) kern512_transpose(dst, ldd, src, lds, rows, cols);
    else if (kern_isa() == KERN_AVX2) kern256_transpose(dst, ldd, src, lds, rows, cols);
    else
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) dst[c * ldd + r] = src[r * lds + c];
}

void kern_copy_rows(float *dst, long ldd, const float *src, long lds, int rows, int cols)
{
    if (kern_isa() == KERN_AVX512) kern512_copy_rows(dst, ldd, src, lds, rows, cols);
    else if (kern_isa() == KERN_AVX2) kern256_copy_rows(dst, ldd, src, lds, rows, cols);
    else
        for (int r = 0; r < rows; r++) memcpy(dst + r * ldd, src + r * lds, (size_t)cols * sizeof(float));
}

/* plain C of the block passes (no AVX2): the same exp as the vector code */
static float exp1(float x)
{
    float c = x > -87.33654f ? x : -87.33654f;
    c = c < 88.0f ? c : 88.0f;
    float n = rintf(c * 1.44269504088896341f);
    float r = fmaf(n, -0.693145751953125f, c);
    r = fmaf(n, -1.42860682030941723212e-6f, r);
    float p = 1.0f / 5040.0f;
    p = fmaf(p, r, 1.0f / 720.0f);
    p = fmaf(p, r, 1.0f / 120.0f);
    p = fmaf(p, r, 1.0f / 24.0f);
    p = fmaf(p, r, 1.0f / 6.0f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    return x == x ? ldexpf(p, (int)n) : x;
}

void kern_attn_block_fwd(float *S, long ld, int m, int nk, const int *lo, const int *hi, const float *mprev,
                         float *mnew, float *sum)
{
    if (kern_isa() == KERN_AVX512) kern512_attn_block_fwd(S, ld, m, nk, lo, hi, mprev, mnew, sum);
    else if (kern_isa() == KERN_AVX2) kern256_attn_block_fwd(S, ld, m, nk, lo, hi, mprev, mnew, sum);
    else
        for (int i = 0; i < m; i++) {
            float *s = S + i * ld, mx = mprev[i], t = 0;
            for (int j = lo[i] > 0 ? lo[i] : 0; j <= hi[i] && j < nk; j++) mx = s[j] > mx ? s[j] : mx;
            for (int j = 0; j < nk; j++) t += s[j] = j >= lo[i] && j <= hi[i] ? exp1(s[j] - mx) : 0;
            mnew[i] = mx;
            sum[i] = t;
        }
}

void kern_attn_block_bwd(float *P, float *dS, long ld, int m, int nk, const int *lo, const int *hi, const float *lse,
                         const float *D)
{
    if (kern_isa() == KERN_AVX512) kern512_attn_block_bwd(P, dS, ld, m, nk, lo, hi, lse, D);
    else if (kern_isa() == KERN_AVX2) kern256_attn_block_bwd(P, dS, ld, m, nk, lo, hi, lse, D);
    else
        for (int i = 0; i < m; i++)
            for (int j = 0; j < nk; j++) {
                float *p = P + i * ld + j, *ds = dS + i * ld + j;
                *p = j >= lo[i] && j <= hi[i] ? exp1(*p - lse[i]) : 0;
                *ds = *p * (*ds - D[i]);
            }
}

void kern_swiglu(float *act, const float *h13, int rows, int F)
{
    if (kern_isa() == KERN_AVX512) kern512_swiglu(act, h13, rows, F);
    else if (kern_isa() == KERN_AVX2) kern256_swiglu(act, h13, rows, F);
    else
        for (int r = 0; r < rows; r++)
            for (int f = 0; f < F; f++) {
                float x = h13[(size_t)r * 2 * F + f];
                act[(size_t)r * F + f] = x / (1.0f + exp1(-x)) * h13[(size_t)r * 2 * F + F + f];
            }
}

void kern_swiglu_backward(float *act, float *h13, const float *g, const float *w, int rows, int F)
{
    if (kern_isa() == KERN_AVX512) kern512_swiglu_backward(act, h13, g, w, rows, F);
    else if (kern_isa() == KERN_AVX2) kern256_swiglu_backward(act, h13, g, w, rows, F);
    else
        for (int r = 0; r < rows; r++)
            for (int f = 0; f < F; f++) {
                float *h1 = h13 + (size_t)r * 2 * F + f, *h3 = h1 + F, x1 = *h1, x3 = *h3;
                float s = 1.0f / (1.0f + exp1(-x1)), d = g[(size_t)r * F + f] * (w ? w[r] : 1.0f);
                if (act) act[(size_t)r * F + f] = x1 * s * x3;
                *h1 = d * x3 * s * (1.0f + x1 * (1.0f - s));
                *h3 = d * x1 * s;
            }
}

double kern_ce_row(float *z, int n, float scale, int grad)
{
    if (kern_isa() == KERN_AVX512) return kern512_ce_row(z, n, scale, grad);
    if (kern_isa() == KERN_AVX2) return kern256_ce_row(z, n, scale, grad);
    float mx = -INFINITY;
    for (int v = 0; v < n; v++) mx = z[v] > mx ? z[v] : mx;
    double s = 0;
    for (int v = 0; v < n; v++) s += exp1(z[v] - mx);
    if (grad)
        for (int v = 0; v < n; v++) z[v] = (float)(scale * exp1(z[v] - mx) / s);
    return mx + log(s);
}
