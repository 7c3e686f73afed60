/* half: bf16 / f16 conversions (scalar, exact) and the row widening used before GEMMs. */
#include "common/half.h"

#include <math.h>
#include <string.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

static uint32_t f2u(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static float u2f(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

uint16_t half_f32_to_bf16(float x)
{
    uint32_t u = f2u(x);
    if (isnan(x)) return 0x7FC0;                     /* as torch: canonical quiet NaN */
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

float half_bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t half_f32_to_f16(float x)
{
    uint32_t u = f2u(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7FFFFFFF;
    if (a >= 0x7F800000) {                           /* inf, or NaN keeping its top bits */
        if (a == 0x7F800000) return sign | 0x7C00;
        return sign | 0x7E00 | (uint16_t)((a >> 13) & 0x3FF);
    }
    if (a >= 0x477FF000) return sign | 0x7C00;       /* >= 65520 rounds to inf */
    if (a >= 0x38800000) {                           /* normal half: rebias, round */
        uint32_t r = a - (112u << 23);
        return sign | (uint16_t)((r + 0xFFF + ((r >> 13) & 1)) >> 13);
    }
    if (a < 0x33000000) return sign;                 /* <= 2^-25: rounds to zero */
    /* Subnormal half: value / 2^-24 = mant * 2^(e-126), rounded to nearest even. */
    uint32_t e = a >> 23, mant = (a & 0x7FFFFF) | 0x800000;
    int s = 126 - (int)e;                            /* 14..24 */
    uint32_t q = mant >> s, rem = mant & ((1u << s) - 1), half = 1u << (s - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return sign | (uint16_t)q;
}

float half_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1F, m = h & 0x3FF;
    if (e == 0) {                                    /* zero / subnormal: m * 2^-24 */
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    if (e == 31) return u2f(sign | 0x7F800000 | (m << 13));
    return u2f(sign | ((e + 112) << 23) | (m << 13));
}

void half_widen_bf16(float *restrict dst, const void *restrict src, size_t n)
{
    const unsigned char *s = src;
    uint32_t *d = (uint32_t *)dst;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        d[i] = (uint32_t)h << 16;
    }
}

void half_widen_f16(float *restrict dst, const void *restrict src, size_t n)
{
    const unsigned char *s = src;
    size_t i = 0;
#ifdef __F16C__
    for (; i + 8 <= n; i += 8) /* vcvtph2ps is exact, subnormals included */
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 2 * i))));
#endif
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        dst[i] = half_f16_to_f32(h);
    }
}

long half_first_nonfinite(const void *src, size_t n, int is_bf16)
{
    const unsigned char *s = src;
    uint16_t mask = is_bf16 ? 0x7F80 : 0x7C00; /* exponent all ones: inf or NaN */
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        if ((h & mask) == mask) return (long)i;
    }
    return -1;
}
