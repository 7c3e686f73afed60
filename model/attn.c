/* attn: causal grouped-query attention fused per query tile (FlashAttention's scheme): for a
 * tile of ATTN_BQ queries, blocks of ATTN_BK keys are scored (Q K^T), folded into a running
 * softmax (row max, sum of exponentials, output rescaled when the max grows) and multiplied
 * into V, so scores never leave L1 and the forward keeps only the output and a log-sum-exp
 * per row. The backward recomputes each block's probabilities from that log-sum-exp.
 *
 * The products are moet's own register tiles (model/kern.h kern_mm) on operands read in place,
 * after one copy per (batch row, head) into the thread's scratch: K and V transposed (the
 * B of Q K^T and dO V^T) and the heads' rows packed contiguously. In qkv a head's rows are
 * (H + 2 KV) hd floats apart, usually a multiple of 1-4 KiB, so a tile's rows would all fall
 * into the same few L1 sets; the copies use strides a little past a power of two. */
#include "model/kern.h"
#include "model/layers.h"

#include <math.h>
#include <omp.h>
#include <string.h>

enum { BQ = ATTN_BQ, BK = ATTN_BK };

static inline int ld_keys(int T) { return T + 16; }  /* rows of K^T, V^T */
static inline int ld_head(int hd) { return hd + 16; } /* rows of a head's copies */

/* K^T and V^T (hd rows each), six head-sized copies (T rows), two BQ x BK blocks, a BQ-row
 * output tile, 4 BQ per tile row (a double and a float), T per key. */
size_t attn_scratch_floats(int T, int hd)
{
    size_t f = 2 * (size_t)hd * ld_keys(T) + 6 * (size_t)T * ld_head(hd) + 2 * (size_t)BQ * BK +
               (size_t)BQ * ld_head(hd) + 4 * BQ + (size_t)T;
    return (f + 15) & ~(size_t)15; /* each thread's part starts on a cache line */
}

static int tile_kv_lo(const int *ks, int i0, int m)
{
    int lo = ks[i0];
    for (int i = 1; i < m; i++) lo = ks[i0 + i] < lo ? ks[i0 + i] : lo;
    return lo;
}

/* Visible columns of the rows of a block: query t sees keys [ks[t], t]; in a block of nk keys
 * from j0 that is [lo, hi] (empty when lo > hi). */
static void block_spans(int *lo, int *hi, const int *ks, int i0, int m, int j0, int nk)
{
    for (int i = 0; i < m; i++) {
        int t = i0 + i;
        lo[i] = ks[t] - j0 > 0 ? ks[t] - j0 : 0;
        hi[i] = t - j0 < nk - 1 ? t - j0 : nk - 1;
    }
}

/* Blocks on the causal diagonal (a key past the tile's first query) go in strips of SR query
 * rows, each scored only up to its own last query's key: the products skip the masked corner
 * (15% of what whole blocks scored on tiny) in whole column panels, the chains over keys (P V, dS K) lose only
 * terms that were 0 * x, and the chains over queries (P^T dO, dS^T Q) start past the leading
 * zero ones, so every result is the one the whole block gave (for finite inputs). */
enum { SR = 12 };

/* query rows per strip of the block of nk keys from j0 for the tile of m queries from i0 */
static int strip_rows(int i0, int j0, int nk, int m) { return j0 + nk - 1 > i0 ? SR : m; }

/* keys of that block the strip of sr queries from t0 can see: up to its last query t0 + sr - 1 */
static int strip_keys(int t0, int sr, int j0, int nk) { return t0 + sr - j0 < nk ? t0 + sr - j0 : nk; }

/* One query head of one batch row (Q: T rows, QKV apart) against K^T and V already in the
 * thread's scratch (Kt, Vc): its output rows (ldo apart) and log-sum-exp per row (l). Qc, S:
 * the scratch's head copy and block area. */
static void head_forward(float *out, int ldo, float *l, const float *Q, int QKV, const float *Kt, const float *Vc,
                         const int *ks, int T, int hd, float *Qc, float *S)
{
    int lk = ld_keys(T), lh = ld_head(hd);
    float scale = 1.0f / sqrtf((float)hd), *O = S + 2 * BQ * BK;
    double *run_l = (double *)(O + (size_t)BQ * lh); /* an even offset: BQ doubles */
    float *run_m = (float *)(run_l + BQ), mnew[BQ], sum[BQ];
    int lo[BQ], hi[BQ];
    kern_copy_rows(Qc, lh, Q, QKV, T, hd);
    for (int i0 = 0; i0 < T; i0 += BQ) {
        int m = T - i0 < BQ ? T - i0 : BQ, jlo = tile_kv_lo(ks, i0, m), jend = i0 + m;
        for (int i = 0; i < m; i++) run_m[i] = -INFINITY, run_l[i] = 0;
        for (int j0 = jlo; j0 < jend; j0 += BK) {
            int nk = jend - j0 < BK ? jend - j0 : BK, sh = strip_rows(i0, j0, nk, m);
            for (int r0 = 0; r0 < m; r0 += sh) {
                int sr = m - r0 < sh ? m - r0 : sh, nks = strip_keys(i0 + r0, sr, j0, nk);
                if (nks <= 0) continue; /* the strip's rows see no key of this block */
                float *Sr = S + (size_t)r0 * BK, *Or = O + (size_t)r0 * lh, *rm = run_m + r0;
                double *rl = run_l + r0;
                kern_mm(sr, nks, hd, scale, Qc + (size_t)(i0 + r0) * lh, lh, 1, Kt + j0, lk, 0, Sr, BK);
                block_spans(lo, hi, ks, i0 + r0, sr, j0, nks);
                /* online softmax: P = exp(S - the max so far); O and the sum rescaled when it grows */
                kern_attn_block_fwd(Sr, BK, sr, nks, lo, hi, rm, mnew, sum);
                for (int i = 0; i < sr; i++) {
                    if (lo[i] > hi[i]) continue; /* no key of this row here: a zero row of P */
                    float *o = Or + (size_t)i * lh;
                    if (rm[i] == -INFINITY) { /* the row's first keys: O starts here */
                        memset(o, 0, (size_t)hd * sizeof(float));
                    } else if (mnew[i] > rm[i]) {
                        float c = model_expf(rm[i] - mnew[i]);
                        for (int d = 0; d < hd; d++) o[d] *= c;
                        rl[i] *= c;
                    }
                    rl[i] += sum[i];
                    rm[i] = mnew[i];
                }
                kern_mm(sr, hd, nks, 1, Sr, BK, 1, Vc + (size_t)j0 * lh, lh, 1, Or, lh);
            }
        }
        for (int i = 0; i < m; i++) {
            float *o = out + (size_t)(i0 + i) * ldo, inv = (float)(1.0 / run_l[i]);
            const float *oi = O + (size_t)i * lh;
            for (int d = 0; d < hd; d++) o[d] = oi[d] * inv;
            l[i0 + i] = run_m[i] + (float)log(run_l[i]);
        }
    }
}

void attn_forward(float *out, float *lse, const float *qkv, const int *kv_start, int B, int T, int H, int KV,
                  int hd, float *scratch)
{
    int QKV = (H + 2 * KV) * hd, ldo = H * hd, group = H / KV, lk = ld_keys(T), lh = ld_head(hd);
    /* A task is a (batch row, kv head), so that K^T and V are copied once for the group's query
     * heads, when there are tasks enough to keep every thread busy; else one query head. */
    int per = B * KV >= 4 * omp_get_max_threads() ? group : 1, tasks_b = H / per;
#pragma omp parallel for schedule(dynamic, 1)
    for (int task = 0; task < B * tasks_b; task++) {
        int b = task / tasks_b, h0 = task % tasks_b * per, g = h0 / group;
        float *Kt = scratch + (size_t)omp_get_thread_num() * attn_scratch_floats(T, hd);
        float *Vc = Kt + 2 * (size_t)hd * lk, *Qc = Vc + (size_t)T * lh, *S = Vc + 6 * (size_t)T * lh;
        const float *base = qkv + (size_t)b * T * QKV;
        kern_transpose(Kt, lk, base + (H + g) * hd, QKV, T, hd);
        kern_copy_rows(Vc, lh, base + (H + KV + g) * hd, QKV, T, hd);
        for (int h = h0; h < h0 + per; h++)
            head_forward(out + (size_t)b * T * ldo + h * hd, ldo, lse + ((size_t)b * H + h) * T, base + h * hd, QKV,
                         Kt, Vc, kv_start + (size_t)b * T, T, hd, Qc, S);
    }
}

void attn_backward(float *dqkv, const float *dout, const float *out, const float *qkv, const float *lse,
                   const int *kv_start, int B, int T, int H, int KV, int hd, float *scratch)
{
    int QKV = (H + 2 * KV) * hd, ldo = H * hd, group = H / KV, lk = ld_keys(T), lh = ld_head(hd);
    float scale = 1.0f / sqrtf((float)hd);
    /* One task per (batch row, kv head): it owns dK, dV of that head and dQ of its query
     * heads, so no races; every sum runs in a fixed order. */
#pragma omp parallel for schedule(dynamic, 1)
    for (int task = 0; task < B * KV; task++) {
        int b = task / KV, g = task % KV;
        float *Kt = scratch + (size_t)omp_get_thread_num() * attn_scratch_floats(T, hd);
        float *Vt = Kt + (size_t)hd * lk, *Kc = Vt + (size_t)hd * lk, *Qc = Kc + (size_t)T * lh;
        float *dOc = Qc + (size_t)T * lh, *dQ = dOc + (size_t)T * lh, *dK = dQ + (size_t)T * lh;
        float *dV = dK + (size_t)T * lh, *P = dV + (size_t)T * lh, *dS = P + BQ * BK;
        float *Dv = dS + BQ * BK + (size_t)BQ * lh + 4 * BQ;
        int lo[BQ], hi[BQ];
        const float *base = qkv + (size_t)b * T * QKV;
        const float *K = base + (H + g) * hd, *V = base + (H + KV + g) * hd;
        float *dbase = dqkv + (size_t)b * T * QKV;
        const int *ks = kv_start + (size_t)b * T;
        kern_transpose(Kt, lk, K, QKV, T, hd);
        kern_transpose(Vt, lk, V, QKV, T, hd);
        kern_copy_rows(Kc, lh, K, QKV, T, hd);
        memset(dK, 0, 2 * (size_t)T * lh * sizeof(float)); /* dK and dV */
        for (int h = g * group; h < (g + 1) * group; h++) {
            const float *O = out + (size_t)b * T * ldo + h * hd, *dO = dout + (size_t)b * T * ldo + h * hd;
            const float *l = lse + ((size_t)b * H + h) * T;
            kern_copy_rows(Qc, lh, base + h * hd, QKV, T, hd);
            kern_copy_rows(dOc, lh, dO, ldo, T, hd);
            for (int t = 0; t < T; t++) { /* D = rowsum(dO * O) */
                const float *o = O + (size_t)t * ldo, *d = dOc + (size_t)t * lh;
                float s = 0;
#pragma omp simd reduction(+ : s)
                for (int k = 0; k < hd; k++) s += o[k] * d[k];
                Dv[t] = s;
            }
            for (int i0 = 0; i0 < T; i0 += BQ) {
                int m = T - i0 < BQ ? T - i0 : BQ, jlo = tile_kv_lo(ks, i0, m), jend = i0 + m;
                const float *Qi = Qc + (size_t)i0 * lh, *dOi = dOc + (size_t)i0 * lh;
                for (int j0 = jlo; j0 < jend; j0 += BK) {
                    int nk = jend - j0 < BK ? jend - j0 : BK;
                    int sh = strip_rows(i0, j0, nk, m);
                    for (int r0 = 0; r0 < m; r0 += sh) { /* P; dS = P (dP - D); dQ (+)= scale dS K */
                        int sr = m - r0 < sh ? m - r0 : sh, nks = strip_keys(i0 + r0, sr, j0, nk);
                        float *Pr = P + (size_t)r0 * BK, *dSr = dS + (size_t)r0 * BK;
                        if (nks > 0) { /* (the first block always has keys for every strip: dQ's beta) */
                            kern_mm(sr, nks, hd, scale, Qi + (size_t)r0 * lh, lh, 1, Kt + j0, lk, 0, Pr, BK);
                            kern_mm(sr, nks, hd, 1, dOi + (size_t)r0 * lh, lh, 1, Vt + j0, lk, 0, dSr, BK);
                            block_spans(lo, hi, ks, i0 + r0, sr, j0, nks);
                            kern_attn_block_bwd(Pr, dSr, BK, sr, nks, lo, hi, l + i0 + r0, Dv + i0 + r0);
                            kern_mm(sr, hd, nks, scale, dSr, BK, 1, Kc + (size_t)j0 * lh, lh, j0 > jlo,
                                    dQ + (size_t)(i0 + r0) * lh, lh);
                        }
                        for (int i = 0; nks < nk && i < sr; i++) { /* the corner P^T dO and dS^T Q read */
                            int c = nks > 0 ? nks : 0;
                            memset(Pr + (size_t)i * BK + c, 0, (size_t)(nk - c) * sizeof(float));
                            memset(dSr + (size_t)i * BK + c, 0, (size_t)(nk - c) * sizeof(float));
                        }
                    }
                    /* dV += P^T dO; dK += scale dS^T Q: on the diagonal, strips of SR keys from the
                     * first query that sees them (j0 + jr - i0; the queries before add 0) */
                    int diag = sh != m, kr = diag ? SR : nk; /* key rows per product */
                    for (int jr = 0; jr < nk; jr += kr) {
                        int nr = nk - jr < kr ? nk - jr : kr;
                        int q0 = diag && j0 + jr > i0 ? j0 + jr - i0 : 0; /* < m: keys end at i0 + m */
                        const float *Pq = P + (size_t)q0 * BK + jr, *dSq = dS + (size_t)q0 * BK + jr;
                        kern_mm(nr, hd, m - q0, 1, Pq, 1, BK, dOi + (size_t)q0 * lh, lh, 1, dV + (size_t)(j0 + jr) * lh,
                                lh);
                        kern_mm(nr, hd, m - q0, scale, dSq, 1, BK, Qi + (size_t)q0 * lh, lh, 1,
                                dK + (size_t)(j0 + jr) * lh, lh);
                    }
                }
            }
            kern_copy_rows(dbase + h * hd, QKV, dQ, lh, T, hd);
        }
        kern_copy_rows(dbase + (H + g) * hd, QKV, dK, lh, T, hd);
        kern_copy_rows(dbase + (H + KV + g) * hd, QKV, dV, lh, T, hd);
    }
}
