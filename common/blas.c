/* blas: runtime choice of OpenBLAS's AVX-512 kernels, with the configured core as fallback. */
#include "common/blas.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static int cpu_has_avx512(void)
{
    __builtin_cpu_init();
    /* libgcc also checks that the OS enabled the ZMM state (XCR0) for these */
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}

static int is_avx512_core(const char *ct)
{
    const char *cores[] = {"skylakex", "cooperlake", "sapphirerapids"};
    for (size_t i = 0; i < sizeof cores / sizeof *cores; i++)
        if (!strcasecmp(ct, cores[i])) return 1;
    return 0;
}

void blas_select_kernels(char **argv)
{
    const char *keep = getenv("MOET_BLAS");
    if ((keep && !strcmp(keep, "keep")) || getenv("MOET_BLAS_FROM")) return; /* opted out, or re-executed */
    const char *ct = getenv("OPENBLAS_CORETYPE");
    if (!cpu_has_avx512() || (ct && is_avx512_core(ct))) return;
    /* Unset, OpenBLAS 0.3.21 picks Cooperlake on AVX-512-BF16 CPUs, which is slower than
     * SkylakeX for fp32 (measured: tiny and small benches); AVX2 cores forfeit half the FMA width. */
    setenv("MOET_BLAS_FROM", ct ? ct : "(unset)", 1);
    setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
    execv("/proc/self/exe", argv);
    unsetenv("MOET_BLAS_FROM"); /* exec failed: carry on with the configured kernels */
    if (ct) setenv("OPENBLAS_CORETYPE", ct, 1);
    else unsetenv("OPENBLAS_CORETYPE");
}

void blas_describe(char *buf, size_t n)
{
    const char *core = openblas_get_corename();
    const char *from = getenv("MOET_BLAS_FROM");
    int par = openblas_get_parallel(); /* 0 serial, 1 pthreads, 2 OpenMP */
    const char *build = par == 2   ? "OpenMP build"
                        : par == 1 ? "pthread build: its threads and moet's compete"
                                   : "serial build";
    if (from)
        snprintf(buf, n, "OpenBLAS %s kernels (AVX-512, chosen at runtime over OPENBLAS_CORETYPE=%s; MOET_BLAS=keep "
                         "keeps it), %s, %d threads",
                 core, from, build, openblas_get_num_threads());
    else
        snprintf(buf, n, "OpenBLAS %s kernels, %s, %d threads", core, build, openblas_get_num_threads());
}
