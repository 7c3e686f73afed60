/* gemm_bench: the GEMM libraries against moet's own kernels on the products moet runs
 * single-threaded (inside its parallel regions: experts side by side, LoRA sites, attention
 * tiles) and the skinny ones (LoRA rank 16, the router), one thread each, fp32, row-major
 * C (M, N) = op(A) op(B) as model_gemm sees them. This is the measurement behind the policy in
 * model/gemm.c and the library choice in the README (Speed).
 *
 * Engines, all in one process and interleaved shape by shape (the machine is shared: best of
 * several windows, and every ratio is taken in the same minute):
 *   openblas  cblas_sgemm (the OpenMP build, 1 thread)
 *   blis      bli_sgemm (Debian's BLIS 0.9, its typed API with row/column strides)
 *   dnnl      dnnl_sgemm (oneDNN 2.6, row-major)
 *   xsmm      LIBXSMM 1.17 JIT kernel from libxsmm_smmdispatch (column-major: the row-major
 *             product is computed as C^T = op(B)^T op(A)^T); "-" where it gives no kernel
 *   own       kern_gemm (model/kern.h), fp32 B; and "own bf16" with B stored as bf16
 *             (widened while packed: the 16-bit base of a LoRA run; the libraries need fp32)
 *
 * An engine whose library is missing at build time (HAVE_BLIS, HAVE_DNNL, HAVE_XSMM) shows "-".
 *
 * usage: gemm_bench [ms per window, default 30]; OMP_NUM_THREADS=1 expected (bench.sh sets it).
 *        gemm_bench top [ms]: the products moet makes at the top level (attention projections,
 *        lm_head; all threads): OpenBLAS with its own threads against model_gemm as moet calls
 *        it (split over M into one single-threaded OpenBLAS call per thread where its policy
 *        says so), and which of the two the policy picks.
 * stdout: one line per shape, GFLOP/s per engine, the fastest, and what moet's policy runs
 * for an fp32 B (model_gemm_uses_own, called as moet calls it: inside a parallel region for the
 * experts, at the top level for LoRA and the router; attention tiles always on the own kernels). */
#include <cblas.h>
#include <dlfcn.h>
#ifdef HAVE_XSMM
#include <libxsmm.h>
#endif
#ifdef HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "model/kern.h"
#include "model/layers.h"

#ifdef HAVE_BLIS
/* BLIS's typed API (blis.h clashes with OpenBLAS's cblas.h; these are its LP64 types) */
void bli_sgemm(int ta, int tb, int64_t m, int64_t n, int64_t k, const float *alpha, const float *a, int64_t rsa,
               int64_t csa, const float *b, int64_t rsb, int64_t csb, const float *beta, float *c, int64_t rsc,
               int64_t csc);
void bli_thread_set_num_threads(int64_t n);
const char *bli_arch_string(int id);
int bli_arch_query_id(void);
enum { BLI_NO_TRANS = 0, BLI_TRANS = 8 };
#endif

enum { INSIDE, TOP, TILE }; /* where moet makes the call: a parallel region, the top level, attn.c */
typedef struct {
    const char *family;
    int ta, tb, M, N, K, where;
} shape;

/* whole experts: tiny D 256, F 512, 512 rows per expert; small D 512, F 1408, 512 rows; qwen3
 * (30B-A3B) D 2048, F 768, 64 rows per expert; lora: r 16 on a 2048-token batch of D 512 (the
 * attention projections' adapters, top level); attn: a 48-query tile, 64 keys, head_dim 32/128 */
static const shape shapes[] = {
    {"tiny expert x W13^T", 0, 1, 512, 1024, 256, INSIDE},
    {"tiny expert act W2^T", 0, 1, 512, 256, 512, INSIDE},
    {"tiny expert dY W2", 0, 0, 512, 512, 256, INSIDE},
    {"tiny expert dW13 = dH^T x", 1, 0, 1024, 256, 512, INSIDE},
    {"small expert x W13^T", 0, 1, 512, 2816, 512, INSIDE},
    {"small expert act W2^T", 0, 1, 512, 512, 1408, INSIDE},
    {"small expert dY W2", 0, 0, 512, 1408, 512, INSIDE},
    {"small expert dW13 = dH^T x", 1, 0, 2816, 512, 512, INSIDE},
    {"qwen3 expert x W13^T", 0, 1, 64, 1536, 2048, INSIDE},
    {"qwen3 expert act W2^T", 0, 1, 64, 2048, 768, INSIDE},
    {"qwen3 expert dY W2", 0, 0, 64, 768, 2048, INSIDE},
    {"qwen3 expert dH W13", 0, 0, 64, 2048, 1536, INSIDE},
    {"lora x A^T (r 16)", 0, 1, 2048, 16, 512, TOP},
    {"lora xa B^T (r 16)", 0, 1, 2048, 512, 16, TOP},
    {"lora dB = dY^T xa", 1, 0, 512, 16, 2048, TOP},
    {"lora dA = dxa^T x", 1, 0, 16, 512, 2048, TOP},
    {"router x Wg^T (8 experts)", 0, 1, 2048, 8, 512, TOP},
    {"attn tile Q K^T (hd 32)", 0, 0, 48, 64, 32, TILE},
    {"attn tile P V (hd 32)", 0, 0, 48, 32, 64, TILE},
    {"attn tile Q K^T (hd 128)", 0, 0, 48, 64, 128, TILE},
    {"attn tile P V (hd 128)", 0, 0, 48, 128, 64, TILE},
};
enum { NE = 6, MOET_GEMM = NE }; /* MOET_GEMM: model_gemm as moet calls it (the top table only) */
static const char *names[NE] = {"openblas", "blis", "dnnl", "xsmm", "own", "own-bf16"};

typedef struct {
    const shape *s;
    float *A, *B, *C, *pack;
    uint16_t *Bh;
    int lda, ldb;
#ifdef HAVE_XSMM
    libxsmm_smmfunction xk;
#endif
} job;

static int run(job *j, int e)
{
    const shape *s = j->s;
    switch (e) {
    case 0:
        cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans, s->M, s->N,
                    s->K, 1, j->A, j->lda, j->B, j->ldb, 0, j->C, s->N);
        return 1;
#ifdef HAVE_BLIS
    case 1: { /* row-major a(i,k) = A[i*lda + k]: rs lda, cs 1; transposed: rs 1, cs lda */
        float one = 1, zero = 0;
        bli_sgemm(s->ta ? BLI_TRANS : BLI_NO_TRANS, s->tb ? BLI_TRANS : BLI_NO_TRANS, s->M, s->N, s->K, &one, j->A,
                  j->lda, 1, j->B, j->ldb, 1, &zero, j->C, s->N, 1);
        return 1;
    }
#endif
#ifdef HAVE_DNNL
    case 2:
        return dnnl_sgemm(s->ta ? 'T' : 'N', s->tb ? 'T' : 'N', s->M, s->N, s->K, 1, j->A, j->lda, j->B, j->ldb, 0,
                          j->C, s->N) == dnnl_success;
#endif
#ifdef HAVE_XSMM
    case 3:
        if (!j->xk) return 0;
        j->xk(j->B, j->A, j->C); /* column-major C^T (N x M) = op(B)^T (N x K) op(A)^T (K x M) */
        return 1;
#endif
    case 4:
        kern_gemm(s->ta, s->tb, s->M, s->N, s->K, 1, j->A, j->lda, j->B, j->ldb, KERN_F32, 0, j->C, s->N, j->pack);
        return 1;
    case 5:
        kern_gemm(s->ta, s->tb, s->M, s->N, s->K, 1, j->A, j->lda, j->Bh, j->ldb, KERN_BF16, 0, j->C, s->N, j->pack);
        return 1;
    case MOET_GEMM:
        model_gemm(s->ta, s->tb, s->M, s->N, s->K, 1, j->A, j->lda, j->B, j->ldb, 0, j->C, s->N);
        return 1;
    default:
        return 0;
    }
}

/* GFLOP/s of the best window of ms milliseconds, 0 when the engine has no kernel */
static double measure(job *j, int e, double ms)
{
    if (!run(j, e)) return 0;
    double flops = 2.0 * j->s->M * j->s->N * j->s->K, best = 1e30;
    for (int w = 0; w < 3; w++) {
        int n = 0;
        double t0 = clock_seconds(), t;
        do {
            run(j, e);
            n++;
        } while ((t = clock_seconds() - t0) < ms * 1e-3);
        if (t / n < best) best = t / n;
    }
    return flops / best * 1e-9;
}

/* top-level products (tokens x out x in as model_gemm sees them): tiny (2048 tokens, D 256,
 * V 4096), small (2048 tokens, D 512, V 32000, a 1024-row lm_head chunk), and two of
 * Mixtral-size width (D 4096, a 1024-token batch) */
static const shape top_shapes[] = {
    {"tiny qkv X Wqkv^T", 0, 1, 2048, 512, 256, TOP},      {"tiny o_proj X Wo^T", 0, 1, 2048, 256, 256, TOP},
    {"tiny qkv dX = dY Wqkv", 0, 0, 2048, 256, 512, TOP},  {"tiny qkv dW = dY^T X", 1, 0, 512, 256, 2048, TOP},
    {"tiny logits X Wv^T", 0, 1, 2048, 4096, 256, TOP},    {"tiny lm_head dW", 1, 0, 4096, 256, 2048, TOP},
    {"tiny lm_head dX", 0, 0, 2048, 256, 4096, TOP},       {"small qkv X Wqkv^T", 0, 1, 2048, 1536, 512, TOP},
    {"small o_proj X Wo^T", 0, 1, 2048, 512, 512, TOP},    {"small qkv dX = dY Wqkv", 0, 0, 2048, 512, 1536, TOP},
    {"small qkv dW = dY^T X", 1, 0, 1536, 512, 2048, TOP}, {"small logits X Wv^T", 0, 1, 1024, 32000, 512, TOP},
    {"small lm_head dW", 1, 0, 32000, 512, 1024, TOP},     {"small lm_head dX", 0, 0, 1024, 512, 32000, TOP},
    {"D4096 qkv X Wqkv^T", 0, 1, 1024, 6144, 4096, TOP},   {"D4096 o_proj dX", 0, 0, 1024, 4096, 4096, TOP},
};

static int main_top(double ms)
{
    printf("gemm_bench top: %d threads, fp32, row-major C (M,N) = op(A) op(B); GFLOP/s, best of 3 windows of %.0f ms "
           "(%s kernels)\n", omp_get_max_threads(), ms, openblas_get_corename());
    printf("%-26s %2s %2s %5s %5s %5s %12s %12s %7s  %s\n", "product", "ta", "tb", "M", "N", "K", "openblas-mt",
           "moet", "ratio", "moet runs");
    for (size_t i = 0; i < sizeof top_shapes / sizeof *top_shapes; i++) {
        const shape *s = &top_shapes[i];
        size_t na = (size_t)s->M * s->K, nb = (size_t)s->K * s->N;
        job j = {.s = s, .lda = s->ta ? s->M : s->K, .ldb = s->tb ? s->K : s->N};
        j.A = aligned_alloc(64, na * 4 + 64), j.B = aligned_alloc(64, nb * 4 + 64);
        j.C = aligned_alloc(64, (size_t)s->M * s->N * 4 + 64);
        for (size_t k = 0; k < na; k++) j.A[k] = (float)((k * 7919) % 1000) / 1000 - 0.5f;
        for (size_t k = 0; k < nb; k++) j.B[k] = (float)((k * 104729) % 1000) / 1000 - 0.5f;
        double g0 = 0, g1 = 0;
        for (int r = 0; r < 2; r++) { /* interleaved: each engine's best of both rounds */
            double a = measure(&j, 0, ms), b = measure(&j, MOET_GEMM, ms); /* cblas_sgemm: OpenBLAS's threads */
            g0 = a > g0 ? a : g0, g1 = b > g1 ? b : g1;
        }
        int parts = model_gemm_split_parts(s->M, s->N, s->K);
        printf("%-26s %2d %2d %5d %5d %5d %12.1f %12.1f %6.2fx  ", s->family, s->ta, s->tb, s->M, s->N, s->K, g0, g1,
               g1 / g0);
        parts ? printf("split over M, %d calls\n", parts) : printf("openblas, its threads\n");
        free(j.A), free(j.B), free(j.C);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "top")) return main_top(argc > 2 ? atof(argv[2]) : 30);
    double ms = argc > 1 ? atof(argv[1]) : 30;
    const char *arch = "not built in";
#ifdef HAVE_BLIS
    bli_thread_set_num_threads(1);
    arch = bli_arch_string(bli_arch_query_id());
#endif
#ifdef HAVE_XSMM
    libxsmm_init();
#endif
    printf("gemm_bench: 1 thread, fp32, row-major C (M,N) = op(A) op(B); GFLOP/s, best of 3 windows of %.0f ms\n", ms);
    Dl_info di; /* BLIS exports a cblas_sgemm too: say whose this is */
    printf("own kernels: %s; BLIS kernels: %s; cblas_sgemm from %s (%s kernels)\n", kern_isa_name(kern_isa()), arch,
           dladdr((void *)cblas_sgemm, &di) && di.dli_fname ? di.dli_fname : "?", openblas_get_corename());
    printf("%-32s %2s %2s %5s %5s %5s", "product", "ta", "tb", "M", "N", "K");
    for (int e = 0; e < NE; e++) printf(" %9s", names[e]);
    printf("  %-8s %s\n", "fastest", "moet runs");
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const shape *s = &shapes[i];
        job j = {.s = s, .lda = s->ta ? s->M : s->K, .ldb = s->tb ? s->K : s->N};
        size_t na = (size_t)s->M * s->K, nb = (size_t)s->K * s->N;
        j.A = aligned_alloc(64, na * 4 + 64);
        j.B = aligned_alloc(64, nb * 4 + 64);
        j.Bh = aligned_alloc(64, nb * 2 + 64);
        j.C = aligned_alloc(64, (size_t)s->M * s->N * 4 + 64);
        j.pack = aligned_alloc(64, kern_pack_floats() * 4);
        for (size_t k = 0; k < na; k++) j.A[k] = (float)((k * 7919) % 1000) / 1000 - 0.5f;
        for (size_t k = 0; k < nb; k++) {
            j.B[k] = (float)((k * 104729) % 1000) / 1000 - 0.5f;
            union { float f; uint32_t u; } x = {.f = j.B[k]};
            j.Bh[k] = (uint16_t)(x.u >> 16);
        }
#ifdef HAVE_XSMM
        /* column-major view: m = N, n = M, k = K; a = B (op = tb), b = A (op = ta) */
        libxsmm_blasint m = s->N, n = s->M, k = s->K, la = j.ldb, lb = j.lda, lc = s->N;
        int flags = (s->tb ? LIBXSMM_GEMM_FLAG_TRANS_A : 0) | (s->ta ? LIBXSMM_GEMM_FLAG_TRANS_B : 0);
        float one = 1, zero = 0;
        j.xk = libxsmm_smmdispatch(m, n, k, &la, &lb, &lc, &one, &zero, &flags, NULL);
#endif
        double g[NE], best = 0;
        int bi = 0;
        for (int e = 0; e < NE; e++) {
            g[e] = measure(&j, e, ms);
            if (g[e] > best && e < 5) best = g[e], bi = e;
        }
        printf("%-32s %2d %2d %5d %5d %5d", s->family, s->ta, s->tb, s->M, s->N, s->K);
        for (int e = 0; e < NE; e++) g[e] > 0 ? printf(" %9.1f", g[e]) : printf(" %9s", "-");
        int own = s->where == TILE || model_gemm_uses_own(s->where == INSIDE, s->ta, s->tb, s->M, s->N, s->K, j.ldb, 0);
        printf("  %-8s %s\n", names[bi], own ? "own" : "openblas");
        free(j.A), free(j.B), free(j.Bh), free(j.C), free(j.pack);
    }
#ifdef HAVE_XSMM
    libxsmm_finalize();
#endif
    return 0;
}
