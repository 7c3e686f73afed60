/* par: OpenMP loops for helpers that may run inside a parallel region.
 *
 * libgomp keeps a team between regions only when it has several threads and is not nested;
 * a nested region (a helper called by experts that run side by side on the cores) or a
 * one-thread region allocates and frees its team each time, even when an if() clause turns
 * it off. PAR_FOR runs the loop inline in those cases instead of opening a region, so a
 * training step makes no allocation (tests/test_noalloc.c) and pays no team start-up.
 *
 *   PAR_FOR(schedule(static), r, r0, r1, body...)  ==  for (int r = r0; r < r1; r++) { body }
 *   split over the threads with "#pragma omp parallel for schedule(static)" when at top level. */
#ifndef MOET_PAR_H
#define MOET_PAR_H

#include <omp.h>
#include <string.h>

/* 1 when a loop should run inline: inside any parallel region, or with one thread */
static inline int par_inline(void) { return omp_get_level() > 0 || omp_get_max_threads() < 2; }

#define PAR_PRAGMA_(x) _Pragma(#x)
#define PAR_FOR(clauses, i, lo, hi, ...)                                                        \
    do {                                                                                        \
        int par_lo_ = (lo), par_hi_ = (hi);                                                     \
        if (par_inline()) {                                                                     \
            for (int i = par_lo_; i < par_hi_; i++) { __VA_ARGS__ }                             \
        } else {                                                                                \
            PAR_PRAGMA_(omp parallel for clauses)                                               \
            for (int i = par_lo_; i < par_hi_; i++) { __VA_ARGS__ }                             \
        }                                                                                       \
    } while (0)

/* PAR_ROWS(a, b, lo, hi, body...): body once on the rows [a, b) = [lo, hi) where a loop runs
 * inline, else once per thread on its contiguous share (as schedule(static) splits them): for
 * kernels that walk many rows in order and fetch the next row ahead (model/kern.h SwiGLU). */
#define PAR_ROWS(a, b, lo, hi, ...)                                                             \
    do {                                                                                        \
        int par_lo_ = (lo), par_n_ = (hi) - par_lo_;                                            \
        if (par_inline()) {                                                                     \
            int a = par_lo_, b = par_lo_ + par_n_;                                              \
            __VA_ARGS__                                                                         \
        } else {                                                                                \
            _Pragma("omp parallel")                                                             \
            {                                                                                   \
                int par_t_ = omp_get_thread_num(), par_T_ = omp_get_num_threads();              \
                int a = par_lo_ + (int)((long)par_n_ * par_t_ / par_T_);                        \
                int b = par_lo_ + (int)((long)par_n_ * (par_t_ + 1) / par_T_);                  \
                __VA_ARGS__                                                                     \
            }                                                                                   \
        }                                                                                       \
    } while (0)

/* par_zero / par_copy: memset / memcpy of n floats split over the threads in equal contiguous
 * parts (one thread's memset does not fill the memory bandwidth: 720 MB of gradients took 30 ms
 * on one core of a 2-core EPYC, 18 on two); one call where loops run inline or n is small. */
static inline void fill_part(float *dst, const float *src, size_t o, size_t len)
{
    if (src)
        memcpy(dst + o, src + o, len * sizeof *dst);
    else
        memset(dst + o, 0, len * sizeof *dst);
}

static inline void par_fill(float *dst, const float *src, size_t n)
{
    if (par_inline() || n < ((size_t)1 << 18)) {
        fill_part(dst, src, 0, n);
        return;
    }
#pragma omp parallel
    {
        size_t t = (size_t)omp_get_thread_num(), T = (size_t)omp_get_num_threads(), o = n / T * t;
        fill_part(dst, src, o, t + 1 == T ? n - o : n / T);
    }
}

static inline void par_zero(float *p, size_t n) { par_fill(p, NULL, n); }
static inline void par_copy(float *dst, const float *src, size_t n) { par_fill(dst, src, n); }

#endif
