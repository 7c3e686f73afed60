/* gemm: products with a weight matrix of any store (model_mat). fp32 matrices go straight to
 * OpenBLAS; bf16 / f16 ones are widened, a block of whole rows at a time, into an fp32 tile
 * and the block's product runs on it, so a frozen 16-bit base never exists in fp32 as a whole.
 *
 * Tiles are blocks of rows of W (N x K row-major): contiguous to read, and the same blocks
 * serve both directions. Y = X W^T is exact per block (each output column is one block's
 * row); dX = dY W sums over the blocks in order (the fp32 path sums over N inside one GEMM,
 * so the two agree to rounding, ~1e-7 relative). Outside a parallel region one tile spans
 * every thread's share and both the widening and the GEMM are threaded; inside one (the
 * experts run side by side) each thread widens into its own tile and runs single-threaded
 * GEMMs. Tile size: TILE_BYTES per thread, at least MIN_ROWS rows (a block much thinner
 * than that would repack X for little work). */
#include "common/half.h"
#include "common/par.h"
#include "model/layers.h"
#include "model/model.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

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

static void mat_max(const model_mat *w, size_t *need)
{
    if (w->dtype == MODEL_F32 || w->cols <= 0) return;
    size_t f = (size_t)w->cols * (getenv("MOET_TILE_BYTES") ? 1 : MIN_ROWS);
    if (f < tile_floats_min()) f = tile_floats_min();
    size_t all = (size_t)w->cols * model_mat_rows(w);
    if (f > all) f = all;
    if (f > *need) *need = f;
}

size_t model_gemm_tile_floats(const model *m)
{
    size_t need = 1;
    const model_config *c = &m->c;
    mat_max(&m->embed, &need);
    mat_max(&m->lm_head, &need);
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

/* Rows [r0, r1) of W widened into dst (ld = K), parts crossed as needed; threaded over rows
 * when asked and not already inside a parallel region. */
static void widen_row(float *dst, const model_mat *W, int r)
{
    int j = 0, K = W->cols;
    while (r >= W->rows[j]) r -= W->rows[j++];
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
        int j = 0;
        while (r >= W->rows[j]) r -= W->rows[j++];
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

void model_mm_xwt(const model_tiles *T, int M, float alpha, const float *X, int ldx, const model_mat *W, float beta,
                  float *Y, int ldy)
{
    int K = W->cols, N = model_mat_rows(W);
    if (M <= 0 || N <= 0) return;
    if (W->dtype == MODEL_F32) {
        for (int j = 0, c0 = 0; j < W->n; c0 += W->rows[j++])
            model_gemm(0, 1, M, W->rows[j], K, alpha, X, ldx, W->p[j], K, beta, Y + c0, ldy);
        return;
    }
    size_t floats;
    int threaded;
    float *tile = my_tile(T, &floats, &threaded);
    int nb = block_rows(floats, K, N);
    for (int r0 = 0; r0 < N; r0 += nb) {
        int r1 = r0 + nb < N ? r0 + nb : N;
        widen_rows(tile, W, r0, r1, threaded);
        model_gemm(0, 1, M, r1 - r0, K, alpha, X, ldx, tile, K, beta, Y + r0, ldy);
    }
}

void model_mm_xw(const model_tiles *T, int M, float alpha, const float *dY, int lddy, const model_mat *W, float beta,
                 float *dX, int lddx)
{
    int K = W->cols, N = model_mat_rows(W);
    if (M <= 0 || K <= 0) return;
    if (W->dtype == MODEL_F32) {
        for (int j = 0, c0 = 0; j < W->n; c0 += W->rows[j++])
            model_gemm(0, 0, M, K, W->rows[j], alpha, dY + c0, lddy, W->p[j], K, j ? 1.0f : beta, dX, lddx);
        return;
    }
    size_t floats;
    int threaded;
    float *tile = my_tile(T, &floats, &threaded);
    int nb = block_rows(floats, K, N);
    for (int r0 = 0; r0 < N; r0 += nb) {
        int r1 = r0 + nb < N ? r0 + nb : N;
        widen_rows(tile, W, r0, r1, threaded);
        model_gemm(0, 0, M, K, r1 - r0, alpha, dY + r0, lddy, tile, K, r0 ? 1.0f : beta, dX, lddx);
    }
}
