/* adamw: torch.optim.AdamW over flat buffers.  The scalar coefficients are computed in
 * double and rounded to float once, and each element follows the association of torch's
 * kernels (mul_, add_ alpha, addcmul_, sqrt / bc2_sqrt + eps, addcdiv_), so results agree
 * with torch bit for bit on an AVX2+FMA machine and to float rounding elsewhere. */
#include "optim/adamw.h"

#include <math.h>

/* torch's AVX2 kernels fuse add_(alpha) and addcmul_ into one FMA each; we do the same where
 * the FMA is an instruction, and fall back to two roundings (a few ulp off torch) elsewhere. */
#ifdef __FP_FAST_FMAF
#define FMA(a, b, c) fmaf(a, b, c)
#else
#define FMA(a, b, c) ((a) * (b) + (c))
#endif

/* p, g, m, v are (n,); decay_mul is 1 - lr*wd for decayed segments and exactly 1 otherwise
 * (torch multiplies by 1.0 too when wd = 0, so this changes nothing).
 * GCC vectorises this loop only under -fno-math-errno (else sqrtf may set errno; a function
 * attribute does not do it): about 5x faster on one core when it does. */
static inline void adamw_segment(float *restrict p, float *restrict g, float *restrict m,
                                 float *restrict v, size_t n, float decay_mul, float b1, float omb1,
                                 float b2, float omb2, float neg_step_size, float bc2_sqrt, float eps,
                                 float gscale, int zero_g)
{
    #pragma omp for simd schedule(static) nowait
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * gscale;
        if (zero_g) g[i] = 0; /* a constant in each caller: no branch in the loop */
        float mi = FMA(omb1, gi, b1 * m[i]);
        float vi = FMA(omb2 * gi, gi, b2 * v[i]);
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay_mul + neg_step_size * mi / denom;
    }
}

void adamw_step(const adamw_cfg *c, float *p, const float *g, float *m, float *v,
                const adamw_seg *segs, int nseg, int step, float lr)
{
    adamw_step_scaled(c, p, g, m, v, segs, nseg, step, lr, 1.0f);
}

/* zero_g: the gradient buffer is written (zeroed), else only read */
static void adamw_run(const adamw_cfg *c, float *p, float *g, float *m, float *v, const adamw_seg *segs,
                      int nseg, int step, float lr, float gscale, int zero_g)
{
    const double bc1 = 1.0 - pow(c->beta1, step);
    const double bc2 = 1.0 - pow(c->beta2, step);
    const float decay_mul = (float)(1.0 - (double)lr * c->weight_decay);
    const float b1 = (float)c->beta1, omb1 = (float)(1.0 - c->beta1);
    const float b2 = (float)c->beta2, omb2 = (float)(1.0 - c->beta2);
    const float neg_step_size = (float)(-((double)lr / bc1));
    const float bc2_sqrt = (float)sqrt(bc2);
    const float eps = (float)c->eps;

    /* Segments are independent: threads split each one and move on without a barrier. */
    #pragma omp parallel
    for (int s = 0; s < nseg; s++) {
        size_t o = segs[s].offset;
        if (zero_g)
            adamw_segment(p + o, g + o, m + o, v + o, segs[s].n, segs[s].decay ? decay_mul : 1.0f,
                          b1, omb1, b2, omb2, neg_step_size, bc2_sqrt, eps, gscale, 1);
        else
            adamw_segment(p + o, g + o, m + o, v + o, segs[s].n, segs[s].decay ? decay_mul : 1.0f,
                          b1, omb1, b2, omb2, neg_step_size, bc2_sqrt, eps, gscale, 0);
    }
}

void adamw_step_scaled(const adamw_cfg *c, float *p, const float *g, float *m, float *v,
                       const adamw_seg *segs, int nseg, int step, float lr, float gscale)
{
    adamw_run(c, p, (float *)g, m, v, segs, nseg, step, lr, gscale, 0); /* zero_g 0: g only read */
}

void adamw_step_consume(const adamw_cfg *c, float *p, float *g, float *m, float *v,
                        const adamw_seg *segs, int nseg, int step, float lr, float gscale)
{
    adamw_run(c, p, g, m, v, segs, nseg, step, lr, gscale, 1);
}

int adamw_segs_slice(const adamw_seg *segs, int nseg, size_t lo, size_t hi, adamw_seg *out)
{
    int k = 0;
    for (int s = 0; s < nseg; s++) {
        size_t a = segs[s].offset > lo ? segs[s].offset : lo, b = segs[s].offset + segs[s].n;
        if (b > hi) b = hi;
        if (a < b) out[k++] = (adamw_seg){a - lo, b - a, segs[s].decay};
    }
    return k;
}
