/* kern_avx2: model/kern.h's kernels on AVX2 + FMA: 6 x 16 and 12 x 8 tiles. */
#pragma GCC target("avx2,fma,f16c")
#include "model/kern.h"

#include <immintrin.h>

typedef __m256 V;
typedef __m256i VM;
#define VL 8
#define MR 6
#define MRN 12
#define ROWS_MR(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define ROWS_MRN(X) ROWS_MR(X) X(6) X(7) X(8) X(9) X(10) X(11)
#define KN(name) kern256_##name

static inline VM vmask(int n)
{
    static const int32_t t[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i *)(t + 8 - (n > 8 ? 8 : n)));
}
#define vzero _mm256_setzero_ps
#define vset1 _mm256_set1_ps
#define vload _mm256_loadu_ps
#define vstore _mm256_storeu_ps
#define vloadm(p, m) _mm256_maskload_ps((p), (m))
#define vstorem(p, m, v) _mm256_maskstore_ps((p), (m), (v))
#define vfma _mm256_fmadd_ps
#define vmul _mm256_mul_ps
#define vdiv _mm256_div_ps
#define vload_tail(p, n) _mm256_maskload_ps((p), vmask(n))
#define vadd _mm256_add_ps
#define vsub _mm256_sub_ps
#define vmax _mm256_max_ps
#define vmin _mm256_min_ps
#define vround(x) _mm256_round_ps((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vsel(m, a, b) _mm256_blendv_ps((b), (a), _mm256_castsi256_ps(m))
static inline float vhmax(V x)
{
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}
#define vfirst _mm256_cvtss_f32
/* lanes summed in a fixed tree: l + (l + 4), then + 2, + 1 */
static inline float vhsum(V x)
{
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(b, _mm_movehdup_ps(b)));
}
static inline V vpow2i(V n)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
static inline V vscale2(V p, V n) { return vmul(p, vpow2i(n)); } /* p 2^n */
static inline VM visnan(V x) { return _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)); }
static inline VM vspan(int j0, int lo, int hi)
{
    __m256i j = _mm256_add_epi32(_mm256_set1_epi32(j0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_and_si256(_mm256_cmpgt_epi32(j, _mm256_set1_epi32(lo - 1)),
                            _mm256_cmpgt_epi32(_mm256_set1_epi32(hi + 1), j));
}

static inline V vwiden(const void *p, int dt)
{
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (dt == KERN_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline void vtrans(V r[8])
{
    V t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 2; g++) {
        u[4 * g] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        u[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0xee);
        u[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        u[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xee);
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

#include "model/kern_tmpl.h"
