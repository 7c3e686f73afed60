/* layers: the kernels of one decoder block and its head, each a forward/backward pair.
 * Internal to model/ (model.h is the public API). N = B*T tokens, rows are tokens.
 * Backward functions ADD into their input-gradient outputs (residual streams sum) and
 * into weight gradients; a NULL weight gradient means "frozen, skip it". */
#ifndef MOET_LAYERS_H
#define MOET_LAYERS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

/* ---- RMSNorm: y = w * x / sqrt(mean(x^2) + eps). x, y (N,D); w (D); rstd (N). */
void model_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int N, int D, float eps);
/* y = w * x * rstd with the rstd forward saved: the same floats forward wrote (the
 * backward pass recomputes normalised inputs instead of keeping them per layer). */
void model_rmsnorm_apply(float *y, const float *x, const float *rstd, const float *w, int N, int D);
/* dx (N,D) += d/dx; dw (D) += d/dw (NULL: skip). */
void model_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                            const float *rstd, int N, int D);

/* ---- RMSNorm over groups inside rows (the q/k norms): columns [c0, c0 + ng*g) of each row of
 * x (N, ld) form ng groups of g floats, each normalised on its own with the same weight w (g):
 * Qwen3-MoE's per-head norm is ng = heads, g = head_dim; OLMoE's whole-projection norm ng = 1.
 * y may be x (in place); rstd (N, ng). */
void model_groupnorm_forward(float *y, float *rstd, const float *x, int ld, int c0, int ng, int g, const float *w,
                             int N, float eps);
/* dx := d/dx (written, may alias dy) from dy, the norm's input x and rstd; dw += (NULL: skip),
 * summed in a fixed order. */
void model_groupnorm_backward(float *dx, float *dw, const float *dy, const float *x, int ld, int c0, int ng, int g,
                              const float *w, const float *rstd, int N);
/* y (N, ld) columns [0, n) += b (n) */
void model_bias_add(float *y, int ld, const float *b, int n, int N);
/* db (n) += column sums of dy (N, ld) columns [0, n), in a fixed order. */
void model_bias_backward(float *db, const float *dy, int ld, int n, int N);

/* ---- RoPE, rotate_half convention, in place on the q and k parts of qkv (N, QKV) where
 * QKV = (H + 2*KV) * hd and each row is [q heads | k heads | v heads].
 * pos (N) positions; cos/sin tables (P, hd/2). inverse = 1 applies the transpose
 * (used on gradients). */
void attn_rope(float *qkv, const int *pos, const float *cos_t, const float *sin_t, int N, int H, int KV, int hd,
               int inverse);

/* ---- Causal GQA attention on qkv (N, QKV), fused per tile of ATTN_BQ queries and blocks of
 * ATTN_BK keys (online softmax): never holds more than a block of scores per thread.
 * Row n = b*T + t attends keys t' in [kv_start[n], t].
 * out (N, H*hd); lse (B, H, T) log-sum-exp of scaled scores (kept for backward).
 * scratch: attn_scratch_floats(T, hd) per thread. */
#define ATTN_BQ 48
#define ATTN_BK 64
size_t attn_scratch_floats(int T, int hd);
void attn_forward(float *out, float *lse, const float *qkv, const int *kv_start, int B, int T, int H, int KV,
                  int hd, float *scratch);
/* dqkv (N, QKV) is OVERWRITTEN (q, k and v parts) with the gradient wrt qkv. */
void attn_backward(float *dqkv, const float *dout, const float *out, const float *qkv, const float *lse,
                   const int *kv_start, int B, int T, int H, int KV, int hd, float *scratch);

/* ---- small helpers */
/* expf that GCC vectorises (glibc's expf is a scalar call): Cody-Waite reduction
 * x = n ln2 + r, |r| <= ln2/2, and a degree-7 Taylor polynomial for e^r; relative error
 * below 2e-7 over [-87, 88] (checked against exp() in tests/test_layers.c), e^-87.3 below,
 * e^88 above (+inf too), NaN for NaN: a diverging run's NaN reaches the loss, where the
 * trainer stops on it (the clamp alone lets NaN through to an undefined (int) cast). */
static inline float model_expf(float x)
{
    float c = x < -87.33654f ? -87.33654f : x > 88.0f ? 88.0f : x;
    c = c == c ? c : 0.0f; /* NaN: compute with 0, return the NaN below */
    float n = __builtin_rintf(c * 1.44269504088896341f);
    float r = c - n * 0.693145751953125f; /* ln2 split in two for an exact product */
    r = r - n * 1.42860682030941723212e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        int i;
        float f;
    } u = {.i = ((int)n + 127) << 23};
    return x == x ? p * u.f : x;
}

/* Row reductions GCC vectorises: a plain `m = z > m ? z : m` or `s += e` loop is a serial
 * dependence it may not reorder (no -ffast-math), so these keep MODEL_LANES independent
 * partial results and combine them at the end (a fixed order: results are reproducible). */
#define MODEL_LANES 16
static inline float model_row_max(const float *z, int n)
{
    float m[MODEL_LANES];
    int v = 0;
    for (int j = 0; j < MODEL_LANES; j++) m[j] = z[0];
    for (; v + MODEL_LANES <= n; v += MODEL_LANES)
        for (int j = 0; j < MODEL_LANES; j++) m[j] = z[v + j] > m[j] ? z[v + j] : m[j];
    float mx = m[0];
    for (int j = 1; j < MODEL_LANES; j++) mx = m[j] > mx ? m[j] : mx;
    for (; v < n; v++) mx = z[v] > mx ? z[v] : mx;
    return mx;
}

/* sum over d of a[d] b[d] (c[d] when c is not NULL): RMSNorm's sum of squares and its
 * backward's dot, once a chain of D dependent adds per row (0.25 ms a pass on tiny's 2048 x 256) */
static inline float model_row_dot(const float *a, const float *b, const float *c, int n)
{
    float acc[MODEL_LANES] = {0};
    int v = 0;
    if (c)
        for (; v + MODEL_LANES <= n; v += MODEL_LANES)
            for (int j = 0; j < MODEL_LANES; j++) acc[j] += a[v + j] * b[v + j] * c[v + j];
    else
        for (; v + MODEL_LANES <= n; v += MODEL_LANES)
            for (int j = 0; j < MODEL_LANES; j++) acc[j] += a[v + j] * b[v + j];
    float s = acc[0];
    for (int j = 1; j < MODEL_LANES; j++) s += acc[j];
    for (; v < n; v++) s += c ? a[v] * b[v] * c[v] : a[v] * b[v];
    return s;
}

/* sum over v of exp(z[v] - shift), in double; with store, z[v] := exp(z[v] - shift). */
static inline double model_row_expsum(float *z, int n, float shift, int store)
{
    double acc[MODEL_LANES] = {0};
    int v = 0;
    for (; v + MODEL_LANES <= n; v += MODEL_LANES)
        for (int j = 0; j < MODEL_LANES; j++) {
            float e = model_expf(z[v + j] - shift);
            if (store) z[v + j] = e;
            acc[j] += e;
        }
    double s = 0;
    for (int j = 0; j < MODEL_LANES; j++) s += acc[j];
    for (; v < n; v++) {
        float e = model_expf(z[v] - shift);
        if (store) z[v] = e;
        s += e;
    }
    return s;
}

/* A score row s (n) of causal attention turned into probabilities: columns outside
 * [lo, hi] become 0, the rest softmax(s[lo..hi]). Returns the row's log-sum-exp. */
static inline float model_softmax_span(float *s, int n, int lo, int hi)
{
    for (int j = 0; j < lo; j++) s[j] = 0;
    for (int j = hi + 1; j < n; j++) s[j] = 0;
    int w = hi - lo + 1;
    float mx = model_row_max(s + lo, w);
    double sum = model_row_expsum(s + lo, w, mx, 1);
    float inv = (float)(1.0 / sum);
    for (int j = lo; j <= hi; j++) s[j] *= inv;
    return mx + (float)log(sum);
}

/* C (M,N) = alpha * op(A) op(B) + beta * C, row-major, on moet's kernels or OpenBLAS by the
 * policy of model/gemm.c. */
void model_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                int ldb, float beta, float *C, int ldc);
/* The own kernels' per-thread buffers, for omp_get_max_threads() threads; until this is
 * called every product runs on OpenBLAS. Call before a step (it allocates). */
int model_gemm_reserve(char *err);
/* One line: which kernels run which products. */
const char *model_gemm_describe(void);
/* 1 when the policy gives C (M, N) = op(A) op(B) (ta, tb; ldb; a bf16 B with bf16) to moet's
 * own kernels, 0 for OpenBLAS; inside: called in a parallel region (make bench's table) */
int model_gemm_uses_own(int inside, int ta, int tb, int M, int N, int K, int ldb, int bf16);
/* Threads an fp32 OpenBLAS product (M, N, K) made at the top level is split over (over M, one
 * single-threaded call each), 0 when OpenBLAS's own threads run it (make bench's table) */
int model_gemm_split_parts(int M, int N, int K);

/* Products with a weight matrix W (N rows, K cols) of any store (model/gemm.c); T holds the
 * widening tiles of a 16-bit store (unused for fp32).
 * Y (M, ldy) = alpha * X (M, K) W^T + beta * Y */
void model_mm_xwt(const model_tiles *T, int M, float alpha, const float *X, int ldx, const model_mat *W, float beta,
                  float *Y, int ldy);
/* dX (M, lddx) = alpha * dY (M, N) W + beta * dX */
void model_mm_xw(const model_tiles *T, int M, float alpha, const float *dY, int lddy, const model_mat *W, float beta,
                 float *dX, int lddx);
/* Rows [r0, *r1) of W as fp32 (ld = K), *r1 <= r0 + want: a pointer into W when it is
 * fp32 (the rows of r0's part), else those rows widened into the caller's tile (as many as
 * it holds; threaded outside a parallel region), valid until the tile's next use. */
const float *model_mat_block(const model_tiles *T, const model_mat *W, int r0, int want, int *r1);
/* Row r of W as fp32 (K floats). */
void model_mat_row(const model_mat *W, int r, float *dst);
/* Rows of lm_head per block of the one-pass head (model/forward.c head_frozen). */
#define MODEL_HEAD_VB 2048
/* Floats one thread's tile needs for every low-precision matrix of m. */
size_t model_gemm_tile_floats(const model *m);

#endif

/* ---- Mixture of experts. k = top_k, Nk = N*k routed rows. */
struct lora;
/* LoRA adapters on the experts of one layer (NULL sites: none); xa* (Nk, r) saved. */
typedef struct {
    struct lora *lo;
    const void *w1, *w2, *w3; /* const lora_site * */
    float *xa1, *xa2, *xa3;
} moe_lora;
/* Router: logits (N,E) = xn (N,D) Wg^T; probs (N,E) = softmax; topi/topw (N,k) the top-k
 * experts and their probabilities, renormalised to sum 1 when norm_topk; counts (E) += picks. */
void moe_route(float *logits, float *probs, int *topi, float *topw, int *counts, const float *xn, const float *Wg,
               int N, int D, int E, int k, int norm_topk);
/* Counting sort of the (token, slot) pairs by expert: off (E+1) row ranges, row_tok (Nk)
 * token of each sorted row, slot_row (Nk) sorted row of pair n*k+j. */
void moe_sort(int *off, int *row_tok, int *slot_row, const int *topi, int N, int E, int k);
/* Experts, one GEMM per expert over its contiguous rows: xs (Nk,D) gathered inputs,
 * h13 (Nk,2F) = xs W13^T (saved), act (Nk,F) = silu(h1)*h3 (scratch), ye (Nk,D) = act W2^T
 * (scratch); out (N,D) += sum_j topw[n,j] * ye[slot_row[n,j]], or out = res + that sum when
 * res is not NULL (the residual, read instead of copied first). w13, w2: [E] matrices
 * (2F x D and D x F); T: their widening tiles. A dense MLP (or shared expert) is the case
 * E = k = 1 with off = {0, N}, identity row_tok / slot_row and topw its per-row weight. */
void moe_experts_forward(const model_tiles *T, float *out, float *h13, float *ye, float *xs, float *act,
                         const float *xn, const model_mat *w13, const model_mat *w2, const int *off,
                         const int *row_tok, const int *slot_row, const float *topw, int N, int D, int F, int E, int k,
                         const moe_lora *ml, const float *res);
/* Backward of the experts and of the weighted combine, without the forward's ye (it is
 * scratch there): dL/dtopw = <dout, ye> is computed as <dout W2, act>. dtopw (N,k) =
 * dL/dtopw; dxn (N,D) += input gradient (= with set: dxn need not be zeroed first); dw13/dw2 +=
 * weight gradients (NULL: frozen; fp32 [E][2F,D] and [E][D,F]). h13 is OVERWRITTEN with
 * dL/dh13 (it is not needed after this; saves a (Nk,2F) buffer). Scratch: xs (Nk,D), act (Nk,F),
 * dys (Nk,D), g (Nk,F), rows (2 Nk). */
void moe_experts_backward(const model_tiles *T, float *dxn, float *dw13, float *dw2, float *dtopw, const float *dout,
                          float *h13, const float *xn, const model_mat *w13, const model_mat *w2, const int *off,
                          const int *row_tok, const int *slot_row, const float *topw, float *xs, float *act,
                          float *dys, float *g, float *rows, int N, int D, int F, int E, int k, const moe_lora *ml,
                          int set);
/* Router backward: from dtopw through the renormalisation (norm_topk) and softmax, plus the aux loss
 * (dL/dprobs[n,e] += aux_dp[e] for every row) and z-loss (z_w * 2 * lse * p per row).
 * dlogits (N,E) scratch; dWg (E,D) += (NULL: frozen); dxn (N,D) += dlogits Wg. */
void moe_router_backward(float *dxn, float *dWg, float *dlogits, const float *dtopw, const float *logits,
                         const float *probs, const int *topi, const float *topw, const float *aux_dp, float z_w,
                         const float *xn, const float *Wg, int N, int D, int E, int k, int norm_topk);
