/* loader: epoch order, shuffling, read-ahead thread and resume cursor over shards. */
#include "data/loader.h"

#include "common/err.h"

#include <errno.h>
#include <glob.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define NSLOT 2  /* double buffering: the thread fills one batch while the other waits */

struct loader {
    shard **files;
    int n_files;
    int64_t *first_row;  /* [n_files + 1]: global index of each file's row 0 */
    int64_t rows, per_epoch;
    int B, T, shuffle;
    int part, parts, nb;  /* slice: rows [part*nb, part*nb + nb) of each batch; nb = B / parts */
    uint64_t seed;

    /* owned by the reader thread while it runs */
    int64_t *perm, perm_epoch;  /* order of epoch perm_epoch (shuffle only) */
    loader_pos produce;         /* next batch the thread reads */

    /* shared, under mu */
    pthread_t thread;
    int running, stop, failed;
    pthread_mutex_t mu;
    pthread_cond_t can_fill, can_take;
    loader_batch slot[NSLOT];
    int head, count;  /* slot[head] is the oldest of `count` ready batches */
    char thread_err[ERR_MAX];

    /* consumer side */
    loader_pos consume;  /* next batch loader_next returns */
    double wait_s;
};

/* ------------------------------------------------------------ randomness */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro256ss(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3];
    s[2] ^= t, s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform in [0, n) without modulo bias (Lemire's multiply-and-reject). */
static uint64_t below(uint64_t s[4], uint64_t n)
{
    __uint128_t m = (__uint128_t)xoshiro256ss(s) * n;
    if ((uint64_t)m < n) {
        uint64_t floor = -n % n;
        while ((uint64_t)m < floor) m = (__uint128_t)xoshiro256ss(s) * n;
    }
    return (uint64_t)(m >> 64);
}

/* perm[rows] = Fisher-Yates shuffle of 0..rows-1, a function of (seed, epoch) only. */
static void make_perm(int64_t *perm, int64_t rows, uint64_t seed, int64_t epoch)
{
    uint64_t x = seed ^ (0x6a09e667f3bcc909ull * (uint64_t)(epoch + 1)), s[4];
    for (int i = 0; i < 4; i++) s[i] = splitmix64(&x);
    for (int64_t i = 0; i < rows; i++) perm[i] = i;
    for (int64_t i = rows - 1; i > 0; i--) {
        int64_t j = (int64_t)below(s, (uint64_t)i + 1), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
}

/* ------------------------------------------------------------ reading */

static loader_pos advance(const loader *L, loader_pos p)
{
    if (++p.index >= L->per_epoch) p.epoch++, p.index = 0;
    return p;
}

/* Reads entries [k0, k0 + n) of the epoch's order (perm when shuffled) into b's first n rows. */
static int read_rows(loader *L, int64_t k0, int n, loader_batch *b, char *err)
{
    for (int i = 0; i < n; i++) {
        int64_t k = k0 + i, g = L->shuffle ? L->perm[k] : k;
        int lo = 0, hi = L->n_files - 1;  /* the file holding global row g */
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (L->first_row[mid] <= g) lo = mid;
            else hi = mid - 1;
        }
        size_t off = (size_t)i * L->T;
        if (shard_read_row(L->files[lo], g - L->first_row[lo], b->tokens + off, b->loss_mask + off,
                           b->doc_start + off, err))
            return -1;
    }
    return 0;
}

/* Reads batch pos into b.  Thread-side: uses perm, never the shared fields. */
static int read_batch(loader *L, loader_pos pos, loader_batch *b, char *err)
{
    if (L->shuffle && L->perm_epoch != pos.epoch) {
        make_perm(L->perm, L->rows, L->seed, pos.epoch);
        L->perm_epoch = pos.epoch;
    }
    return read_rows(L, pos.index * L->B + (int64_t)L->part * L->nb, L->nb, b, err);
}

static void *reader_main(void *arg)
{
    loader *L = arg;
    char err[ERR_MAX];
    pthread_mutex_lock(&L->mu);
    while (!L->stop) {
        if (L->count == NSLOT) {
            pthread_cond_wait(&L->can_fill, &L->mu);
            continue;
        }
        /* the slot past the ready ones is ours: the consumer never touches it */
        loader_batch *b = &L->slot[(L->head + L->count) % NSLOT];
        pthread_mutex_unlock(&L->mu);
        int rc = read_batch(L, L->produce, b, err);
        pthread_mutex_lock(&L->mu);
        if (rc) {
            L->failed = 1;
            snprintf(L->thread_err, ERR_MAX, "%s", err);
            pthread_cond_signal(&L->can_take);
            break;
        }
        L->count++;
        L->produce = advance(L, L->produce);
        pthread_cond_signal(&L->can_take);
    }
    pthread_mutex_unlock(&L->mu);
    return NULL;
}

static void stop_thread(loader *L)
{
    if (!L->running) return;
    pthread_mutex_lock(&L->mu);
    L->stop = 1;
    pthread_cond_broadcast(&L->can_fill);
    pthread_mutex_unlock(&L->mu);
    pthread_join(L->thread, NULL);
    L->running = L->stop = L->failed = 0;
    L->head = L->count = 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

int loader_set_slice(loader *L, int part, int parts, char *err)
{
    if (parts < 1 || part < 0 || part >= parts) return err_set(err, "loader: slice %d of %d", part, parts);
    if (L->B % parts)
        return err_set(err, "train.batch_size %d does not split evenly over %d ranks (make it a multiple of %d)", L->B,
                       parts, parts);
    if (L->running) return err_set(err, "loader: slice set after reading started");
    int nb = L->B / parts;
    for (int s = 0; s < NSLOT; s++) { /* the read-ahead slots hold slices */
        loader_batch_free(&L->slot[s]);
        if (loader_batch_alloc(&L->slot[s], nb, L->T, err)) return -1;
    }
    L->part = part, L->parts = parts, L->nb = nb;
    return 0;
}

int loader_batch_size(const loader *L) { return L->B; }

int loader_next(loader *L, loader_batch *b, char *err)
{
    if (b->batch_size != L->nb || b->seq_len != L->T)
        return err_set(err, "loader: batch buffer is [%d, %d], the loader gives [%d, %d]", b->batch_size,
                       b->seq_len, L->nb, L->T);
    if (!L->running) {
        L->produce = L->consume;
        if (pthread_create(&L->thread, NULL, reader_main, L))
            return err_set(err, "loader: cannot start the reader thread: %s", strerror(errno));
        L->running = 1;
    }
    pthread_mutex_lock(&L->mu);
    if (L->count == 0 && !L->failed) {
        double t0 = now_s();
        while (L->count == 0 && !L->failed) pthread_cond_wait(&L->can_take, &L->mu);
        L->wait_s += now_s() - t0;
    }
    if (L->count == 0) {  /* failed, and every good batch before the failure was taken */
        snprintf(err, ERR_MAX, "%s", L->thread_err);
        pthread_mutex_unlock(&L->mu);
        return -1;
    }
    loader_batch *s = &L->slot[L->head];
    pthread_mutex_unlock(&L->mu);
    size_t n = (size_t)L->nb * L->T;  /* the thread leaves a ready slot alone */
    memcpy(b->tokens, s->tokens, n * sizeof *b->tokens);
    memcpy(b->loss_mask, s->loss_mask, n);
    memcpy(b->doc_start, s->doc_start, n);
    pthread_mutex_lock(&L->mu);
    L->head = (L->head + 1) % NSLOT;
    L->count--;
    pthread_cond_signal(&L->can_fill);
    pthread_mutex_unlock(&L->mu);
    L->consume = advance(L, L->consume);
    return 0;
}

int loader_read_tail(loader *L, loader_batch *b, int *n, char *err)
{
    int64_t t = L->rows - L->per_epoch * L->B, r0 = t * L->part / L->parts, r1 = t * (L->part + 1) / L->parts;
    *n = (int)(r1 - r0);
    if (L->shuffle) return err_set(err, "loader: the tail of a shuffled epoch is not fixed");
    if (b->batch_size != L->nb || b->seq_len != L->T)
        return err_set(err, "loader: batch buffer is [%d, %d], the loader gives [%d, %d]", b->batch_size,
                       b->seq_len, L->nb, L->T);
    stop_thread(L); /* the shard files are not read from two threads */
    return read_rows(L, L->per_epoch * L->B + r0, *n, b, err);
}

loader_pos loader_cursor(const loader *L) { return L->consume; }

int loader_seek(loader *L, loader_pos pos, char *err)
{
    if (pos.epoch < 0 || pos.index < 0 || pos.index > L->per_epoch)
        return err_set(err, "loader: cannot seek to epoch %lld batch %lld (an epoch has %lld batches)",
                       (long long)pos.epoch, (long long)pos.index, (long long)L->per_epoch);
    if (pos.index == L->per_epoch) pos.epoch++, pos.index = 0;
    stop_thread(L);
    L->consume = pos;
    return 0;
}

/* ------------------------------------------------------------ open / close */

static int has_magic(const char *s) { return strpbrk(s, "*?[{") != NULL; }

/* Appends the expansion of pattern to *paths. */
static int expand(const char *pattern, char ***paths, int *n, char *err)
{
    glob_t g;
    int rc = glob(pattern, GLOB_BRACE, NULL, &g);
    if (rc == GLOB_NOMATCH || (rc == 0 && g.gl_pathc == 0)) {
        if (rc == 0) globfree(&g);
        struct stat st;
        if (!has_magic(pattern) && stat(pattern, &st)) return err_set(err, "%s: %s", pattern, strerror(errno));
        return err_set(err, "no data file matches '%s'", pattern);
    }
    if (rc) return err_set(err, "cannot expand '%s' (glob error %d)", pattern, rc);
    char **p = realloc(*paths, sizeof *p * (*n + g.gl_pathc));
    if (!p) {
        globfree(&g);
        return err_set(err, "out of memory");
    }
    *paths = p;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        if (!(p[*n] = strdup(g.gl_pathv[i]))) {
            globfree(&g);
            return err_set(err, "out of memory");
        }
        (*n)++;
    }
    globfree(&g);
    return 0;
}

int loader_open(loader **out, const char *const *files, int n_files, int seq_len, int vocab_size,
                int batch_size, int shuffle, uint64_t seed, char *err)
{
    *out = NULL;
    if (n_files < 1) return err_set(err, "no data files given");
    if (seq_len < 1 || batch_size < 1)
        return err_set(err, "seq_len (%d) and batch_size (%d) must be >= 1", seq_len, batch_size);
    loader *L = calloc(1, sizeof *L);
    if (!L) return err_set(err, "out of memory");
    L->B = batch_size, L->T = seq_len, L->shuffle = shuffle != 0, L->seed = seed;
    L->part = 0, L->parts = 1, L->nb = batch_size;
    L->perm_epoch = -1;
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->can_fill, NULL);
    pthread_cond_init(&L->can_take, NULL);

    char **paths = NULL;
    int n = 0;
    for (int i = 0; i < n_files; i++)
        if (expand(files[i], &paths, &n, err)) goto fail;
    if (!(L->files = calloc(n, sizeof *L->files)) || !(L->first_row = calloc(n + 1, sizeof *L->first_row))) {
        err_set(err, "out of memory");
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        if (shard_open(&L->files[i], paths[i], seq_len, vocab_size, err)) goto fail;
        L->n_files++;
        const shard_info *a = shard_get_info(L->files[0]), *b = shard_get_info(L->files[i]);
        if (strcmp(a->tokenizer_sha256, b->tokenizer_sha256) || a->vocab_size != b->vocab_size) {
            err_set(err, "%s and %s were made with different tokenizers (tokenizer_sha256 or vocab_size differ)",
                    paths[0], paths[i]);
            goto fail;
        }
        L->first_row[i + 1] = L->first_row[i] + b->rows;
    }
    L->rows = L->first_row[n];
    L->per_epoch = L->rows / batch_size;
    if (L->per_epoch == 0) {
        err_set(err, "%s%s: %lld rows in total, fewer than batch_size %d", paths[0], n > 1 ? " ..." : "",
                (long long)L->rows, batch_size);
        goto fail;
    }
    if (L->shuffle && !(L->perm = malloc(sizeof *L->perm * L->rows))) {
        err_set(err, "out of memory for a %lld-row permutation", (long long)L->rows);
        goto fail;
    }
    for (int s = 0; s < NSLOT; s++)
        if (loader_batch_alloc(&L->slot[s], batch_size, seq_len, err)) goto fail;
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    *out = L;
    return 0;
fail:
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    loader_close(L);
    return -1;
}

int64_t loader_rows(const loader *L) { return L->rows; }
int64_t loader_batches_per_epoch(const loader *L) { return L->per_epoch; }
int loader_n_files(const loader *L) { return L->n_files; }
const shard_info *loader_file_info(const loader *L, int i) { return shard_get_info(L->files[i]); }
const char *loader_file_path(const loader *L, int i) { return shard_path(L->files[i]); }
double loader_wait_seconds(const loader *L) { return L->wait_s; }

void loader_close(loader *L)
{
    if (!L) return;
    stop_thread(L);
    for (int i = 0; i < L->n_files; i++) shard_close(L->files[i]);
    for (int s = 0; s < NSLOT; s++) loader_batch_free(&L->slot[s]);
    free(L->files);
    free(L->first_row);
    free(L->perm);
    pthread_mutex_destroy(&L->mu);
    pthread_cond_destroy(&L->can_fill);
    pthread_cond_destroy(&L->can_take);
    free(L);
}

void loader_batch_labels(const loader_batch *b, int rows, int32_t *labels)
{
    size_t n = (size_t)rows * b->seq_len;
    for (size_t i = 0; i < n; i++) labels[i] = b->loss_mask[i] ? b->tokens[i] : -100;
}

int loader_batch_alloc(loader_batch *b, int batch_size, int seq_len, char *err)
{
    size_t n = (size_t)batch_size * seq_len;
    b->batch_size = batch_size, b->seq_len = seq_len;
    b->tokens = malloc(n * sizeof *b->tokens);
    b->loss_mask = malloc(n);
    b->doc_start = malloc(n);
    if (!b->tokens || !b->loss_mask || !b->doc_start) {
        loader_batch_free(b);
        return err_set(err, "out of memory for a [%d, %d] batch", batch_size, seq_len);
    }
    return 0;
}

void loader_batch_free(loader_batch *b)
{
    free(b->tokens);
    free(b->loss_mask);
    free(b->doc_start);
    b->tokens = NULL, b->loss_mask = b->doc_start = NULL;
}
