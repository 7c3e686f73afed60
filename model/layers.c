/* layers: RMSNorm, RoPE, q/k norms, biases. Plain loops the compiler vectorises, OpenMP over tokens. */
#include "model/layers.h"

#include <math.h>
#include <string.h>

void model_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int N, int D, float eps)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * D;
        float *yn = y + (size_t)n * D;
        float ss = model_row_dot(xn, xn, NULL, D);
        float r = 1.0f / sqrtf(ss / D + eps);
        rstd[n] = r;
        for (int d = 0; d < D; d++) yn[d] = w[d] * (xn[d] * r);
    }
}

void model_rmsnorm_apply(float *y, const float *x, const float *rstd, const float *w, int N, int D)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * D;
        float *yn = y + (size_t)n * D, r = rstd[n];
        for (int d = 0; d < D; d++) yn[d] = w[d] * (xn[d] * r);
    }
}

/* With u = x*r: dx = r * (w*dy - u * mean(w*dy*u)); dw = sum_n dy*u.
 * dw is summed over n in a fixed order (parallel over columns), so results are bitwise
 * reproducible whatever the thread timing: resumed runs must match uninterrupted ones. */
void model_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                            const float *rstd, int N, int D)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * D, *dyn = dy + (size_t)n * D;
        float *dxn = dx + (size_t)n * D;
        float r = rstd[n], dot = model_row_dot(w, dyn, xn, D);
        dot *= r / D;
        for (int d = 0; d < D; d++) dxn[d] += r * (w[d] * dyn[d] - xn[d] * r * dot);
    }
    if (!dw) return;
    enum { COLS = 64 };
#pragma omp parallel for schedule(static)
    for (int d0 = 0; d0 < D; d0 += COLS) {
        int d1 = d0 + COLS < D ? d0 + COLS : D;
        for (int n = 0; n < N; n++) {
            const float *xn = x + (size_t)n * D, *dyn = dy + (size_t)n * D;
            float r = rstd[n];
            for (int d = d0; d < d1; d++) dw[d] += dyn[d] * xn[d] * r;
        }
    }
}

void attn_rope(float *qkv, const int *pos, const float *cos_t, const float *sin_t, int N, int H, int KV, int hd,
               int inverse)
{
    int half = hd / 2, QKV = (H + 2 * KV) * hd;
    float sgn = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *c = cos_t + (size_t)pos[n] * half, *s = sin_t + (size_t)pos[n] * half;
        float *row = qkv + (size_t)n * QKV;
        for (int h = 0; h < H + KV; h++) { /* q heads then k heads: contiguous */
            float *x = row + h * hd;
            for (int i = 0; i < half; i++) {
                float a = x[i], b = x[i + half], si = sgn * s[i];
                x[i] = a * c[i] - b * si;
                x[i + half] = b * c[i] + a * si;
            }
        }
    }
}

void model_groupnorm_forward(float *y, float *rstd, const float *x, int ld, int c0, int ng, int g, const float *w,
                             int N, float eps)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        for (int h = 0; h < ng; h++) {
            const float *xh = x + (size_t)n * ld + c0 + (size_t)h * g;
            float *yh = y + (size_t)n * ld + c0 + (size_t)h * g;
            float ss = model_row_dot(xh, xh, NULL, g);
            float r = 1.0f / sqrtf(ss / g + eps);
            rstd[(size_t)n * ng + h] = r;
            for (int d = 0; d < g; d++) yh[d] = w[d] * (xh[d] * r);
        }
}

/* As model_rmsnorm_backward, per group: dx = r * (w*dy - u * mean(w*dy*u)), u = x*r. */
void model_groupnorm_backward(float *dx, float *dw, const float *dy, const float *x, int ld, int c0, int ng, int g,
                              const float *w, const float *rstd, int N)
{
    if (dw) { /* before dx: dx may overwrite dy */
        enum { COLS = 64 };
#pragma omp parallel for schedule(static)
        for (int d0 = 0; d0 < g; d0 += COLS) {
            int d1 = d0 + COLS < g ? d0 + COLS : g;
            for (int n = 0; n < N; n++)
                for (int h = 0; h < ng; h++) {
                    size_t o = (size_t)n * ld + c0 + (size_t)h * g;
                    float r = rstd[(size_t)n * ng + h];
                    for (int d = d0; d < d1; d++) dw[d] += dy[o + d] * x[o + d] * r;
                }
        }
    }
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        for (int h = 0; h < ng; h++) {
            size_t o = (size_t)n * ld + c0 + (size_t)h * g;
            const float *xh = x + o, *dyh = dy + o;
            float *dxh = dx + o;
            float r = rstd[(size_t)n * ng + h], dot = model_row_dot(w, dyh, xh, g);
            dot *= r / g;
            for (int d = 0; d < g; d++) dxh[d] = r * (w[d] * dyh[d] - xh[d] * r * dot);
        }
}

void model_bias_add(float *y, int ld, const float *b, int n, int N)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++)
        for (int j = 0; j < n; j++) y[(size_t)r * ld + j] += b[j];
}

void model_bias_backward(float *db, const float *dy, int ld, int n, int N)
{
    enum { COLS = 64 };
#pragma omp parallel for schedule(static)
    for (int j0 = 0; j0 < n; j0 += COLS) {
        int j1 = j0 + COLS < n ? j0 + COLS : n;
        for (int r = 0; r < N; r++)
            for (int j = j0; j < j1; j++) db[j] += dy[(size_t)r * ld + j];
    }
}
