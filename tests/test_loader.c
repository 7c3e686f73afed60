/* test_loader: epoch order, shuffling, resume cursor, globs and error paths of
 * data/loader.h.  Every row written here carries its global row number in token 0,
 * so a batch says exactly which rows it holds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/err.h"
#include "data/loader.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define T 8
#define VOCAB 1000

#include "tests/tmpdir.h"

/* Rows first..first+rows-1: token 0 = row number, the rest derived from it;
 * loss_mask and doc_start are functions of (row, t) too. */
static void row_of(int g, int32_t *tok, uint8_t *mask, uint8_t *ds)
{
    for (int t = 0; t < T; t++) {
        tok[t] = t == 0 ? g : (g * 13 + t) % VOCAB;
        mask[t] = (g + t) % 2;
        ds[t] = t == g % T;
    }
}

static void write_rows(const char *path, int first, int rows, const char *sha)
{
    shard_info meta = {.vocab_size = VOCAB, .bos_id = 1, .eos_id = 2};
    snprintf(meta.tokenizer_sha256, sizeof meta.tokenizer_sha256, "%s", sha);
    char err[ERR_MAX];
    shard_writer *w;
    int32_t tok[T];
    uint8_t mask[T], ds[T];
    if (shard_writer_create(&w, path, T, &meta, 1, 1, err)) fail_msg("%s", err);
    for (int r = 0; r < rows; r++) {
        row_of(first + r, tok, mask, ds);
        if (shard_writer_append(w, tok, mask, ds, err)) fail_msg("%s", err);
    }
    if (shard_writer_close(w, err)) fail_msg("%s", err);
}

static loader *open_or_fail(const char *const *files, int n, int B, int shuffle, uint64_t seed)
{
    char err[ERR_MAX] = "";
    loader *L;
    if (loader_open(&L, files, n, T, VOCAB, B, shuffle, seed, err)) fail_msg("%s", err);
    return L;
}

/* Takes n batches; rows_out[i*B + b] = row number of batch i's row b. */
static void take(loader *L, loader_batch *b, int n, int *rows_out)
{
    char err[ERR_MAX] = "";
    for (int i = 0; i < n; i++) {
        if (loader_next(L, b, err)) fail_msg("%s", err);
        for (int r = 0; r < b->batch_size; r++) rows_out[i * b->batch_size + r] = b->tokens[r * T];
    }
}

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

/* the three files of the fixture: 5 + 7 + 4 = 16 rows, numbered 0..15 in file order */
static const char *three[3];

static void test_no_shuffle_reads_files_in_order_and_drops_the_tail(void **state)
{
    loader *L = open_or_fail(three, 3, 3, 0, 0);
    assert_int_equal(loader_rows(L), 16);
    assert_int_equal(loader_batches_per_epoch(L), 5);  /* 16 / 3, row 15 dropped */
    loader_batch b;
    assert_int_equal(loader_batch_alloc(&b, 3, T, NULL), 0);
    int rows[30];
    take(L, &b, 10, rows);
    for (int i = 0; i < 30; i++) assert_int_equal(rows[i], i % 15);
    loader_pos c = loader_cursor(L);
    assert_int_equal(c.epoch, 2);
    assert_int_equal(c.index, 0);
    /* the whole row arrives, masks included */
    int32_t tok[T];
    uint8_t mask[T], ds[T];
    row_of(29 % 15, tok, mask, ds);
    assert_memory_equal(b.tokens + 2 * T, tok, sizeof tok);
    assert_memory_equal(b.loss_mask + 2 * T, mask, T);
    assert_memory_equal(b.doc_start + 2 * T, ds, T);
    loader_batch_free(&b);
    loader_close(L);
}

static void test_shuffle_is_a_permutation_that_changes_per_epoch_and_repeats_per_seed(void **state)
{
    loader *L = open_or_fail(three, 3, 4, 1, 42), *M = open_or_fail(three, 3, 4, 1, 42);
    loader *N = open_or_fail(three, 3, 4, 1, 43);
    loader_batch b;
    assert_int_equal(loader_batch_alloc(&b, 4, T, NULL), 0);
    int e0[16], e1[16], m0[16], n0[16], sorted[16];
    take(L, &b, 4, e0);  /* one epoch: 16 rows, batch 4, nothing dropped */
    take(L, &b, 4, e1);
    take(M, &b, 4, m0);
    take(N, &b, 4, n0);
    memcpy(sorted, e0, sizeof sorted);
    qsort(sorted, 16, sizeof *sorted, cmp_int);
    for (int i = 0; i < 16; i++) assert_int_equal(sorted[i], i);
    memcpy(sorted, e1, sizeof sorted);
    qsort(sorted, 16, sizeof *sorted, cmp_int);
    for (int i = 0; i < 16; i++) assert_int_equal(sorted[i], i);
    assert_memory_equal(e0, m0, sizeof e0);         /* same seed, same order */
    assert_memory_not_equal(e0, e1, sizeof e0);     /* a new order each epoch */
    assert_memory_not_equal(e0, n0, sizeof e0);     /* another seed, another order */
    int identity = 1;
    for (int i = 0; i < 16; i++) identity &= e0[i] == i;
    assert_false(identity);
    loader_batch_free(&b);
    loader_close(L), loader_close(M), loader_close(N);
}

static void test_seek_to_a_saved_cursor_reproduces_the_remaining_batches(void **state)
{
    /* batch 3 of 16 rows: 5 per epoch, row(s) dropped; resume across an epoch boundary */
    loader *A = open_or_fail(three, 3, 3, 1, 7);
    loader_batch b;
    assert_int_equal(loader_batch_alloc(&b, 3, T, NULL), 0);
    int skip[21], want[36], got[36];
    take(A, &b, 7, skip);
    usleep(20000);  /* let the reader thread run ahead: the cursor must not follow it */
    loader_pos c = loader_cursor(A);
    assert_int_equal(c.epoch, 1);
    assert_int_equal(c.index, 2);
    take(A, &b, 12, want);

    char err[ERR_MAX] = "";
    loader *B = open_or_fail(three, 3, 3, 1, 7);
    assert_int_equal(loader_seek(B, c, err), 0);
    take(B, &b, 12, got);
    assert_memory_equal(want, got, sizeof want);

    /* seeking back on a loader whose thread already read ahead works as well */
    assert_int_equal(loader_seek(A, c, err), 0);
    take(A, &b, 12, got);
    assert_memory_equal(want, got, sizeof want);
    assert_int_equal(loader_seek(A, (loader_pos){1, 5}, err), 0);  /* end of epoch 1 = start of 2 */
    assert_int_equal(loader_cursor(A).epoch, 2);
    assert_int_equal(loader_cursor(A).index, 0);
    assert_int_equal(loader_seek(A, (loader_pos){0, 6}, err), -1);
    assert_non_null(strstr(err, "an epoch has 5 batches"));
    loader_batch_free(&b);
    loader_close(A), loader_close(B);
}

static void test_eval_mode_gives_the_same_first_batches_every_time(void **state)
{
    const char *val[1] = {tmp_path("part-*.h5")};
    loader *L = open_or_fail(val, 1, 2, 0, 0);
    loader_batch b;
    assert_int_equal(loader_batch_alloc(&b, 2, T, NULL), 0);
    int first[6], again[6];
    char err[ERR_MAX];
    take(L, &b, 3, first);
    assert_int_equal(loader_seek(L, (loader_pos){0, 0}, err), 0);
    take(L, &b, 3, again);
    assert_memory_equal(first, again, sizeof first);
    for (int i = 0; i < 6; i++) assert_int_equal(first[i], i);
    loader_batch_free(&b);
    loader_close(L);
}

static void test_globs_expand_sorted_and_entries_keep_their_order(void **state)
{
    /* part-a has rows 0..4, part-b 5..11, part-c 12..15, created in the order b, c, a */
    const char *g[2] = {tmp_path("extra.h5"), tmp_path("part-*.h5")};
    loader *L = open_or_fail(g, 2, 1, 0, 0);
    assert_int_equal(loader_n_files(L), 4);
    assert_non_null(strstr(loader_file_path(L, 0), "extra.h5"));
    assert_non_null(strstr(loader_file_path(L, 1), "part-a.h5"));
    assert_non_null(strstr(loader_file_path(L, 3), "part-c.h5"));
    loader_batch b;
    assert_int_equal(loader_batch_alloc(&b, 1, T, NULL), 0);
    int rows[18];
    take(L, &b, 18, rows);
    assert_int_equal(rows[0], 100);
    assert_int_equal(rows[1], 101);
    for (int i = 2; i < 18; i++) assert_int_equal(rows[i], i - 2);
    loader_batch_free(&b);
    loader_close(L);
}

static void test_missing_files_and_bad_sets_are_errors(void **state)
{
    char err[ERR_MAX] = "";
    loader *L = (loader *)1;
    const char *missing[2] = {three[0], tmp_path("nope.h5")};
    assert_int_equal(loader_open(&L, missing, 2, T, VOCAB, 1, 0, 0, err), -1);
    assert_null(L);
    assert_non_null(strstr(err, "nope.h5: No such file or directory"));

    const char *nomatch[1] = {tmp_path("zz-*.h5")};
    assert_int_equal(loader_open(&L, nomatch, 1, T, VOCAB, 1, 0, 0, err), -1);
    assert_non_null(strstr(err, "no data file matches"));

    assert_int_equal(loader_open(&L, three, 3, T, VOCAB, 17, 0, 0, err), -1);
    assert_non_null(strstr(err, "16 rows in total, fewer than batch_size 17"));

    assert_int_equal(loader_open(&L, three, 3, T + 1, VOCAB, 1, 0, 0, err), -1);
    assert_non_null(strstr(err, "expected seq_len 9"));

    write_rows(tmp_path("other-tok.h5"), 0, 2, "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff");
    const char *mixed[2] = {three[0], tmp_path("other-tok.h5")};
    assert_int_equal(loader_open(&L, mixed, 2, T, VOCAB, 1, 0, 0, err), -1);
    assert_non_null(strstr(err, "different tokenizers"));
}

static void test_reader_thread_errors_arrive_after_the_good_batches(void **state)
{
    /* rows 0..9 where row 6 holds token 900 and the file claims vocab_size 500 */
    const char *p = tmp_path("badrow.h5");
    shard_info meta = {.vocab_size = VOCAB, .bos_id = 1, .eos_id = 2};
    char err[ERR_MAX] = "";
    shard_writer *w;
    assert_int_equal(shard_writer_create(&w, p, T, &meta, 0, 0, err), 0);
    for (int r = 0; r < 10; r++) {
        int32_t tok[T] = {r, 3, 4, 5, 6, 7, 8, r == 6 ? 900 : 9};
        assert_int_equal(shard_writer_append(w, tok, NULL, NULL, err), 0);
    }
    assert_int_equal(shard_writer_close(w, err), 0);
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT), a = H5Aopen(f, "vocab_size", H5P_DEFAULT);
    int64_t v = 500;
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a), H5Fclose(f);

    const char *files[1] = {p};
    loader *L = open_or_fail(files, 1, 2, 0, 0);
    loader_batch b;
    assert_int_equal(loader_batch_alloc(&b, 2, T, NULL), 0);
    int rows[6];
    take(L, &b, 3, rows);  /* rows 0..5 are fine */
    assert_int_equal(rows[5], 5);
    assert_int_equal(loader_next(L, &b, err), -1);
    assert_non_null(strstr(err, "row 6 position 7: token 900 >= vocab_size 500"));
    assert_int_equal(loader_next(L, &b, err), -1);  /* and it stays failed */
    assert_int_equal(loader_cursor(L).index, 3);
    loader_batch_free(&b);
    loader_close(L);
}

/* Data parallelism: each of P slices reads rows [p*B/P, (p+1)*B/P) of every batch, so together
 * they read exactly the batches one loader reads (shuffled, across epochs), and of the tail. */
static void test_slices_split_every_batch_and_the_tail_exactly(void **state)
{
    enum { B = 4, P = 2, N = 9 }; /* 16 rows: 4 batches per epoch; 9 batches cross two epochs */
    char err[ERR_MAX] = "";
    int whole[N * B], part[N * B];
    loader *L = open_or_fail(three, 3, B, 1, 7);
    loader_batch b;
    assert_int_equal(loader_batch_alloc(&b, B, T, NULL), 0);
    take(L, &b, N, whole);
    loader_close(L);
    loader_batch_free(&b);
    assert_int_equal(loader_batch_alloc(&b, B / P, T, NULL), 0);
    for (int p = 0; p < P; p++) {
        L = open_or_fail(three, 3, B, 1, 7);
        assert_int_equal(loader_set_slice(L, p, P, err), 0);
        assert_int_equal(loader_batch_size(L), B);
        int got[N * (B / P)];
        take(L, &b, N, got);
        for (int i = 0; i < N; i++)
            for (int r = 0; r < B / P; r++) part[i * B + p * (B / P) + r] = got[i * (B / P) + r];
        loader_close(L);
    }
    assert_memory_equal(part, whole, sizeof whole);
    /* the tail of an unshuffled set (16 rows, batches of 6: rows 12..15) splits 2 + 2 */
    int seen = 0;
    for (int p = 0; p < P; p++) {
        loader *V = open_or_fail(three, 3, 6, 0, 0);
        loader_batch vb;
        assert_int_equal(loader_batch_alloc(&vb, 3, T, NULL), 0);
        assert_int_equal(loader_set_slice(V, p, P, err), 0);
        int n = -1;
        assert_int_equal(loader_read_tail(V, &vb, &n, err), 0);
        assert_int_equal(n, 2);
        for (int r = 0; r < n; r++) assert_int_equal(vb.tokens[r * T], 12 + seen++);
        loader_batch_free(&vb);
        loader_close(V);
    }
    loader_batch_free(&b);
    /* a batch that does not split evenly is refused, naming both numbers */
    L = open_or_fail(three, 3, 3, 0, 0);
    assert_int_equal(loader_set_slice(L, 0, 2, err), -1);
    assert_non_null(strstr(err, "batch_size 3"));
    assert_non_null(strstr(err, "2 ranks"));
    loader_close(L);
}

static void test_prefetch_hides_reading_from_a_slow_consumer(void **state)
{
    loader *L = open_or_fail(three, 3, 4, 1, 1);
    loader_batch b;
    assert_int_equal(loader_batch_alloc(&b, 4, T, NULL), 0);
    char err[ERR_MAX];
    assert_int_equal(loader_next(L, &b, err), 0);  /* the first batch is usually waited for ... */
    double first = loader_wait_seconds(L);
    assert_true(first >= 0); /* ... but on a busy machine the reader thread may fill it first (1 in 5 under make asan) */
    for (int i = 0; i < 10; i++) {
        usleep(30000);  /* a 30 ms "training step"; a batch reads in well under 1 ms */
        assert_int_equal(loader_next(L, &b, err), 0);
    }
    assert_true(loader_wait_seconds(L) - first < 0.05);  /* tolerance: 5 ms per step on a busy box */
    loader_batch_free(&b);
    loader_close(L);
}

static int setup(void **state)
{
    if (tmpdir_make("moet_test_loader")) return -1;
    write_rows(tmp_path("part-b.h5"), 5, 7, "");
    write_rows(tmp_path("part-c.h5"), 12, 4, "");
    write_rows(tmp_path("part-a.h5"), 0, 5, "");
    write_rows(tmp_path("extra.h5"), 100, 2, "");
    static char p[3][256];
    const char *names[3] = {"part-a.h5", "part-b.h5", "part-c.h5"};
    for (int i = 0; i < 3; i++) snprintf(p[i], sizeof p[i], "%s/%s", dir, names[i]), three[i] = p[i];
    return 0;
}

static int teardown(void **state) { return tmpdir_remove(); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_shuffle_reads_files_in_order_and_drops_the_tail),
        cmocka_unit_test(test_shuffle_is_a_permutation_that_changes_per_epoch_and_repeats_per_seed),
        cmocka_unit_test(test_seek_to_a_saved_cursor_reproduces_the_remaining_batches),
        cmocka_unit_test(test_eval_mode_gives_the_same_first_batches_every_time),
        cmocka_unit_test(test_globs_expand_sorted_and_entries_keep_their_order),
        cmocka_unit_test(test_missing_files_and_bad_sets_are_errors),
        cmocka_unit_test(test_reader_thread_errors_arrive_after_the_good_batches),
        cmocka_unit_test(test_prefetch_hides_reading_from_a_slow_consumer),
        cmocka_unit_test(test_slices_split_every_batch_and_the_tail_exactly),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
