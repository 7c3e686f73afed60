/* blas: which OpenBLAS kernels moet's matrix products run on.
 *
 * On a CPU with AVX-512 (F, BW, DQ, VL, and the OS saving ZMM state) moet runs
 * OpenBLAS's SkylakeX sgemm kernels even when OPENBLAS_CORETYPE names an AVX2 core
 * (Haswell, Zen): OpenBLAS picks its kernels once, when it is loaded, so main() re-executes
 * the binary with OPENBLAS_CORETYPE=SkylakeX before doing anything. MOET_BLAS=keep keeps
 * whatever OPENBLAS_CORETYPE says (the fallback path); CPUs without AVX-512 keep it too. */
#ifndef MOET_BLAS_H
#define MOET_BLAS_H

#include <stddef.h>

/* Called first thing in main: may execv() itself once; returns normally otherwise. */
void blas_select_kernels(char **argv);

/* One line describing the kernels in use, e.g.
 * "OpenBLAS SkylakeX kernels (AVX-512, chosen at runtime over OPENBLAS_CORETYPE=Haswell)". */
void blas_describe(char *buf, size_t n);

#endif
