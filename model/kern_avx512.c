/* kern_avx512: model/kern.h's kernels on AVX-512 (F, BW, DQ, VL): 12 x 32 and 24 x 16 tiles. */
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma,f16c")
#include "model/kern.h"

#include <immintrin.h>

typedef __m512 V;
typedef __mmask16 VM;
#define VL 16
#define MR 12
#define MRN 24
#define ROWS_MR(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define ROWS_MRN(X) ROWS_MR(X) X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23)
#define KN(name) kern512_##name

static inline VM vmask(int n) { return n >= 16 ? (VM)0xffff : (VM)((1u << n) - 1); }
#define vzero _mm512_setzero_ps
#define vset1 _mm512_set1_ps
#define vload _mm512_loadu_ps
#define vstore _mm512_storeu_ps
#define vloadm(p, m) _mm512_maskz_loadu_ps((m), (p))
#define vstorem(p, m, v) _mm512_mask_storeu_ps((p), (m), (v))
#define vfma _mm512_fmadd_ps
#define vmul _mm512_mul_ps
#define vdiv _mm512_div_ps
#define vload_tail(p, n) _mm512_maskz_loadu_ps(vmask(n), (p))
#define vadd _mm512_add_ps
#define vsub _mm512_sub_ps
#define vmax _mm512_max_ps
#define vmin _mm512_min_ps
#define vround(x) _mm512_roundscale_ps((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vsel(m, a, b) _mm512_mask_blend_ps((m), (b), (a)) /* m ? a : b per lane */
#define vhmax _mm512_reduce_max_ps
#define vfirst _mm512_cvtss_f32
/* lanes summed in a fixed tree: l + (l + 8), then + 4, + 2, + 1 */
static inline float vhsum(V x)
{
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(b, _mm_movehdup_ps(b)));
}
/* p 2^n in one instruction: the same result as p times 2^n built in the exponent bits (both
 * round the exact product once), four instructions fewer in every exponential */
#define vscale2 _mm512_scalef_ps
static inline VM visnan(V x) { return _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q); }
/* lanes j0 + l (l < 16) inside [lo, hi] */
static inline VM vspan(int j0, int lo, int hi)
{
    int a = lo - j0, b = hi - j0 + 1;
    a = a < 0 ? 0 : a > 16 ? 16 : a;
    b = b < 0 ? 0 : b > 16 ? 16 : b;
    return b > a ? (VM)(vmask(b) & ~vmask(a)) : (VM)0;
}

static inline V vwiden(const void *p, int dt)
{
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    if (dt == KERN_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* 16 x 16 transpose: 32-bit, then 64-bit interleaves inside 128-bit lanes, then a 4 x 4
 * transpose of the lanes */
static inline void vtrans(V r[16])
{
    V t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 4; g++) { /* u[4g + c]: column 4L + c of rows 4g..4g+3 in lane L */
        __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 2]);
        __m512d c = _mm512_castps_pd(t[4 * g + 1]), d = _mm512_castps_pd(t[4 * g + 3]);
        r[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    for (int c = 0; c < 4; c++) { /* out[4L + c] lane g = u[4g + c] lane L */
        V x0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), x1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
        V x2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88), x3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
        t[c] = _mm512_shuffle_f32x4(x0, x2, 0x88);
        t[8 + c] = _mm512_shuffle_f32x4(x0, x2, 0xdd);
        t[4 + c] = _mm512_shuffle_f32x4(x1, x3, 0x88);
        t[12 + c] = _mm512_shuffle_f32x4(x1, x3, 0xdd);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

#include "model/kern_tmpl.h"
