/* clip: global L2 norm in double, then one scale of the whole buffer. */
#include "optim/clip.h"

#include <math.h>

double clip_grad_norm(float *g, size_t n, double max_norm)
{
    double ss = 0.0;
    #pragma omp parallel for simd schedule(static) reduction(+:ss)
    for (size_t i = 0; i < n; i++) ss += (double)g[i] * (double)g[i];
    double norm = sqrt(ss);
    if (!isfinite(norm) || max_norm <= 0) return norm;
    double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
        const float c = (float)coef;
        #pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) g[i] *= c;
    }
    return norm;
}
