/* kern_tmpl.h: the body of one kernel set of model/kern.h, included by kern_avx512.c and
 * kern_avx2.c after they define the vector layer:
 *   V, VL               vector type and its lanes
 *   VM, vmask(n)        a mask of the first n lanes (0 <= n <= VL)
 *   vzero, vset1, vload, vstore, vloadm, vstorem, vfma(a, b, c) = a*b + c, vmul
 *   vtrans(V r[VL])     in-register transpose of VL rows of VL floats
 *   vhmax, vhsum, vfirst  a vector's max, its lanes' sum, lane 0; vhsum adds in registers in
 *                       a fixed tree (lane l + lane l + VL/2, then the same on the halves), one
 *                       order per ISA (a row of attention's scores is a few vectors: a sum
 *                       through memory cost as much as the row)
 *   vscale2(p, n)       p 2^n for integral n in [-126, 127], exactly (one rounding)
 *   vwiden(p, dt)       VL 16-bit values (KERN_BF16 / KERN_F16) widened to fp32
 *   ROWS_MR(X), ROWS_MRN(X)   X(0) ... X(MR-1), X(0) ... X(MRN-1): the tiles' rows
 *   KN(name)            the set's name for name
 * Tiles: MR rows x 2 vectors (the main one) and MRN rows x 1 vector (N <= VL: LoRA's rank,
 * the router). Blocking: k in blocks of at most KQ (balanced as OpenBLAS balances its own),
 * B in blocks of NC columns packed into panels of NR = 2 VL columns (zero padded), A in row
 * blocks of MC; the innermost loop walks the rows of A against one panel of B held in L1. */
#include "common/half.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define NR (2 * VL)

/* one 16-bit value widened (edges of a packed block) */
static inline float widen1(uint16_t h, int dt)
{
    if (dt == KERN_F16) return half_f16_to_f32(h);
    union { uint32_t u; float f; } x = {.u = (uint32_t)h << 16};
    return x.f;
}
enum { KQ = 320, NC = 512, MC = 192 };

/* k blocks: the rest whole up to KQ, split in two near-halves up to 2 KQ, else KQ. */
static inline int kblock(int rest)
{
    if (rest >= 2 * KQ) return KQ;
    if (rest > KQ) return ((rest / 2) + 15) & ~15;
    return rest;
}

/* Store a finished accumulator: C (row-major, rsc) lanes [0, n) = alpha acc + beta C. */
#define STORE_V(cp, acc, m)                                                                                           \
    do {                                                                                                              \
        V r_ = vmul(va, (acc));                                                                                       \
        if (beta != 0) r_ = vfma(vb, vloadm((cp), (m)), r_);                                                           \
        vstorem((cp), (m), r_);                                                                                       \
    } while (0)

/* A tile of C^T spilled to t (mr rows of nr floats, ldt apart) stored into C: tile row i is
 * column i of C, tile column j row j (C + j*ldc). VL x VL blocks are transposed in registers
 * so that each row of C gets one vector store (a scalar scatter runs into C's row stride,
 * often a power of two, and the L1 sets it aliases to). */
static void store_tr(const float *t, int ldt, int mr, int nr, float *C, long ldc, float alpha, float beta)
{
    V va = vset1(alpha), vb = vset1(beta);
    for (int i0 = 0; i0 < mr; i0 += VL) {
        VM m = vmask(mr - i0 < VL ? mr - i0 : VL);
        for (int j0 = 0; j0 < nr; j0 += VL) {
            V r[VL];
            for (int i = 0; i < VL; i++) r[i] = i0 + i < mr ? vload(t + (i0 + i) * ldt + j0) : vzero();
            vtrans(r);
            for (int j = 0; j < VL && j0 + j < nr; j++) STORE_V(C + (j0 + j) * ldc + i0, r[j], m);
        }
    }
}

/* ---- the main tile: C (mr <= MR, nr <= NR) = alpha sum_k a(i,k) B[k] + beta C.
 * a(i,k) = A[i*rsa + k*csa]; B row k at B + k*rsb (nr floats, masked loads past nr). Rows of
 * the tile past mr repeat row mr-1 (computed, not stored). */
#define T2_DECL(i)                                                                                                    \
    V c##i##0 = vzero(), c##i##1 = vzero();                                                                           \
    const float *a##i = A + (long)((i) < mr ? (i) : mr - 1) * rsa;
#define T2_FMA(i, x)                                                                                                  \
    {                                                                                                                 \
        V x_ = vset1(x);                                                                                              \
        c##i##0 = vfma(x_, b0, c##i##0);                                                                              \
        c##i##1 = vfma(x_, b1, c##i##1);                                                                              \
    }
#define T2_FMA_ROW(i) T2_FMA(i, a##i[k])
#define T2_FMA_COL(i) T2_FMA(i, a0[k * csa + ((i) < mr ? (i) : mr - 1)])
#define T2_STORE(i)                                                                                                   \
    if ((i) < mr) {                                                                                                   \
        STORE_V(C + (i) * rsc, c##i##0, m0);                                                                          \
        STORE_V(C + (i) * rsc + VL, c##i##1, m1);                                                                     \
    }
#define T2_SPILL(i) vstore(t + (i) * NR, c##i##0), vstore(t + (i) * NR + VL, c##i##1);

static void KN(tile2)(int mr, int nr, int kc, const float *restrict A, long rsa, long csa, const float *restrict B,
                      long rsb, float *restrict C, long rsc, long csc, float alpha, float beta)
{
    ROWS_MR(T2_DECL)
    VM m0 = vmask(nr < VL ? nr : VL), m1 = vmask(nr > VL ? nr - VL : 0);
    if (nr == NR && csa == 1) {
        for (int k = 0; k < kc; k++, B += rsb) {
            V b0 = vload(B), b1 = vload(B + VL);
            ROWS_MR(T2_FMA_ROW)
        }
    } else if (csa == 1) {
        for (int k = 0; k < kc; k++, B += rsb) {
            V b0 = vloadm(B, m0), b1 = vloadm(B + VL, m1);
            ROWS_MR(T2_FMA_ROW)
        }
    } else {
        for (int k = 0; k < kc; k++, B += rsb) {
            V b0 = vloadm(B, m0), b1 = vloadm(B + VL, m1);
            ROWS_MR(T2_FMA_COL)
        }
    }
    V va = vset1(alpha), vb = vset1(beta);
    if (csc == 1) {
        ROWS_MR(T2_STORE)
    } else {
        float t[(MR + VL - 1) / VL * VL * NR] __attribute__((aligned(64))); /* rows to a whole block */
        ROWS_MR(T2_SPILL)
        store_tr(t, NR, mr, nr, C, csc, alpha, beta);
    }
}

/* ---- the narrow tile: MRN rows x 1 vector, for N <= VL */
#define T1_DECL(i)                                                                                                    \
    V c##i##0 = vzero();                                                                                              \
    const float *a##i = A + (long)((i) < mr ? (i) : mr - 1) * rsa;
#define T1_FMA_ROW(i) c##i##0 = vfma(vset1(a##i[k]), b0, c##i##0);
#define T1_FMA_COL(i) c##i##0 = vfma(vset1(a0[k * csa + ((i) < mr ? (i) : mr - 1)]), b0, c##i##0);
#define T1_STORE(i)                                                                                                   \
    if ((i) < mr) STORE_V(C + (i) * rsc, c##i##0, m0);
#define T1_SPILL(i) vstore(t + (i) * VL, c##i##0);

static void KN(tile1)(int mr, int nr, int kc, const float *restrict A, long rsa, long csa, const float *restrict B,
                      long rsb, float *restrict C, long rsc, long csc, float alpha, float beta)
{
    ROWS_MRN(T1_DECL)
    VM m0 = vmask(nr);
    if (csa == 1) {
        for (int k = 0; k < kc; k++, B += rsb) {
            V b0 = vloadm(B, m0);
            ROWS_MRN(T1_FMA_ROW)
        }
    } else {
        for (int k = 0; k < kc; k++, B += rsb) {
            V b0 = vloadm(B, m0);
            ROWS_MRN(T1_FMA_COL)
        }
    }
    V va = vset1(alpha), vb = vset1(beta);
    if (csc == 1) {
        ROWS_MRN(T1_STORE)
    } else {
        float t[(MRN + VL - 1) / VL * VL * VL] __attribute__((aligned(64)));
        ROWS_MRN(T1_SPILL)
        store_tr(t, VL, mr, nr, C, csc, alpha, beta);
    }
}

/* ---- packing B: columns [j0, j0+nc), k [p0, p0+kc) into panels of w columns (w = NR, or VL
 * for the narrow tile): panel q holds P[q*kc*w + k*w + j], zero past nc. */

/* B stored k-major (row k at B + k*ldb, N along the row): copies, widening a 16-bit B; each
 * row of the block is read once, front to back, into the panels. */
static void KN(pack_rows)(float *P, const void *B, int ldb, int dt, int j0, int nc, int p0, int kc, int w)
{
    for (int k = 0; k < kc; k++) {
        size_t o = (size_t)(p0 + k) * ldb + j0;
        for (int q = 0; q * w < nc; q++) {
            int n = nc - q * w < w ? nc - q * w : w;
            float *d = P + (size_t)q * kc * w + (size_t)k * w;
            if (dt == KERN_F32) {
                const float *s = (const float *)B + o + q * w;
                for (int v = 0; v < w; v += VL) vstore(d + v, vloadm(s + v, vmask(n - v < 0 ? 0 : n - v > VL ? VL : n - v)));
            } else {
                const uint16_t *s = (const uint16_t *)B + o + q * w;
                int j = 0;
                for (; j + VL <= n; j += VL) vstore(d + j, vwiden(s + j, dt));
                for (; j < w; j++) d[j] = j < n ? widen1(s[j], dt) : 0;
            }
        }
    }
}

/* B stored n-major (row j at B + j*ldb, K along the row: a transposed B, or the A of C^T):
 * VL x VL blocks transposed in registers; edges element by element. */
static void KN(pack_cols)(float *P, const void *B, int ldb, int dt, int j0, int nc, int p0, int kc, int w)
{
    for (int q = 0; q * w < nc; q++) {
        int n = nc - q * w < w ? nc - q * w : w;
        float *d = P + (size_t)q * kc * w;
        for (int jb = 0; jb < w; jb += VL) {
            int nj = n - jb < 0 ? 0 : n - jb > VL ? VL : n - jb;
            int k = 0;
            if (nj == VL)
                for (; k + VL <= kc; k += VL) {
                    V r[VL];
                    for (int j = 0; j < VL; j++) {
                        size_t o = (size_t)(j0 + q * w + jb + j) * ldb + p0 + k;
                        r[j] = dt == KERN_F32 ? vload((const float *)B + o) : vwiden((const uint16_t *)B + o, dt);
                    }
                    vtrans(r);
                    for (int kk = 0; kk < VL; kk++) vstore(d + (size_t)(k + kk) * w + jb, r[kk]);
                }
            for (; k < kc; k++)
                for (int j = 0; j < VL; j++) {
                    float x = 0;
                    if (j < nj) {
                        size_t o = (size_t)(j0 + q * w + jb + j) * ldb + p0 + k;
                        x = dt == KERN_F32 ? ((const float *)B)[o] : widen1(((const uint16_t *)B)[o], dt);
                    }
                    d[(size_t)k * w + jb + j] = x;
                }
        }
    }
}

/* A block of a transposed A (a(i,k) = A[k*lda + i], i < mc, k < kc) as tiles of mrt rows:
 * P[t*kc*mrt + k*mrt + r] = a(t*mrt + r, k), the last tile's missing rows repeating its last. */
static void KN(pack_a)(float *P, const float *A, long lda, int mc, int kc, int mrt)
{
    for (int t = 0; t * mrt < mc; t++) {
        int m = mc - t * mrt < mrt ? mc - t * mrt : mrt;
        float *d = P + (size_t)t * kc * mrt;
        const float *a = A + t * mrt;
        for (int k = 0; k < kc; k++, d += mrt, a += lda)
            for (int r = 0; r < mrt; r++) d[r] = a[r < m ? r : m - 1];
    }
}

static void KN(pack)(float *P, const void *B, int ldb, int b_cols, int dt, int j0, int nc, int p0, int kc, int w)
{
    if (b_cols) KN(pack_cols)(P, B, ldb, dt, j0, nc, p0, kc, w);
    else KN(pack_rows)(P, B, ldb, dt, j0, nc, p0, kc, w);
}

/* ---- prefetching the next block of B while this one computes: packing (or reading B in
 * place) then finds it in cache instead of waiting on memory, and B's one pass over memory
 * (a weight used by tens of rows) overlaps with the FMAs. */
typedef struct {
    const char *base;
    size_t stride;
    int lines, total, next; /* lines per row, lines in all, the next to fetch */
} prefetcher;

static void pf_set(prefetcher *p, const void *B, int esz, int ldb, int b_cols, int p0, int kc, int j0, int nc)
{
    int rows = b_cols ? nc : kc, len = (b_cols ? kc : nc) * esz;
    size_t first = b_cols ? (size_t)j0 * ldb + p0 : (size_t)p0 * ldb + j0;
    p->base = (const char *)B + first * esz;
    p->stride = (size_t)ldb * esz;
    p->lines = (len + 63) / 64;
    p->total = kc > 0 ? rows * p->lines : 0;
    p->next = 0;
}

static inline void pf_run(prefetcher *p, int n)
{
    for (; n > 0 && p->next < p->total; n--, p->next++)
        __builtin_prefetch(p->base + (p->next / p->lines) * p->stride + (p->next % p->lines) * 64, 0, 2);
}

/* ---- the driver. C (M, N) with strides (rsc, csc) (one of them 1) = alpha op(A) op(B) + beta C, where a(i,k)
 * = A[i*rsa + k*csa] and op(B)(k, j) is B[k*ldb + j] (b_cols == 0) or B[j*ldb + k] (b_cols == 1). */
static void KN(drive)(int M, int N, int K, float alpha, const float *A, long rsa, long csa, const void *B, int ldb,
                      int b_cols, int bdt, float beta, float *C, long rsc, long csc, float *pack)
{
    int narrow = N <= VL, w = narrow ? VL : NR, mrt = narrow ? MRN : MR, esz = bdt == KERN_F32 ? 4 : 2;
    /* B in place when its rows run along N and stay within a few pages per k block;
     * otherwise packed */
    int direct = !b_cols && bdt == KERN_F32 && (K <= 64 || ldb <= 1024);
    /* A's columns (a transposed A) are packed when far apart and B has enough panels to
     * reuse them: after B's block in the scratch */
    float *apack = csa > 256 && N > 2 * w ? pack + (size_t)NC * KQ : NULL;
    prefetcher pf;
    for (int p0 = 0; p0 < K;) {
        int kc = kblock(K - p0);
        float bt = p0 ? 1.0f : beta;
        for (int j0 = 0; j0 < N; j0 += NC) {
            int nc = N - j0 < NC ? N - j0 : NC;
            int pn = j0 + NC < N ? p0 : p0 + kc, jn = j0 + NC < N ? j0 + NC : 0; /* the next block */
            int kn = pn < K ? kblock(K - pn) : 0, ncn = N - jn < NC ? N - jn : NC;
            pf_set(&pf, B, esz, ldb, b_cols, pn, kn, jn, ncn);
            int tiles = (M + mrt - 1) / mrt * ((nc + w - 1) / w), per = (pf.total + tiles - 1) / tiles;
            const float *Bp;
            long rsb, qstride;
            if (direct) {
                Bp = (const float *)B + (size_t)p0 * ldb + j0, rsb = ldb, qstride = w;
            } else {
                KN(pack)(pack, B, ldb, b_cols, bdt, j0, nc, p0, kc, w);
                Bp = pack, rsb = w, qstride = (long)kc * w;
            }
            for (int i0 = 0; i0 < M; i0 += MC) {
                int mc = M - i0 < MC ? M - i0 : MC;
                const float *Ab = A + i0 * rsa + (long)p0 * csa;
                long ra = rsa, ca = csa, tstride = mrt * rsa; /* a(i,k) of this block, and tile to tile */
                if (apack) { /* columns of A far apart: tile-major copy [tile][k][mrt] */
                    KN(pack_a)(apack, Ab, csa, mc, kc, mrt);
                    Ab = apack, ra = 1, ca = mrt, tstride = (long)mrt * kc;
                }
                for (int q = 0; q * w < nc; q++) {
                    int nr = nc - q * w < w ? nc - q * w : w;
                    const float *bq = Bp + q * qstride;
                    float *cq = C + (size_t)(j0 + q * w) * csc;
                    for (int i = i0; i < i0 + mc; i += mrt) {
                        int mr = i0 + mc - i < mrt ? i0 + mc - i : mrt;
                        const float *ai = Ab + (i - i0) / mrt * tstride;
                        pf_run(&pf, per);
                        if (narrow) KN(tile1)(mr, nr, kc, ai, ra, ca, bq, rsb, cq + i * rsc, rsc, csc, alpha, bt);
                        else KN(tile2)(mr, nr, kc, ai, ra, ca, bq, rsb, cq + i * rsc, rsc, csc, alpha, bt);
                    }
                }
            }
        }
        p0 += kc;
    }
}

void KN(gemm)(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const void *B, int ldb,
              int bdt, float beta, float *C, int ldc, float *pack)
{
    /* C^T = op(B)^T op(A)^T when B must be packed and A is the smaller operand: A gets
     * packed instead (B's elements are broadcast, so only an fp32 B). C^T's tiles are stored
     * element by element, which a long k amortises. */
    if (tb && !ta && bdt == KERN_F32 && 2 * M <= N && N > VL && K >= 128)
        KN(drive)(N, M, K, alpha, B, ldb, 1, A, lda, 1, KERN_F32, beta, C, 1, ldc, pack);
    else
        KN(drive)(M, N, K, alpha, A, ta ? 1 : lda, ta ? lda : 1, B, ldb, tb, bdt, beta, C, ldc, 1, pack);
}

/* Short products on operands read in place (attention tiles): one k block, no packing. */
void KN(mm)(int M, int N, int K, float alpha, const float *A, long rsa, long csa, const float *B, long ldb, float beta,
            float *C, long ldc)
{
    int narrow = N <= VL, w = narrow ? VL : NR, mrt = narrow ? MRN : MR;
    for (int q = 0; q * w < N; q++) {
        int nr = N - q * w < w ? N - q * w : w;
        for (int i = 0; i < M; i += mrt) {
            int mr = M - i < mrt ? M - i : mrt;
            const float *ai = A + i * rsa, *bq = B + q * w;
            float *c = C + i * ldc + q * w;
            if (narrow) KN(tile1)(mr, nr, K, ai, rsa, csa, bq, ldb, c, ldc, 1, alpha, beta);
            else KN(tile2)(mr, nr, K, ai, rsa, csa, bq, ldb, c, ldc, 1, alpha, beta);
        }
    }
}

/* dst (cols, ldd) = src (rows, cols; lds)^T, VL x VL blocks in registers. */
void KN(transpose)(float *dst, long ldd, const float *src, long lds, int rows, int cols)
{
    int r0 = 0;
    for (; r0 + VL <= rows; r0 += VL) {
        int c0 = 0;
        for (; c0 + VL <= cols; c0 += VL) {
            V r[VL];
            for (int i = 0; i < VL; i++) r[i] = vload(src + (r0 + i) * lds + c0);
            vtrans(r);
            for (int i = 0; i < VL; i++) vstore(dst + (c0 + i) * ldd + r0, r[i]);
        }
        for (; c0 < cols; c0++)
            for (int i = 0; i < VL; i++) dst[c0 * ldd + r0 + i] = src[(r0 + i) * lds + c0];
    }
    for (; r0 < rows; r0++)
        for (int c = 0; c < cols; c++) dst[c * ldd + r0] = src[r0 * lds + c];
}

/* dst rows (ld ldd) = src rows (ld lds), rows x cols */
void KN(copy_rows)(float *dst, long ldd, const float *src, long lds, int rows, int cols)
{
    for (int r = 0; r < rows; r++) {
        int c = 0;
        for (; c + VL <= cols; c += VL) vstore(dst + r * ldd + c, vload(src + r * lds + c));
        if (c < cols) vstorem(dst + r * ldd + c, vmask(cols - c), vloadm(src + r * lds + c, vmask(cols - c)));
    }
}

/* ---- vector math: exp and the softmax passes around the products */

/* e^x as model_expf computes it (Cody-Waite reduction, degree-7 Taylor; relative error under
 * 2e-7), with FMAs and min/max clamps: e^-87.3 below, e^88 above, NaN for NaN. */
static inline V vexp(V x)
{
    V c = vmin(vmax(x, vset1(-87.33654f)), vset1(88.0f)); /* NaN becomes -87.3 here (maxps) */
    V n = vround(vmul(c, vset1(1.44269504088896341f)));
    V r = vfma(n, vset1(-0.693145751953125f), c);
    r = vfma(n, vset1(-1.42860682030941723212e-6f), r);
    V p = vfma(vset1(1.0f / 5040.0f), r, vset1(1.0f / 720.0f));
    p = vfma(p, r, vset1(1.0f / 120.0f));
    p = vfma(p, r, vset1(1.0f / 24.0f));
    p = vfma(p, r, vset1(1.0f / 6.0f));
    p = vfma(p, r, vset1(0.5f));
    p = vfma(p, r, vset1(1.0f));
    p = vfma(p, r, vset1(1.0f));
    return vsel(visnan(x), x, vscale2(p, n));
}

/* Attention forward, one block of scores S (m rows, ld apart; nk keys): row i sees keys
 * [lo[i], hi[i]] (none when lo > hi). mnew[i] = max(mprev[i], its visible scores), S :=
 * exp(S - mnew[i]) there and 0 elsewhere, sum[i] = the row's sum. */
void KN(attn_block_fwd)(float *S, long ld, int m, int nk, const int *lo, const int *hi, const float *mprev,
                        float *mnew, float *sum)
{
    for (int i = 0; i < m; i++) {
        float *s = S + i * ld;
        V mx = vset1(mprev[i]), acc = vzero();
        if (lo[i] <= 0 && hi[i] >= nk - 1 && nk % VL == 0) { /* the whole row: no masks */
            for (int j = 0; j < nk; j += VL) mx = vmax(mx, vload(s + j));
            V mv = vset1(vhmax(mx));
            for (int j = 0; j < nk; j += VL) {
                V e = vexp(vsub(vload(s + j), mv));
                vstore(s + j, e);
                acc = vadd(acc, e);
            }
            mnew[i] = vfirst(mv);
        } else {
            for (int j = 0; j < nk; j += VL) mx = vmax(mx, vsel(vspan(j, lo[i], hi[i]), vload(s + j), mx));
            V mv = vset1(vhmax(mx));
            for (int j = 0; j < nk; j += VL) {
                V e = vsel(vspan(j, lo[i], hi[i]), vexp(vsub(vload(s + j), mv)), vzero());
                vstore(s + j, e);
                acc = vadd(acc, e);
            }
            mnew[i] = vfirst(mv);
        }
        sum[i] = vhsum(acc);
    }
}

/* Attention backward, one block: P := exp(P - lse[i]) on row i's visible keys, 0 elsewhere;
 * dS := P * (dS - D[i]). */
void KN(attn_block_bwd)(float *P, float *dS, long ld, int m, int nk, const int *lo, const int *hi, const float *lse,
                        const float *D)
{
    for (int i = 0; i < m; i++) {
        float *p = P + i * ld, *ds = dS + i * ld;
        V l = vset1(lse[i]), d = vset1(D[i]);
        if (lo[i] <= 0 && hi[i] >= nk - 1 && nk % VL == 0) {
            for (int j = 0; j < nk; j += VL) {
                V e = vexp(vsub(vload(p + j), l));
                vstore(p + j, e);
                vstore(ds + j, vmul(e, vsub(vload(ds + j), d)));
            }
            continue;
        }
        for (int j = 0; j < nk; j += VL) {
            V e = vsel(vspan(j, lo[i], hi[i]), vexp(vsub(vload(p + j), l)), vzero());
            vstore(p + j, e);
            vstore(ds + j, vmul(e, vsub(vload(ds + j), d)));
        }
    }
}

/* ---- SwiGLU: rows of h13 = [h1 (F) | h3 (F)] */

/* A row of h13 is two short streams (h1 and h3, F floats each) on a page of its own, which the
 * hardware prefetchers pick up late at every row: the SwiGLU kernels request the next row's
 * lines (h1, h3, act) a line per vector step while they compute this one. SwiGLU's backward over
 * rows it reads from memory (as a training step does: they were written by the forward) went
 * from 1.5-1.7 to 0.4 ns per element at F 512 on one core, 1.2 -> 0.43 at F 768 and 1408
 * (2026-12-03, AMD EPYC Zen5); from cache it runs at 0.35. */
static inline void next_row_lines(const float *h1n, int F, const float *an, int f)
{
    __builtin_prefetch(h1n + f, 1, 3); /* AVX2 steps by half a line: two requests a line */
    __builtin_prefetch(h1n + F + f, 1, 3);
    if (an) __builtin_prefetch(an + f, 1, 3);
}

/* act (rows, F) = silu(h1) h3 = h1 h3 / (1 + e^-h1) */
void KN(swiglu)(float *act, const float *h13, int rows, int F)
{
    for (int r = 0; r < rows; r++) {
        const float *h1 = h13 + (size_t)r * 2 * F, *h3 = h1 + F;
        float *a = act + (size_t)r * F;
        int ahead = r + 1 < rows;
        for (int f = 0; f < F; f += VL) {
            VM m = vmask(F - f < VL ? F - f : VL);
            if (ahead) next_row_lines(h1 + 2 * (size_t)F, F, a + F, f);
            V x = vloadm(h1 + f, m), s = vdiv(vset1(1.0f), vadd(vset1(1.0f), vexp(vsub(vzero(), x))));
            vstorem(a + f, m, vmul(vmul(x, s), vloadm(h3 + f, m)));
        }
    }
}

/* In place: h13 := dL/dh13 from dact = g (times w[r] when w): dh1 = d h3 s (1 + h1 (1 - s)),
 * dh3 = d h1 s; with act, also act = h1 s h3. */
void KN(swiglu_backward)(float *act, float *h13, const float *g, const float *w, int rows, int F)
{
    for (int r = 0; r < rows; r++) {
        float *h1 = h13 + (size_t)r * 2 * F, *h3 = h1 + F, *a = act ? act + (size_t)r * F : NULL;
        const float *da = g + (size_t)r * F;
        V wr = vset1(w ? w[r] : 1.0f), one = vset1(1.0f);
        int ahead = r + 1 < rows;
        for (int f = 0; f < F; f += VL) {
            VM m = vmask(F - f < VL ? F - f : VL);
            if (ahead) next_row_lines(h1 + 2 * (size_t)F, F, a ? a + F : NULL, f);
            V x1 = vloadm(h1 + f, m), x3 = vloadm(h3 + f, m), d = vloadm(da + f, m);
            V s = vdiv(one, vadd(one, vexp(vsub(vzero(), x1))));
            if (w) d = vmul(d, wr);
            if (a) vstorem(a + f, m, vmul(vmul(x1, s), x3));
            vstorem(h1 + f, m, vmul(vmul(vmul(d, x3), s), vadd(one, vmul(x1, vsub(one, s)))));
            vstorem(h3 + f, m, vmul(vmul(d, x1), s));
        }
    }
}

/* ---- cross-entropy rows: chunks of CE_CHUNK floats get their max and exponentials while
 * in L1 (one pass over the row), then one pass rescales them to the softmax */
enum { CE_CHUNK = 1024 };

double KN(ce_row)(float *z, int n, float scale, int grad)
{
    int nc = (n + CE_CHUNK - 1) / CE_CHUNK;
    float cm[nc], cs[nc], mx = -INFINITY;
    for (int c = 0; c < nc; c++) {
        float *x = z + (size_t)c * CE_CHUNK;
        int len = n - c * CE_CHUNK < CE_CHUNK ? n - c * CE_CHUNK : CE_CHUNK;
        V vm = vset1(-INFINITY), acc = vzero();
        for (int j = 0; j < len; j += VL) vm = vmax(vm, vsel(vspan(j, 0, len - 1), vload_tail(x + j, len - j), vm));
        float m = vhmax(vm);
        V mv = vset1(m);
        for (int j = 0; j < len; j += VL) {
            int t = len - j < VL ? len - j : VL;
            V e = vsel(vspan(j, 0, len - 1), vexp(vsub(vload_tail(x + j, t), mv)), vzero());
            if (grad) vstorem(x + j, vmask(t), e);
            acc = vadd(acc, e);
        }
        cm[c] = m;
        cs[c] = vhsum(acc);
        mx = m > mx ? m : mx;
    }
    double sum = 0;
    for (int c = 0; c < nc; c++) sum += (double)cs[c] * exp((double)cm[c] - mx);
    if (grad)
        for (int c = 0; c < nc; c++) {
            float *x = z + (size_t)c * CE_CHUNK;
            int len = n - c * CE_CHUNK < CE_CHUNK ? n - c * CE_CHUNK : CE_CHUNK;
            V f = vset1((float)(scale * exp((double)cm[c] - mx) / sum));
            for (int j = 0; j < len; j += VL) {
                VM m = vmask(len - j < VL ? len - j : VL);
                vstorem(x + j, m, vmul(vloadm(x + j, m), f));
            }
        }
    return mx + log(sum);
}
