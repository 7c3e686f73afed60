/* st_check: weights must be finite.  A NaN or Inf in a checkpoint (a damaged file, or one
 * saved from a run that diverged) would otherwise only show up as a NaN loss, or as
 * garbage text from generate; refusing it on load names the tensor and the element. */
#include "checkpoints/st.h"
#include "common/err.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

enum { BLOCK = 4096 }; /* elements checked per vectorised sweep */

/* 1 if any element in [i0, i1) is not finite (F64: not finite as an fp32 either). */
static int block_bad(const st_tensor *t, int64_t i0, int64_t i1)
{
    const unsigned char *p = t->data;
    int bad = 0;
    switch (t->dtype) {
    case ST_F32:
        for (int64_t i = i0; i < i1; i++) {
            uint32_t w;
            memcpy(&w, p + 4 * i, 4);
            bad |= (w & 0x7F800000u) == 0x7F800000u; /* exponent all ones: inf or NaN */
        }
        break;
    case ST_BF16:
    case ST_F16: {
        uint16_t mask = t->dtype == ST_BF16 ? 0x7F80 : 0x7C00;
        for (int64_t i = i0; i < i1; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            bad |= (h & mask) == mask;
        }
        break;
    }
    case ST_F64:
        for (int64_t i = i0; i < i1; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            bad |= !(d >= -FLT_MAX && d <= FLT_MAX);
        }
        break;
    default:
        break;
    }
    return bad;
}

static double value_at(const st_tensor *t, int64_t i)
{
    const unsigned char *p = t->data;
    uint16_t h;
    float f;
    double d;
    switch (t->dtype) {
    case ST_F32: memcpy(&f, p + 4 * i, 4); return f;
    case ST_BF16: memcpy(&h, p + 2 * i, 2); return st_bf16_to_f32(h);
    case ST_F16: memcpy(&h, p + 2 * i, 2); return st_f16_to_f32(h);
    default: memcpy(&d, p + 8 * i, 8); return d;
    }
}

int st_check_finite(const st_tensor *t, char *err)
{
    if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16 && t->dtype != ST_F64) return 0;
    int64_t n = t->numel, nblk = (n + BLOCK - 1) / BLOCK, first = nblk;
    #pragma omp parallel for schedule(static) reduction(min : first) if (n > (1 << 22))
    for (int64_t b = 0; b < nblk; b++)
        if (block_bad(t, b * BLOCK, b * BLOCK + BLOCK < n ? b * BLOCK + BLOCK : n) && b < first) first = b;
    if (first == nblk) return 0;
    int64_t i = first * BLOCK;
    while (!block_bad(t, i, i + 1)) i++;
    double v = value_at(t, i);
    char what[64];
    if (isnan(v)) snprintf(what, sizeof what, "NaN");
    else if (isinf(v)) snprintf(what, sizeof what, "%s", v > 0 ? "inf" : "-inf");
    else snprintf(what, sizeof what, "%g, beyond fp32's range", v);
    return err_set(err, "tensor '%s': element %lld of %lld is %s (weights must be finite: a damaged file, or "
                        "one saved from a run that diverged?)",
                   err_q(t->name, -1), (long long)i, (long long)n, what);
}
