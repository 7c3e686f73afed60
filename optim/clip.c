/* clip: global L2 norm in double, then one scale of the whole buffer. */
#include "optim/clip.h"

#include <math.h>

double clip_sumsq(const float *g, size_t n)
{
    double ss = 0.0;
    #pragma omp parallel for simd schedule(static) reduction(+:ss)
    for (size_t i = 0; i < n; i++) ss += (double)g[i] * (double)g[i];
    return ss;
}

double clip_norm(const float *g, size_t n) { return sqrt(clip_sumsq(g, n)); }

float clip_coef(double norm, double max_norm)
{
    if (!isfinite(norm) || max_norm <= 0) return 1.0f;
    double coef = max_norm / (norm + 1e-6);
    return coef < 1.0 ? (float)coef : 1.0f;
}

double clip_grad_norm(float *g, size_t n, double max_norm)
{
    double norm = clip_norm(g, n);
    const float c = clip_coef(norm, max_norm);
    if (c != 1.0f) {
        #pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) g[i] *= c;
    }
    return norm;
}
