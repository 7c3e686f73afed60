/* membw: the memory bandwidth of this machine now, printed beside moet's runs by `make bench`.
 *
 * The sgemm peak (sgemm_peak.c) is compute-bound; a step also streams weights, the AdamW
 * state and activations through memory, and on a shared VM the two move apart (the tenth and
 * eleventh sessions saw moet's AdamW pass take 5.9 ms in one run and 10.1 ms in another with
 * the peak within 10%). STREAM's triad, a[i] = b[i] + s c[i], over three arrays of 128 MiB (far
 * past any cache), all threads (OMP_NUM_THREADS), best of REPS passes, counting 3 x 4 bytes per
 * element as STREAM does (no write-allocate traffic).
 *
 * usage: membw            stdout: membw_gbs=...   exit 1 with one line on stderr: no memory, or a
 *                         wrong result */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

enum { REPS = 8 };

int main(void)
{
    const size_t n = (size_t)32 << 20;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *c = malloc(n * sizeof *c);
    if (!a || !b || !c) {
        fprintf(stderr, "membw: out of memory for 3 x %zu MiB\n", n * sizeof *a >> 20);
        return 1;
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = 0, b[i] = 1, c[i] = 2; /* pages placed by the threads that use them */
    double best = 1e30;
    for (int r = 0; r < REPS; r++) {
        const float s = 0.5f + (float)r;
        double t0 = omp_get_wtime();
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) a[i] = b[i] + s * c[i];
        double t = omp_get_wtime() - t0;
        best = t < best ? t : best;
    }
    int ok = a[n / 2] == 1 + (0.5f + REPS - 1) * 2; /* the passes happened */
    if (ok) printf("membw_gbs=%.1f\n", 3.0 * n * sizeof *a / best / 1e9);
    else fprintf(stderr, "membw: the triad left a wrong value (%g)\n", a[n / 2]);
    free(a), free(b), free(c);
    return !ok;
}
