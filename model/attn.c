/* attn: causal grouped-query attention, blocked over query rows so that backward only
 * keeps out and the log-sum-exp per row (O(T) per head), recomputing scores block by block
 * (FlashAttention's idea, with GEMMs for the block products). */
#include "model/layers.h"

#include <math.h>
#include <omp.h>
#include <string.h>

size_t attn_scratch_floats(int T) { return 2 * (size_t)ATTN_BQ * (size_t)T; }

/* Scores of query rows [i0, i0+m) against keys [jlo, i0+m): S (m, nj) = scale * Q K^T,
 * turned into probabilities P in place. With lse == NULL it computes the softmax and
 * stores each row's log-sum-exp into lse_out; otherwise it uses the saved lse. */
static void block_probs(float *S, const float *Q, const float *K, int ld, int hd, float scale, int i0, int m,
                        int jlo, int nj, const int *ks, const float *lse, float *lse_out)
{
    model_gemm(0, 1, m, nj, hd, scale, Q + (size_t)i0 * ld, ld, K + (size_t)jlo * ld, ld, 0, S, nj);
    for (int i = 0; i < m; i++) {
        int t = i0 + i, lo = ks[t] - jlo, hi = t - jlo; /* valid columns [lo, hi] */
        float *s = S + (size_t)i * nj;
        if (lse) {
            float l = lse[t];
            for (int j = 0; j < lo; j++) s[j] = 0;
            for (int j = hi + 1; j < nj; j++) s[j] = 0;
            for (int j = lo; j <= hi; j++) s[j] = model_expf(s[j] - l);
        } else {
            lse_out[t] = model_softmax_span(s, nj, lo, hi);
        }
    }
}

static int block_kv_lo(const int *ks, int i0, int m)
{
    int lo = ks[i0];
    for (int i = 1; i < m; i++) lo = ks[i0 + i] < lo ? ks[i0 + i] : lo;
    return lo;
}

void attn_forward(float *out, float *lse, const float *qkv, const int *kv_start, int B, int T, int H, int KV,
                  int hd, float *scratch)
{
    int QKV = (H + 2 * KV) * hd, ldo = H * hd, group = H / KV;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for schedule(dynamic, 1)
    for (int task = 0; task < B * H; task++) {
        int b = task / H, h = task % H, g = h / group;
        float *S = scratch + (size_t)omp_get_thread_num() * attn_scratch_floats(T);
        const float *base = qkv + (size_t)b * T * QKV;
        const float *Q = base + h * hd, *K = base + (H + g) * hd, *V = base + (H + KV + g) * hd;
        float *O = out + (size_t)b * T * ldo + h * hd;
        const int *ks = kv_start + (size_t)b * T;
        float *l = lse + ((size_t)b * H + h) * T;
        for (int i0 = 0; i0 < T; i0 += ATTN_BQ) {
            int m = T - i0 < ATTN_BQ ? T - i0 : ATTN_BQ;
            int jlo = block_kv_lo(ks, i0, m), nj = i0 + m - jlo;
            block_probs(S, Q, K, QKV, hd, scale, i0, m, jlo, nj, ks, NULL, l);
            model_gemm(0, 0, m, hd, nj, 1, S, nj, V + (size_t)jlo * QKV, QKV, 0, O + (size_t)i0 * ldo, ldo);
        }
    }
}

void attn_backward(float *dqkv, const float *dout, const float *out, const float *qkv, const float *lse,
                   const int *kv_start, int B, int T, int H, int KV, int hd, float *scratch)
{
    int QKV = (H + 2 * KV) * hd, ldo = H * hd, group = H / KV;
    float scale = 1.0f / sqrtf((float)hd);
    /* One task per (batch row, kv head): it owns dK, dV of that head, so no races. */
#pragma omp parallel for schedule(dynamic, 1)
    for (int task = 0; task < B * KV; task++) {
        int b = task / KV, g = task % KV;
        float *P = scratch + (size_t)omp_get_thread_num() * attn_scratch_floats(T);
        float *dS = P + (size_t)ATTN_BQ * T;
        const float *base = qkv + (size_t)b * T * QKV;
        const float *K = base + (H + g) * hd, *V = base + (H + KV + g) * hd;
        float *dbase = dqkv + (size_t)b * T * QKV;
        float *dK = dbase + (H + g) * hd, *dV = dbase + (H + KV + g) * hd;
        const int *ks = kv_start + (size_t)b * T;
        for (int t = 0; t < T; t++) {
            memset(dK + (size_t)t * QKV, 0, hd * sizeof(float));
            memset(dV + (size_t)t * QKV, 0, hd * sizeof(float));
        }
        for (int h = g * group; h < (g + 1) * group; h++) {
            const float *Q = base + h * hd;
            const float *O = out + (size_t)b * T * ldo + h * hd, *dO = dout + (size_t)b * T * ldo + h * hd;
            float *dQ = dbase + h * hd;
            const float *l = lse + ((size_t)b * H + h) * T;
            for (int i0 = 0; i0 < T; i0 += ATTN_BQ) {
                int m = T - i0 < ATTN_BQ ? T - i0 : ATTN_BQ;
                int jlo = block_kv_lo(ks, i0, m), nj = i0 + m - jlo;
                block_probs(P, Q, K, QKV, hd, scale, i0, m, jlo, nj, ks, l, NULL);
                model_gemm(0, 1, m, nj, hd, 1, dO + (size_t)i0 * ldo, ldo, V + (size_t)jlo * QKV, QKV, 0, dS, nj);
                for (int i = 0; i < m; i++) { /* dS = P * (dP - rowsum(dO * O)) */
                    const float *o = O + (size_t)(i0 + i) * ldo, *dout_i = dO + (size_t)(i0 + i) * ldo;
                    float Di = 0;
                    for (int d = 0; d < hd; d++) Di += o[d] * dout_i[d];
                    float *ds = dS + (size_t)i * nj;
                    const float *p = P + (size_t)i * nj;
                    for (int j = 0; j < nj; j++) ds[j] = p[j] * (ds[j] - Di);
                }
                model_gemm(0, 0, m, hd, nj, scale, dS, nj, K + (size_t)jlo * QKV, QKV, 0, dQ + (size_t)i0 * QKV, QKV);
                model_gemm(1, 0, nj, hd, m, scale, dS, nj, Q + (size_t)i0 * QKV, QKV, 1, dK + (size_t)jlo * QKV, QKV);
                model_gemm(1, 0, nj, hd, m, 1, P, nj, dO + (size_t)i0 * ldo, ldo, 1, dV + (size_t)jlo * QKV, QKV);
            }
        }
    }
}
