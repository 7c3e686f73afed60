/* gemm: every matrix product of the model, and which kernels run it.
 *
 * Two kernel sets: OpenBLAS (threaded, packs both operands: the default and the fallback)
 * and moet's own single-threaded kernels (model/kern.h: AVX-512 or AVX2, operands read in
 * place or packed one block at a time). The policy, by shape and by where the call is made,
 * is what whole training steps measured (tests/bench/ab_bench.sh, interleaved; `make bench`
 * prints the single-call table of tests/bench/gemm_bench.c per machine):
 *   - inside a parallel region (the experts side by side, a LoRA site of one expert) an fp32
 *     product runs on OpenBLAS single-threaded: in isolation moet's kernels win some expert
 *     shapes (gemm_bench), but whole steps ran 4-7% slower with them there (2026-12-02, tiny
 *     and small); a 16-bit B goes to moet's kernels, which widen it while packing;
 *   - at the top level, skinny products (a side of at most 32: LoRA's rank, the router) run
 *     on moet's kernels with M or N split over the threads (small + LoRA: 1.16x against
 *     1.07x with OpenBLAS there, same rounds), everything else on OpenBLAS: split over M
 *     into one single-threaded call per thread where B is narrow or small (blas_parts), else
 *     with OpenBLAS's own threads.
 * The attention tiles (model/attn.c) call moet's kernels directly.
 * MOET_GEMM=blas or =own forces one set everywhere (the golden tests run both); MOET_ISA
 * picks the own kernels' ISA. Results differ between the sets only in rounding: moet's
 * kernels sum each element's k in order, in k blocks that do not depend on threads.
 *
 * Weights of any store (model_mat): fp32 matrices go straight to the kernels; bf16 / f16 ones
 * are widened by moet's kernels while they pack B (no fp32 copy at all), or, for OpenBLAS, a
 * block of whole rows at a time into an fp32 tile and the block's product runs on it, so a
 * frozen 16-bit base never exists in fp32 as a whole.
 *
 * Tiles are blocks of rows of W (N x K row-major): contiguous to read, and the same blocks
 * serve both directions. Y = X W^T is exact per block (each output column is one block's
 * row); dX = dY W sums over the blocks in order (the fp32 path sums over N inside one GEMM,
 * so the two agree to rounding, ~1e-7 relative). Outside a parallel region one tile spans
 * every thread's share and both the widening and the GEMM are threaded; inside one (the
 * experts run side by side) each thread widens into its own tile and runs single-threaded
 * GEMMs. Tile size: TILE_BYTES per thread, at least MIN_ROWS rows (a block much thinner
 * than that would repack X for little work). */
#include "common/err.h"
#include "common/half.h"
#include "common/par.h"
#include "model/kern.h"
#include "model/layers.h"
#include "model/model.h"

#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* ---- the policy */
enum { SET_AUTO, SET_BLAS, SET_OWN };

static int kernel_set(void)
{
    static int set = -1; /* racy first call: every thread computes the same value */
    if (set >= 0) return set;
    const char *e = getenv("MOET_GEMM");
    int s = e && !strcmp(e, "blas") ? SET_BLAS : e && !strcmp(e, "own") ? SET_OWN : SET_AUTO;
    set = kern_isa() == KERN_NONE ? SET_BLAS : s;
    return set;
}

/* Per-thread pack buffers of the own kernels, reserved before any step (model_gemm_reserve):
 * indexed by the calling thread's number in the one active parallel region (moet never
 * nests active regions). A thread without one (no reservation yet) gets OpenBLAS. */
static float *pool;
static int pool_threads;

int model_gemm_reserve(char *err)
{
    int T = omp_get_max_threads();
    if (T <= pool_threads) return 0;
    float *p = aligned_alloc(64, kern_pack_floats() * sizeof(float) * (size_t)T);
    if (!p) return err_set(err, "out of memory for the GEMM pack buffers");
    free(pool); /* set up before any step: nobody is using it */
    pool = p;
    pool_threads = T;
    return 0;
}

static float *my_pack(void)
{
    int t = 0;
    for (int l = omp_get_level(); l > 0; l--)
        if (omp_get_team_size(l) > 1) {
            t = omp_get_ancestor_thread_num(l);
            break;
        }
    return t < pool_threads ? pool + (size_t)t * kern_pack_floats() : NULL;
}

/* A side of at most 32, except a transposed A with N > 32 (LoRA's dA = dxa^T x: OpenBLAS 103
 * GFLOP/s against the own kernels' 78 in gemm_bench, 2026-12-02; the own kernels lead xa B^T
 * 182 vs 92 and dB 142 vs 107, and are level on x A^T and the router) */
static int skinny(int ta, int M, int N, int K) { return (M <= 32 || N <= 32 || K <= 32) && !(ta && N > 32); }

/* len split over T threads in chunks of whole units (a kernel's tile or panel); the last
 * part is the rest, (len + chunk - 1) / chunk parts in all */
static int split_chunk(int len, int T, int unit)
{
    int chunk = (len + T - 1) / T;
    return (chunk + unit - 1) / unit * unit;
}

/* M or N over the threads, each running the own kernel on its part (chunks of whole tiles). */
static void own_split(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const void *B,
                      int ldb, int bdt, float beta, float *C, int ldc)
{
    int T = omp_get_max_threads(), esz = bdt == KERN_F32 ? 4 : 2, by_m = M >= N;
    int len = by_m ? M : N, chunk = split_chunk(len, T, by_m ? 24 : 32), parts = (len + chunk - 1) / chunk;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < parts; t++) {
        int o = t * chunk, n = len - o < chunk ? len - o : chunk;
        if (by_m)
            kern_gemm(ta, tb, n, N, K, alpha, ta ? A + o : A + (size_t)o * lda, lda, B, ldb, bdt, beta,
                      C + (size_t)o * ldc, ldc, my_pack());
        else
            kern_gemm(ta, tb, M, n, K, alpha, A, lda, (const char *)B + (tb ? (size_t)o * ldb : (size_t)o) * esz,
                      ldb, bdt, beta, C + o, ldc, my_pack());
    }
}

/* Where the own kernels run this product: 0 not at all, 1 single-threaded here, 2 split over
 * the threads. A 16-bit B always takes them where a call is single-threaded (the alternative
 * is widening into a tile first). */
static int pick(int inside, int ta, int tb, int M, int N, int K, int ldb, int bdt)
{
    int set = kernel_set();
    if (set == SET_BLAS) return 0;
    if (inside) return set == SET_OWN || bdt != KERN_F32;
    return set == SET_OWN || (bdt == KERN_F32 && skinny(ta, M, N, K)) ? 2 : 0;
}

static int own_mode(int ta, int tb, int M, int N, int K, int ldb, int bdt)
{
    if (!pool_threads) return 0;
    int inside = par_inline();
    if (inside ? !my_pack() : omp_get_max_threads() > pool_threads) return 0; /* a thread without a buffer */
    return pick(inside, ta, tb, M, N, K, ldb, bdt);
}

int model_gemm_uses_own(int inside, int ta, int tb, int M, int N, int K, int ldb, int bf16)
{
    return pick(inside, ta, tb, M, N, K, ldb, bf16 ? KERN_BF16 : KERN_F32) != 0;
}

static void own_run(int mode, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                    const void *B, int ldb, int bdt, float beta, float *C, int ldc)
{
    if (mode == 1) kern_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, bdt, beta, C, ldc, my_pack());
    else own_split(ta, tb, M, N, K, alpha, A, lda, B, ldb, bdt, beta, C, ldc);
}

/* Threads for an OpenBLAS product at the top level split over M, each part a single-threaded
 * OpenBLAS call (OpenBLAS's OpenMP build runs one thread inside a parallel region), instead of
 * OpenBLAS's own threading, which shares one packed B between its threads and synchronises on
 * it. Chosen by measurement (2 threads, AVX-512 EPYC, single calls, best of several): with a
 * narrow B the split wins — N = 256: +12-29% (tiny's projections and lm_head dW / dX), N = 512:
 * +4-14% (small's, and its lm_head dX with K = 32000), N = 1536: +5% — and so with a small B
 * of any width (tiny's logits, K = 256, N = 4096: +5%); with a wide, deep B each thread
 * packing all of it costs more than the sharing does (K x N = 2048 x 4096 and up: -2 to -7%;
 * small's logits, 512 x 32000: -2%). In whole steps: tiny's attention -9%, its lm_head + loss
 * -6%; small within noise. Measured on 2 threads only: with more than 4 OpenBLAS's own
 * threading stays. 0: no split (inside a region, one thread, few rows, MOET_GEMM=blas). */
static int blas_parts(int M, int N, int K)
{
    int T = omp_get_max_threads();
    if (kernel_set() != SET_AUTO || par_inline() || T > 4 || M < 64 * T) return 0;
    return N <= 1536 || (size_t)K * N <= ((size_t)2 << 20) ? T : 0;
}

int model_gemm_split_parts(int M, int N, int K) { return blas_parts(M, N, K); }

static void blas_split(int parts, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc)
{
    int chunk = split_chunk(M, parts, 16); /* whole 16-row panels of OpenBLAS's kernel */
    parts = (M + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) num_threads(parts)
    for (int t = 0; t < parts; t++) {
        int o = t * chunk, n = M - o < chunk ? M - o : chunk;
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, n, N, K, alpha,
                    ta ? A + o : A + (size_t)o * lda, lda, B, ldb, beta, C + (size_t)o * ldc, ldc);
    }
}

void model_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* empty sum: C = beta * C, which BLAS may skip */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0 ? 0 : beta * C[(size_t)i * ldc + j];
        return;
    }
    int mode = own_mode(transA, transB, M, N, K, ldb, KERN_F32);
    if (mode) {
        own_run(mode, transA, transB, M, N, K, alpha, A, lda, B, ldb, KERN_F32, beta, C, ldc);
        return;
    }
    int parts = blas_parts(M, N, K);
    if (parts) {
        blas_split(parts, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, lda, B, ldb, beta, C, ldc);
}

const char *model_gemm_describe(void)
{
    static char buf[224];
    int set = kernel_set();
    if (set == SET_BLAS)
        snprintf(buf, sizeof buf, "OpenBLAS for every product%s", kern_isa() == KERN_NONE ? " (no AVX2: no own kernels)" : " (MOET_GEMM=blas)");
    else
        snprintf(buf, sizeof buf, "moet %s kernels for %s", kern_isa_name(kern_isa()),
                 set == SET_OWN ? "every product (MOET_GEMM=own)"
                                : "skinny products and 16-bit weights inside parallel regions, OpenBLAS for the rest "
                                  "(top-level ones with a narrow B split over M, one call per thread)");
    return buf;
}

enum { TILE_BYTES = 16 << 20, MIN_ROWS = 64 };

/* MOET_TILE_BYTES (tests only) shrinks the tiles, so small models take every path of the
 * blocking: several blocks per matrix, blocks that cross the parts of a stacked matrix. */
static size_t tile_floats_min(void)
{
    const char *e = getenv("MOET_TILE_BYTES");
    long v = e ? atol(e) : 0;
    return (v > 0 ? (size_t)v : (size_t)TILE_BYTES) / sizeof(float);
}

/* Rows of a tile of floats floats for a K-wide matrix, capped at rows. */
static int block_rows(size_t floats, int K, int rows)
{
    size_t nb = floats / (size_t)K;
    if (nb > (size_t)rows) nb = (size_t)rows;
    if (nb > 16) nb &= ~(size_t)15;
    return nb < 1 ? 1 : (int)nb;
}

/* need = max(need, a tile for W, of which at most rows_cap rows are widened at once) */
static void mat_max_rows(const model_mat *w, size_t rows_cap, size_t *need)
{
    if (w->dtype == MODEL_F32 || w->cols <= 0) return;
    size_t f = (size_t)w->cols * (getenv("MOET_TILE_BYTES") ? 1 : MIN_ROWS);
    if (f < tile_floats_min()) f = tile_floats_min();
    size_t rows = (size_t)model_mat_rows(w), all = (size_t)w->cols * (rows < rows_cap ? rows : rows_cap);
    if (f > all) f = all;
    if (f > *need) *need = f;
}

static void mat_max(const model_mat *w, size_t *need) { mat_max_rows(w, SIZE_MAX, need); }

/* The embedding is read a row at a time (no tile); lm_head a block of MODEL_HEAD_VB rows at a
 * time in training and evaluation (model/forward.c head_frozen), and by whatever the tile
 * holds where all logits are wanted (moet forward, generate's prefill). */
size_t model_gemm_tile_floats(const model *m)
{
    size_t need = 1;
    const model_config *c = &m->c;
    mat_max_rows(&m->lm_head, MODEL_HEAD_VB, &need);
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *L = &m->layers[l];
        mat_max(&L->wqkv, &need);
        mat_max(&L->wo, &need);
        mat_max(&L->sw13, &need);
        mat_max(&L->sw2, &need);
        if (L->w13) mat_max(&L->w13[0], &need), mat_max(&L->w2[0], &need);
    }
    return need;
}

/* The part of W holding row *r; *r becomes the row inside that part. */
static int part_of(const model_mat *W, int *r)
{
    int j = 0;
    while (*r >= W->rows[j]) *r -= W->rows[j++];
    return j;
}

/* Rows [r0, r1) of W widened into dst (ld = K), parts crossed as needed; threaded over rows
 * when asked and not already inside a parallel region. */
static void widen_row(float *dst, const model_mat *W, int r)
{
    int j = part_of(W, &r), K = W->cols;
    const unsigned char *src = (const unsigned char *)W->p[j] + (size_t)r * K * 2;
    if (W->dtype == MODEL_BF16) half_widen_bf16(dst, src, (size_t)K);
    else half_widen_f16(dst, src, (size_t)K);
}

static void widen_rows(float *dst, const model_mat *W, int r0, int r1, int threaded)
{
    size_t K = (size_t)W->cols;
    if (threaded) PAR_FOR(schedule(static), r, r0, r1, widen_row(dst + (size_t)(r - r0) * K, W, r););
    else
        for (int r = r0; r < r1; r++) widen_row(dst + (size_t)(r - r0) * K, W, r);
}

void model_mat_row(const model_mat *W, int r, float *dst)
{
    if (W->dtype == MODEL_F32) {
        int j = part_of(W, &r);
        memcpy(dst, (const float *)W->p[j] + (size_t)r * W->cols, (size_t)W->cols * sizeof(float));
        return;
    }
    widen_rows(dst, W, r, r + 1, 0);
}

/* This caller's tile and its size: one thread's inside a parallel region, all of them outside. */
static float *my_tile(const model_tiles *T, size_t *floats, int *threaded)
{
    *threaded = omp_get_level() == 0;
    if (*threaded) {
        *floats = T->floats * (size_t)T->threads;
        return T->p;
    }
    int t = omp_get_thread_num();
    *floats = T->floats;
    return T->p + (size_t)(t < T->threads ? t : 0) * T->floats; /* a pool sized for max threads */
}

const float *model_mat_block(const model_tiles *T, const model_mat *W, int r0, int want, int *r1)
{
    int K = W->cols, N = model_mat_rows(W);
    if (want > N - r0) want = N - r0;
    if (W->dtype == MODEL_F32) { /* in place, within r0's part */
        int r = r0, j = part_of(W, &r), left = W->rows[j] - r;
        *r1 = r0 + (want < left ? want : left);
        return (const float *)W->p[j] + (size_t)r * K;
    }
    size_t floats;
    int threaded;
    float *tile = my_tile(T, &floats, &threaded);
    int nb = block_rows(floats, K, want);
    *r1 = r0 + nb;
    widen_rows(tile, W, r0, *r1, threaded);
    return tile;
}

/* Y (M, ldy) columns [0, r1-r0) = alpha X W[r0:r1]^T + beta Y (rows r0..r1 of W) */
static void mm_xwt_rows(const model_tiles *T, int M, float alpha, const float *X, int ldx, const model_mat *W, int r0,
                        int r1, float beta, float *Y, int ldy)
{
    int K = W->cols;
    if (M <= 0 || r1 <= r0) return;
    int kd = W->dtype == MODEL_BF16 ? KERN_BF16 : KERN_F16;
    int mode = W->dtype == MODEL_F32 ? 0 : own_mode(0, 1, M, r1 - r0, K, K, kd);
    if (W->dtype == MODEL_F32 || mode) { /* part by part; the own kernels widen W while they pack it */
        for (int j = 0, g0 = 0; j < W->n; g0 += W->rows[j++]) {
            int a = r0 > g0 ? r0 : g0, b = r1 < g0 + W->rows[j] ? r1 : g0 + W->rows[j];
            if (a >= b) continue;
            if (mode)
                own_run(mode, 0, 1, M, b - a, K, alpha, X, ldx, (const uint16_t *)W->p[j] + (size_t)(a - g0) * K, K,
                        kd, beta, Y + (a - r0), ldy);
            else
                model_gemm(0, 1, M, b - a, K, alpha, X, ldx, (const float *)W->p[j] + (size_t)(a - g0) * K, K, beta,
                           Y + (a - r0), ldy);
        }
        return;
    }
    size_t floats;
    int threaded;
    float *tile = my_tile(T, &floats, &threaded);
    int nb = block_rows(floats, K, r1 - r0);
    for (int b0 = r0; b0 < r1; b0 += nb) {
        int b1 = b0 + nb < r1 ? b0 + nb : r1;
        widen_rows(tile, W, b0, b1, threaded);
        model_gemm(0, 1, M, b1 - b0, K, alpha, X, ldx, tile, K, beta, Y + (b0 - r0), ldy);
    }
}

void model_mm_xwt(const model_tiles *T, int M, float alpha, const float *X, int ldx, const model_mat *W, float beta,
                  float *Y, int ldy)
{
    mm_xwt_rows(T, M, alpha, X, ldx, W, 0, model_mat_rows(W), beta, Y, ldy);
}

/* dX (M, lddx) columns [0, c1-c0) = alpha dY W[:, c0:c1] + beta dX */
static void mm_xw_cols(const model_tiles *T, int M, float alpha, const float *dY, int lddy, const model_mat *W, int c0,
                       int c1, float beta, float *dX, int lddx)
{
    int K = W->cols, N = model_mat_rows(W);
    if (M <= 0 || c1 <= c0) return;
    int kd = W->dtype == MODEL_BF16 ? KERN_BF16 : KERN_F16;
    int mode = W->dtype == MODEL_F32 ? 0 : own_mode(0, 0, M, c1 - c0, N, K, kd);
    if (W->dtype == MODEL_F32 || mode) { /* the parts split the sum: the first sets, the rest add */
        for (int j = 0, g0 = 0; j < W->n; g0 += W->rows[j++]) {
            if (mode)
                own_run(mode, 0, 0, M, c1 - c0, W->rows[j], alpha, dY + g0, lddy, (const uint16_t *)W->p[j] + c0, K, kd,
                        j ? 1.0f : beta, dX, lddx);
            else
                model_gemm(0, 0, M, c1 - c0, W->rows[j], alpha, dY + g0, lddy, (const float *)W->p[j] + c0, K,
                           j ? 1.0f : beta, dX, lddx);
        }
        return;
    }
    size_t floats;
    int threaded;
    float *tile = my_tile(T, &floats, &threaded);
    int nb = block_rows(floats, K, N);
    for (int r0 = 0; r0 < N; r0 += nb) {
        int r1 = r0 + nb < N ? r0 + nb : N;
        widen_rows(tile, W, r0, r1, threaded);
        model_gemm(0, 0, M, c1 - c0, r1 - r0, alpha, dY + r0, lddy, tile + c0, K, r0 ? 1.0f : beta, dX, lddx);
    }
}

void model_mm_xw(const model_tiles *T, int M, float alpha, const float *dY, int lddy, const model_mat *W, float beta,
                 float *dX, int lddx)
{
    mm_xw_cols(T, M, alpha, dY, lddy, W, 0, W->cols, beta, dX, lddx);
}
