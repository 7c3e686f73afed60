/* sgemm_peak: the MFU denominator of `make bench`.
 *
 * Times OpenBLAS cblas_sgemm (fp32, C = A*B, row-major, no transposes) on large
 * square matrices and prints the best GFLOP/s seen, counting 2*n^3 flops per call.
 * The thread count is whatever OpenBLAS picks from the environment (bench.sh sets
 * OMP_NUM_THREADS=2 and links the OpenMP build of OpenBLAS, as moet does).
 *
 * usage: sgemm_peak [N ...]      (default: 2048 4096)
 * stdout, one line per size then a summary the driver greps:
 *   sgemm n=2048 best_ms=... gflops=...
 *   peak_gflops=...
 *   blas=/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblasp-r0.3.21.so
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"

/* The OpenBLAS shared object this process really mapped (RUNPATH vs LD_LIBRARY_PATH). */
static void print_loaded_blas(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[4096];
    if (!f) { printf("blas=unknown\n"); return; }
    while (fgets(line, sizeof line, f)) {
        char *path = strchr(line, '/');
        if (path && strstr(path, "libopenblas")) {
            path[strcspn(path, "\n")] = 0;
            printf("blas=%s\n", path);
            fclose(f);
            return;
        }
    }
    fclose(f);
    printf("blas=unknown\n");
}

/* Best wall time of `reps` calls of an n x n x n sgemm, after one warm-up call. */
static double best_sgemm_s(int n, int reps)
{
    size_t nn = (size_t)n * n;
    float *a = aligned_alloc(64, nn * sizeof(float));
    float *b = aligned_alloc(64, nn * sizeof(float));
    float *c = aligned_alloc(64, nn * sizeof(float));
    if (!a || !b || !c) { free(a); free(b); free(c); return -1; }
    srand(1);
    for (size_t i = 0; i < nn; i++) {
        a[i] = (float)rand() / RAND_MAX - 0.5f;
        b[i] = (float)rand() / RAND_MAX - 0.5f;
        c[i] = 0;
    }
    double best = 1e30;
    for (int r = 0; r <= reps; r++) {
        double t0 = clock_seconds();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n,
                    1.0f, a, n, b, n, 0.0f, c, n);
        double dt = clock_seconds() - t0;
        if (r > 0 && dt < best) best = dt;   /* r == 0 warms caches and threads */
    }
    free(a); free(b); free(c);
    return best;
}

int main(int argc, char **argv)
{
    int sizes[16] = {2048, 4096}, nsizes = 2;
    if (argc > 1) {
        nsizes = 0;
        for (int i = 1; i < argc && nsizes < 16; i++) {
            int n = atoi(argv[i]);
            if (n < 64 || n > 16384) {
                fprintf(stderr, "sgemm_peak: size must be in 64..16384, got '%s'\n", argv[i]);
                return 2;
            }
            sizes[nsizes++] = n;
        }
    }
    double peak = 0;
    for (int i = 0; i < nsizes; i++) {
        int n = sizes[i];
        int reps = n <= 2048 ? 8 : 3;
        double s = best_sgemm_s(n, reps);
        if (s < 0) { fprintf(stderr, "sgemm_peak: out of memory at n=%d\n", n); return 1; }
        double gflops = 2.0 * n * n * (double)n / s / 1e9;
        printf("sgemm n=%d best_ms=%.2f gflops=%.1f\n", n, 1e3 * s, gflops);
        if (gflops > peak) peak = gflops;
    }
    printf("peak_gflops=%.1f\n", peak);
    printf("threads=%d\n", openblas_get_num_threads());
    print_loaded_blas();
    return 0;
}
