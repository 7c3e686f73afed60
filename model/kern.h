/* kern: moet's own register-blocked GEMM kernels for the small and skinny products OpenBLAS
 * packs for little work (experts with tens to hundreds of rows, LoRA's rank-16 products, the
 * router, attention tiles), in AVX-512 and AVX2 builds of one template, picked at run time.
 *
 * Single-threaded, row-major C (M, N) = alpha op(A) op(B) + beta C. A is never copied: the
 * micro-kernel broadcasts its elements from wherever they are (rows, or columns of a
 * transposed A, or rows reached through an index). B is read in place when its rows run along
 * N (not transposed); otherwise (transposed, or 16-bit) it is packed block by block, widened
 * on the way, with in-register transposes. When A is the smaller operand of a transposed B
 * the kernel computes C^T instead (A packed, B broadcast). Every element is one FMA chain over
 * k in order, blocked over k the same way on every path, so results do not depend on the ISA
 * variant's tiling, the mode, or how a caller splits M and N over threads.
 *
 * Which products take these kernels and which OpenBLAS is model/gemm.c's policy. */
#ifndef MOET_KERN_H
#define MOET_KERN_H

#include <stddef.h>

enum { KERN_NONE, KERN_AVX2, KERN_AVX512 };   /* kernel sets */
enum { KERN_F32, KERN_BF16, KERN_F16 };       /* element types of B */

/* The kernel set in use: the best the CPU has, or MOET_ISA=avx2|avx512|none (never above what
 * the CPU has). Decided once. */
int kern_isa(void);
const char *kern_isa_name(int isa);

/* Floats of the per-call pack buffer kern_gemm needs (the largest block of B, or of A). */
size_t kern_pack_floats(void);

/* C = alpha op(A) op(B) + beta C; B holds bdt elements (a 16-bit B is widened exactly).
 * pack: kern_pack_floats() floats of scratch. beta == 0 never reads C. */
void kern_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const void *B, int ldb,
               int bdt, float beta, float *C, int ldc, float *pack);

/* C (M, N) = alpha sum_k a(i,k) B[k*ldb + j] + beta C with a(i,k) = A[i*rsa + k*csa] (rsa == 1
 * when csa != 1), everything read in place, k in one block: the short products of attention
 * tiles (k = head_dim or a block of keys). */
void kern_mm(int M, int N, int K, float alpha, const float *A, long rsa, long csa, const float *B, long ldb, float beta,
             float *C, long ldc);

/* The softmax passes of fused attention on one block of scores (rows ld apart, nk <= the
 * block's width, which is a whole number of vectors): row i sees keys [lo[i], hi[i]].
 * Forward: mnew[i] = max(mprev[i], visible scores), S := exp(S - mnew[i]) (0 where not visible),
 * sum[i] = the row's sum. Backward: P := exp(P - lse[i]) (0 where not visible), dS := P (dS - D[i]).
 * exp as model_expf (relative error under 2e-7). */
void kern_attn_block_fwd(float *S, long ld, int m, int nk, const int *lo, const int *hi, const float *mprev,
                         float *mnew, float *sum);
void kern_attn_block_bwd(float *P, float *dS, long ld, int m, int nk, const int *lo, const int *hi, const float *lse,
                         const float *D);

/* SwiGLU over rows of h13 = [h1 (F) | h3 (F)]: act (rows, F) = silu(h1) h3. Backward, in place:
 * h13 := dL/dh13 from dL/dact = g (times w[r] when w is not NULL); with act not NULL it also
 * rewrites act = silu(h1) h3 in the same pass. */
void kern_swiglu(float *act, const float *h13, int rows, int F);
void kern_swiglu_backward(float *act, float *h13, const float *g, const float *w, int rows, int F);

/* One row of logits z (n): returns log sum exp(z) (in double). With grad, z := scale * softmax(z).
 * Two passes over z: each chunk's max and exponentials while it is in L1, then one rescale
 * (the row max is never a pass of its own). */
double kern_ce_row(float *z, int n, float scale, int grad);

/* dst (cols x rows, row stride ldd) = src (rows x cols, row stride lds) transposed. */
void kern_transpose(float *dst, long ldd, const float *src, long lds, int rows, int cols);

/* dst rows (row stride ldd) = src rows (row stride lds), rows x cols: short rows (a head's
 * slice of a row) in vector moves, not a memcpy call per row. */
void kern_copy_rows(float *dst, long ldd, const float *src, long lds, int rows, int cols);

#endif
