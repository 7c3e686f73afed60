/* test_dist: the parts of data parallelism that need no second process: the bucket plan, the
 * ZeRO-1 shards and the sharded AdamW (bit for bit the whole-buffer update), and how moet
 * decides from a launcher's environment whether to load MPI at all. The MPI runs themselves are
 * tests/t_dist.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/err.h"
#include "dist/dist.h"
#include "optim/adamw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A model-like table: embedding, 3 layers of 3 tensors, final norm, lm_head (sizes in floats). */
static int table(model_tensor *t)
{
    static const struct { const char *name; size_t n; int ndim; } spec[] = {
        {"model.embed_tokens.weight", 5000, 2},
        {"model.layers.0.input_layernorm.weight", 64, 1},
        {"model.layers.0.self_attn.q_proj.weight", 4096, 2},
        {"model.layers.0.block_sparse_moe.experts.0.w1.weight", 9000, 2},
        {"model.layers.1.input_layernorm.weight", 64, 1},
        {"model.layers.1.self_attn.q_proj.weight", 4096, 2},
        {"model.layers.1.block_sparse_moe.experts.0.w1.weight", 9000, 2},
        {"model.layers.2.input_layernorm.weight", 64, 1},
        {"model.layers.2.self_attn.q_proj.weight", 4096, 2},
        {"model.layers.2.block_sparse_moe.experts.0.w1.weight", 9000, 2},
        {"model.norm.weight", 64, 1},
        {"lm_head.weight", 5000, 2},
    };
    size_t off = 0;
    int n = (int)(sizeof spec / sizeof spec[0]);
    for (int i = 0; i < n; i++) {
        memset(&t[i], 0, sizeof t[i]);
        snprintf(t[i].name, sizeof t[i].name, "%s", spec[i].name);
        t[i].ndim = spec[i].ndim;
        t[i].offset = off;
        t[i].numel = spec[i].n;
        off += spec[i].n;
    }
    return n;
}

static int layer_of(const model_tensor *t)
{
    const char *p = strstr(t->name, "layers.");
    if (p) return atoi(p + 7);
    return strstr(t->name, "embed") ? -1 : 3;
}

static void test_buckets_cover_the_buffer_and_wait_for_their_layers(void **state)
{
    model_tensor t[16];
    int nt = table(t);
    size_t n = t[nt - 1].offset + t[nt - 1].numel;
    dist_bucket b[64];
    for (size_t cap = 1024; cap <= 20000; cap *= 4) {
        int nb = dist_plan(t, nt, n, 3, cap, 1, b, 64);
        assert_true(nb > 0);
        size_t top = n;
        for (int i = 0; i < nb; i++) { /* launch order: from the end of the buffer down, no gaps */
            assert_int_equal(b[i].hi, top);
            assert_true(b[i].lo < b[i].hi && b[i].hi - b[i].lo <= cap);
            assert_true(i == 0 || b[i].after <= b[i - 1].after);
            top = b[i].lo;
            /* every element of it belongs to a tensor whose part is done when it goes out */
            for (int k = 0; k < nt; k++)
                if (t[k].offset < b[i].hi && t[k].offset + t[k].numel > b[i].lo)
                    assert_true(layer_of(&t[k]) >= b[i].after);
        }
        assert_int_equal(top, 0);
        assert_int_equal(b[nb - 1].after, -1);
        /* overlap: buckets go out before the end of the backward; the head's (5064 floats) first */
        assert_true(b[0].after >= 0);
        if (cap <= 5064) assert_int_equal(b[0].after, 3);
    }
    int nb = dist_plan(t, nt, n, 3, 4096, 0, b, 64); /* without overlap: all after the embedding */
    for (int i = 0; i < nb; i++) assert_int_equal(b[i].after, -1);
}

static void test_shards_partition_the_buffer_on_16_float_boundaries(void **state)
{
    size_t sizes[] = {1, 15, 16, 1000, 123457, (size_t)3 << 33};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
        for (int N = 1; N <= 7; N++) {
            size_t n = sizes[k], prev = 0;
            assert_int_equal(dist_shard_start(n, 0, N), 0);
            assert_int_equal(dist_shard_start(n, N, N), n);
            for (int r = 1; r <= N; r++) {
                size_t s = dist_shard_start(n, r, N);
                assert_true(s >= prev);
                if (r < N) assert_int_equal(s % 16, 0);
                if (n >= 1000 && r < N) assert_true(s + 16 >= n / N * r); /* balanced to a cache line */
                prev = s;
            }
        }
}

/* ZeRO-1's update: AdamW on each shard with its own m and v, the segments cut at the shard
 * boundaries, gives exactly the whole-buffer update (decay only where the tensor has ndim >= 2). */
static void test_sharded_adamw_is_the_whole_update_bit_for_bit(void **state)
{
    model_tensor t[16];
    int nt = table(t);
    size_t n = t[nt - 1].offset + t[nt - 1].numel;
    adamw_seg segs[16], cut[16];
    int ns = 0;
    for (int i = 0; i < nt; i++) segs[ns++] = (adamw_seg){t[i].offset, t[i].numel, t[i].ndim >= 2};
    float *p0 = malloc(n * sizeof *p0), *g = malloc(n * sizeof *g), *pw = malloc(n * sizeof *pw);
    float *mw = calloc(n, sizeof *mw), *vw = calloc(n, sizeof *vw), *ps = malloc(n * sizeof *ps);
    uint64_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        p0[i] = (float)((int64_t)(x >> 11) % 2000 - 1000) / 1000;
        g[i] = (float)((int64_t)(x >> 33) % 2000 - 1000) / 7000;
    }
    adamw_cfg c = {0.9, 0.95, 1e-8, 0.1};
    for (int N = 1; N <= 5; N++) {
        memcpy(pw, p0, n * sizeof *pw);
        memcpy(ps, p0, n * sizeof *ps);
        memset(mw, 0, n * sizeof *mw), memset(vw, 0, n * sizeof *vw);
        float *ms[5], *vs[5];
        for (int r = 0; r < N; r++) {
            size_t lo = dist_shard_start(n, r, N), hi = dist_shard_start(n, r + 1, N);
            ms[r] = calloc(hi - lo + 1, sizeof(float)), vs[r] = calloc(hi - lo + 1, sizeof(float));
        }
        for (int step = 1; step <= 3; step++) {
            adamw_step_scaled(&c, pw, g, mw, vw, segs, ns, step, 1e-2f, 0.5f);
            for (int r = 0; r < N; r++) {
                size_t lo = dist_shard_start(n, r, N), hi = dist_shard_start(n, r + 1, N);
                int k = adamw_segs_slice(segs, ns, lo, hi, cut);
                adamw_step_scaled(&c, ps + lo, g + lo, ms[r], vs[r], cut, k, step, 1e-2f, 0.5f);
            }
        }
        assert_memory_equal(ps, pw, n * sizeof *ps);
        for (int r = 0; r < N; r++) {
            size_t lo = dist_shard_start(n, r, N), hi = dist_shard_start(n, r + 1, N);
            assert_memory_equal(ms[r], mw + lo, (hi - lo) * sizeof(float));
            assert_memory_equal(vs[r], vw + lo, (hi - lo) * sizeof(float));
            free(ms[r]), free(vs[r]);
        }
    }
    free(p0), free(g), free(pw), free(mw), free(vw), free(ps);
}

static int libmpi_mapped(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int found = 0;
    while (f && fgets(line, sizeof line, f)) found |= strstr(line, "libmpi") != NULL;
    if (f) fclose(f);
    return found;
}

/* No launcher, or a launcher of one rank: one process, nothing loaded. A launcher asking for
 * ranks on a machine without (a usable) libmpi: one clear line. */
static void test_launcher_environment_decides_whether_mpi_loads(void **state)
{
    char err[ERR_MAX] = "";
    dist *d = (dist *)1;
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_STEP_NUM_TASKS"};
    for (int i = 0; i < 4; i++) unsetenv(vars[i]);
    assert_int_equal(dist_launcher_size(), 1);
    assert_int_equal(dist_open(&d, err), 0);
    assert_null(d);
    setenv("OMPI_COMM_WORLD_SIZE", "1", 1);
    assert_int_equal(dist_open(&d, err), 0);
    assert_null(d);
    assert_false(libmpi_mapped());
    setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
    assert_int_equal(dist_launcher_size(), 4);
    setenv("MOET_MPI_LIB", "/nonexistent/libmpi.so.40", 1);
    assert_int_equal(dist_open(&d, err), -1);
    assert_non_null(strstr(err, "one of 4 ranks (OMPI_COMM_WORLD_SIZE is set)"));
    assert_non_null(strstr(err, "cannot load /nonexistent/libmpi.so.40"));
    assert_non_null(strstr(err, "apt install openmpi-bin"));
    unsetenv("OMPI_COMM_WORLD_SIZE");
    setenv("PMIX_RANK", "0", 1); /* PMIx without a size: MPI must say; SLURM_STEP_NUM_TASKS does */
    assert_int_equal(dist_launcher_size(), 0);
    setenv("SLURM_STEP_NUM_TASKS", "8", 1);
    assert_int_equal(dist_launcher_size(), 8);
    for (int i = 0; i < 4; i++) unsetenv(vars[i]);
    unsetenv("MOET_MPI_LIB");
    assert_false(libmpi_mapped());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets_cover_the_buffer_and_wait_for_their_layers),
        cmocka_unit_test(test_shards_partition_the_buffer_on_16_float_boundaries),
        cmocka_unit_test(test_sharded_adamw_is_the_whole_update_bit_for_bit),
        cmocka_unit_test(test_launcher_environment_decides_whether_mpi_loads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
