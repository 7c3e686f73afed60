/* clock: wall seconds on the monotonic clock (progress lines, tokens/s, benchmarks); only
 * differences between two readings mean anything. Header-only: the bench tools that time
 * OpenBLAS alone include it without linking libmoet. */
#ifndef MOET_CLOCK_H
#define MOET_CLOCK_H

#include <time.h>

static inline double clock_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
