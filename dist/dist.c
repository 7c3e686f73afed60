/* dist: launcher detection, MPI start, polled waits, gradient buckets and ZeRO-1. */
#include "dist/dist.h"
#include "dist/mpi.h"
#include "common/err.h"
#include "optim/clip.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define POLL_NS 200000 /* the progress thread polls in-flight buckets every 0.2 ms */

struct dist {
    dist_mpi mpi;
    int rank, size;
    char host[64];
    double timeout_s, grace_s;
    /* stop handling (dist_watch) */
    volatile sig_atomic_t *stop, *from_launcher;
    const int *step;
    const char *last_ckpt;
    double t_sig;
    /* the progress thread and every MPI call are serialised by mu (MPI_THREAD_SERIALIZED) */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    int th_running, quit, main_waiting;
    /* training (dist_attach) */
    model_dp hook;
    float *w, *g, *gshard;
    size_t n, lo, hi, *shard0;   /* shard0[size + 1]: where each rank's shard starts */
    int zero, last_micro;
    dist_bucket *b;
    int nb, launched;
    int *counts, *displs;        /* [nb][size]: each bucket's elements in each rank's shard */
    MPI_Request *req_g, *req_p;  /* per bucket: gradients, parameters */
    double *t_launch, *t_done;
    dist_times tm;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* ------------------------------------------------------------------ launcher and start */

/* A positive integer environment variable; 0 when set but not one, -1 when unset. */
static int env_count(const char *name)
{
    const char *s = getenv(name);
    if (!s) return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    return *s && !*end && !errno && v > 0 && v < 1 << 24 ? (int)v : 0;
}

int dist_launcher_size(void)
{
    int n;
    if ((n = env_count("OMPI_COMM_WORLD_SIZE")) >= 0) return n; /* OpenMPI's mpirun / prterun */
    if ((n = env_count("PMI_SIZE")) >= 0) return n;             /* Slurm PMI2, Hydra */
    if (getenv("PMIX_RANK")) {                                  /* PMIx, e.g. srun --mpi=pmix */
        n = env_count("SLURM_STEP_NUM_TASKS");
        return n > 0 ? n : 0;
    }
    return 1;
}

static const char *launcher_var(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") ? "OMPI_COMM_WORLD_SIZE" : getenv("PMI_SIZE") ? "PMI_SIZE" : "PMIX_RANK";
}

static int mpi_err(dist *d, int rc, const char *what, char *err)
{
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    if (d->mpi.Error_string) d->mpi.Error_string(rc, msg, &len);
    return err_set(err, "MPI %s failed: %s", what, msg[0] ? msg : "unknown error");
}

int dist_open(dist **out, char *err)
{
    *out = NULL;
    int want = dist_launcher_size();
    if (want == 1) return 0; /* one process: nothing is loaded */
    dist *d = calloc(1, sizeof *d);
    if (!d) return err_set(err, "out of memory");
    char why[ERR_MAX];
    if (dist_mpi_load(&d->mpi, NULL, why)) {
        free(d);
        char n[16] = "several";
        if (want > 1) snprintf(n, sizeof n, "%d", want);
        return err_set(err, "started by an MPI launcher as one of %s ranks (%s is set) but MPI cannot start: %s; "
                            "install OpenMPI (Debian: apt install openmpi-bin), or run moet without the launcher",
                       n, launcher_var(), why);
    }
    int provided = 0, rc = d->mpi.Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
    if (rc != MPI_SUCCESS) {
        mpi_err(d, rc, "MPI_Init_thread", err);
        free(d);
        return -1;
    }
    d->mpi.Comm_set_errhandler(d->mpi.world, d->mpi.errors_return); /* errors come back, we say them */
    d->mpi.Comm_rank(d->mpi.world, &d->rank);
    d->mpi.Comm_size(d->mpi.world, &d->size);
    gethostname(d->host, sizeof d->host - 1);
    d->timeout_s = 600;
    /* How long a rank may wait once the launcher has sent SIGTERM to end the job: OpenMPI's
     * mpirun sends it when a rank died (or on Ctrl-C) and SIGKILLs odls_base_sigkill_timeout
     * (1 s) later, so say why before that; Slurm waits KillWait (30 s). */
    if (getenv("OMPI_COMM_WORLD_SIZE")) {
        const char *k = getenv("OMPI_MCA_odls_base_sigkill_timeout");
        double t = k ? atof(k) : 1;
        d->grace_s = t - 0.5 > 0.3 ? t - 0.5 : 0.3;
    } else {
        d->grace_s = 10;
    }
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    if (want > 1 && d->size != want) {
        err_set(err, "the launcher announced %d ranks (%s) but MPI started %d: is this launcher OpenMPI's?", want,
                launcher_var(), d->size);
        dist_close(d);
        return -1;
    }
    if (d->size == 1) { /* a launcher of one: the run is one process after all */
        dist_close(d);
        return 0;
    }
    *out = d;
    return 0;
}

int dist_rank(const dist *d) { return d ? d->rank : 0; }
int dist_size(const dist *d) { return d ? d->size : 1; }

void dist_watch(dist *d, volatile sig_atomic_t *stop, volatile sig_atomic_t *from_launcher, const int *step,
                const char *last_ckpt)
{
    if (!d) return;
    d->stop = stop, d->from_launcher = from_launcher, d->step = step, d->last_ckpt = last_ckpt;
}

/* ------------------------------------------------------------------ waiting without hanging */

static void ckpt_note(const dist *d, char *buf, size_t n)
{
    if (d->last_ckpt && d->last_ckpt[0]) snprintf(buf, n, "the last checkpoint, %s, is kept", d->last_ckpt);
    else snprintf(buf, n, "no checkpoint was written");
}

static void fail_mpi(dist *d, int rc, const char *what)
{
    char err[ERR_MAX];
    mpi_err(d, rc, what, err);
    dist_fail(d, err);
}

/* Called while a collective is not done: gives up when the launcher is ending the job (the
 * peers are gone or going: it SIGKILLs us a second later) or after the timeout. */
static void check_peers(dist *d, double t0, const char *what)
{
    double t = now_s();
    int steps = d->step ? *d->step : 0, sig = d->stop ? (int)*d->stop : 0;
    char note[ERR_MAX + 64];
    /* SIGTERM / SIGINT from the launcher (our parent) ends the job; its SIGUSR1 only asks for a stop */
    if ((sig == SIGTERM || sig == SIGINT) && d->from_launcher && *d->from_launcher) {
        if (!d->t_sig) d->t_sig = t;
        if (t - d->t_sig > d->grace_s) {
            ckpt_note(d, note, sizeof note);
            fflush(stdout);
            fprintf(stderr,
                    "moet train: rank %d/%d (%s): the launcher is ending the job (signal %d) and the other ranks "
                    "stopped answering (%s) after %d steps: a rank died or the job was cancelled; exiting, %s\n",
                    d->rank, d->size, d->host, sig, what, steps, note);
            fflush(stderr);
            _exit(1);
        }
    }
    if (t - t0 > d->timeout_s) {
        char err[2 * ERR_MAX];
        ckpt_note(d, note, sizeof note);
        snprintf(err, sizeof err, "no answer from the other ranks for %.0f s (%s) after %d steps (dist.timeout_s): "
                                  "a rank died or hangs; stopping the job, %s", t - t0, what, steps, note);
        dist_fail(d, err);
    }
}

/* Wait for r[0..n) by polling (MPI_Test), never blocking inside MPI. t_done (may be NULL)
 * receives completion times. Returns the seconds waited. */
static double wait_reqs(dist *d, MPI_Request *r, int n, double *t_done, const char *what)
{
    double t0 = now_s();
    long polls = 0;
    pthread_mutex_lock(&d->mu);
    d->main_waiting = 1;
    for (int i = 0; i < n;) {
        int flag = 0, rc = d->mpi.Test(&r[i], &flag, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) fail_mpi(d, rc, what);
        if (flag) {
            if (t_done && !t_done[i]) t_done[i] = now_s();
            i++;
            continue;
        }
        pthread_mutex_unlock(&d->mu);
        check_peers(d, t0, what);
        if (++polls > 200) { /* spin a little (small sums answer in microseconds), then let the core go */
            struct timespec ts = {0, 20000};
            nanosleep(&ts, NULL);
        }
        pthread_mutex_lock(&d->mu);
    }
    d->main_waiting = 0;
    pthread_mutex_unlock(&d->mu);
    return now_s() - t0;
}

/* Post one collective under the lock (the progress thread may be polling). */
#define POST(d, what, call)                                                                                           \
    do {                                                                                                              \
        pthread_mutex_lock(&(d)->mu);                                                                                 \
        int rc_ = (call);                                                                                             \
        pthread_mutex_unlock(&(d)->mu);                                                                               \
        if (rc_ != MPI_SUCCESS) fail_mpi(d, rc_, what);                                                               \
    } while (0)

void dist_sum(dist *d, double *v, int n)
{
    if (!d) return;
    MPI_Request r;
    POST(d, "MPI_Iallreduce", d->mpi.Iallreduce(MPI_IN_PLACE, v, n, d->mpi.f64, d->mpi.sum, d->mpi.world, &r));
    d->tm.sync_wait += wait_reqs(d, &r, 1, NULL, "in a sum");
}

int dist_agree(dist *d, int rc, char *err)
{
    if (!d) return rc ? -1 : 0;
    /* the lowest rank with a message, else the lowest failed one, else everyone is fine */
    double key = rc ? (err[0] ? d->rank : d->size + d->rank) : 2 * d->size;
    MPI_Request r;
    POST(d, "MPI_Iallreduce", d->mpi.Iallreduce(MPI_IN_PLACE, &key, 1, d->mpi.f64, d->mpi.min, d->mpi.world, &r));
    d->tm.sync_wait += wait_reqs(d, &r, 1, NULL, "agreeing on a status");
    if (key >= 2 * d->size) return 0;
    int root = (int)key % d->size;
    if (key >= d->size) snprintf(err, ERR_MAX, "rank %d failed without a message", root);
    POST(d, "MPI_Ibcast", d->mpi.Ibcast(err, ERR_MAX, d->mpi.chr, root, d->mpi.world, &r));
    wait_reqs(d, &r, 1, NULL, "sharing an error");
    err[ERR_MAX - 1] = 0;
    return -1;
}

void dist_bcast(dist *d, void *buf, int n)
{
    if (!d) return;
    MPI_Request r;
    POST(d, "MPI_Ibcast", d->mpi.Ibcast(buf, n, d->mpi.chr, 0, d->mpi.world, &r));
    d->tm.sync_wait += wait_reqs(d, &r, 1, NULL, "in a broadcast from rank 0");
}

void dist_bcast_text(dist *d, char **s)
{
    if (!d) return;
    double len = d->rank == 0 && *s ? (double)strlen(*s) : -1;
    dist_bcast(d, &len, sizeof len);
    if (d->rank) {
        free(*s);
        *s = NULL;
        if (len >= 0 && !(*s = malloc((size_t)len + 1))) dist_fail(d, "out of memory");
    }
    if (len >= 0) dist_bcast(d, *s, (int)len + 1);
}

void dist_fail(dist *d, const char *err)
{
    fflush(stdout);
    fprintf(stderr, "moet train: rank %d/%d (%s): %s\n", d->rank, d->size, d->host, err);
    fflush(stderr);
    alarm(10); /* MPI_Abort asks the launcher to end the job; should that hang, SIGALRM ends this rank */
    d->mpi.Abort(d->mpi.world, 1);
    _exit(1);
}

/* ------------------------------------------------------------------ buckets */

/* The part whose backward completes a tensor's gradient (model_dp.grads_done numbering). */
static int part_of(const char *name, int n_layers)
{
    const char *p = strstr(name, "layers.");
    if (p) {
        char *end;
        long l = strtol(p + 7, &end, 10);
        if (end != p + 7 && *end == '.' && l >= 0 && l < n_layers) return (int)l;
    }
    if (strstr(name, "lm_head") || !strncmp(name, "model.norm.", 11)) return n_layers;
    return -1; /* the embedding, and anything unknown: complete only at the end */
}

int dist_plan(const model_tensor *t, int nt, size_t n, int n_layers, size_t bucket_floats, int overlap,
              dist_bucket *out, int cap)
{
    int nb = 0;
    size_t top = n; /* [top, n) is in buckets already */
    for (int p = n_layers; p >= -1; p--) {
        size_t ready = 0; /* once part p is done, [ready, n) is: above every tensor of a later part */
        for (int i = 0; p >= 0 && i < nt; i++)
            if (part_of(t[i].name, n_layers) < p && t[i].offset + t[i].numel > ready) ready = t[i].offset + t[i].numel;
        if (ready > top || (!overlap && p >= 0)) continue;
        while (top > ready && (top - ready >= bucket_floats || p == -1)) {
            size_t lo = top - ready > bucket_floats ? top - bucket_floats : ready;
            if (nb == cap) return -1;
            out[nb++] = (dist_bucket){lo, top, p};
            top = lo;
        }
    }
    return nb;
}

size_t dist_shard_start(size_t n, int r, int N)
{
    return r >= N ? n : (n / N * r + n % N * r / N) & ~(size_t)15;
}

static void *progress_main(void *arg)
{
    dist *d = arg;
    pthread_mutex_lock(&d->mu);
    while (!d->quit) {
        int pending = 0;
        for (int i = 0; i < d->launched; i++) pending |= !d->t_done[i];
        if (d->main_waiting || !pending) {
            pthread_cond_wait(&d->cv, &d->mu);
            continue;
        }
        for (int i = 0; i < d->launched; i++) { /* in launch order: one Test drives all of MPI's progress */
            if (d->t_done[i]) continue;
            int flag = 0, rc = d->mpi.Test(&d->req_g[i], &flag, MPI_STATUS_IGNORE);
            if (rc != MPI_SUCCESS) fail_mpi(d, rc, "MPI_Test");
            if (!flag) break;
            d->t_done[i] = now_s();
        }
        pthread_mutex_unlock(&d->mu);
        struct timespec ts = {0, POLL_NS};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

static void launch(dist *d, int i)
{
    const dist_bucket *b = &d->b[i];
    static float none;
    pthread_mutex_lock(&d->mu);
    int rc;
    if (d->zero) {
        size_t at = b->lo > d->lo ? b->lo : d->lo;
        float *dst = d->counts[i * d->size + d->rank] ? d->gshard + (at - d->lo) : &none;
        rc = d->mpi.Ireduce_scatter(d->g + b->lo, dst, d->counts + (size_t)i * d->size, d->mpi.f32, d->mpi.sum,
                                    d->mpi.world, &d->req_g[i]);
    } else {
        rc = d->mpi.Iallreduce(MPI_IN_PLACE, d->g + b->lo, (int)(b->hi - b->lo), d->mpi.f32, d->mpi.sum, d->mpi.world,
                               &d->req_g[i]);
    }
    d->t_launch[i] = now_s();
    d->t_done[i] = 0;
    d->launched = i + 1;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
    if (rc != MPI_SUCCESS) fail_mpi(d, rc, d->zero ? "MPI_Ireduce_scatter" : "MPI_Iallreduce");
}

static void hook_sum(void *ctx, double *v, int n) { dist_sum(ctx, v, n); }

static void hook_grads_done(void *ctx, int part)
{
    dist *d = ctx;
    if (!d->last_micro) return; /* earlier micro-batches only accumulate */
    while (d->launched < d->nb && part <= d->b[d->launched].after) launch(d, d->launched);
}

int dist_attach(dist *d, model *m, const model_tensor *t, int nt, float *w, float *g, size_t n,
                const dist_opts *o, char *err)
{
    if (!d) return 0;
    d->w = w, d->g = g, d->n = n;
    d->zero = o->zero < 0 ? d->size > 1 : o->zero;
    d->timeout_s = o->timeout_s;
    size_t bf = (size_t)(o->bucket_mb * 262144.0); /* floats */
    if (bf < 1024) bf = 1024;
    int cap = (int)(n / bf) + 2, S = d->size;
    d->b = calloc((size_t)cap, sizeof *d->b);
    d->shard0 = calloc((size_t)S + 1, sizeof *d->shard0);
    if (!d->b || !d->shard0) return err_set(err, "out of memory");
    d->nb = dist_plan(t, nt, n, m->c.n_layers, bf, o->overlap, d->b, cap);
    if (d->nb < 0) return err_set(err, "dist: bucket plan overflow (internal)");
    for (int r = 0; r <= S; r++) d->shard0[r] = dist_shard_start(n, r, S);
    d->lo = d->zero ? d->shard0[d->rank] : 0;
    d->hi = d->zero ? d->shard0[d->rank + 1] : n;
    size_t nb = (size_t)d->nb;
    d->counts = calloc(nb * S, sizeof *d->counts);
    d->displs = calloc(nb * S, sizeof *d->displs);
    d->req_g = calloc(nb, sizeof *d->req_g);
    d->req_p = calloc(nb, sizeof *d->req_p);
    d->t_launch = calloc(nb, sizeof *d->t_launch);
    d->t_done = calloc(nb, sizeof *d->t_done);
    d->gshard = d->zero ? calloc(d->hi - d->lo + 1, sizeof *d->gshard) : NULL;
    if (!d->counts || !d->displs || !d->req_g || !d->req_p || !d->t_launch || !d->t_done || (d->zero && !d->gshard))
        return err_set(err, "out of memory for %s", d->zero ? "the gradient shard" : "the bucket plan");
    for (size_t i = 0; i < nb; i++)
        for (int r = 0; r < S; r++) { /* bucket i's elements in rank r's shard */
            size_t a = d->b[i].lo > d->shard0[r] ? d->b[i].lo : d->shard0[r];
            size_t z = d->b[i].hi < d->shard0[r + 1] ? d->b[i].hi : d->shard0[r + 1];
            d->counts[i * S + r] = z > a ? (int)(z - a) : 0;
            d->displs[i * S + r] = z > a ? (int)(a - d->b[i].lo) : 0;
        }
    if (!d->th_running) {
        if (pthread_create(&d->th, NULL, progress_main, d))
            return err_set(err, "cannot start the MPI progress thread: %s", strerror(errno));
        d->th_running = 1;
    }
    d->hook = (model_dp){d, hook_sum, hook_grads_done};
    m->dp = &d->hook;
    return 0;
}

int dist_zero(const dist *d) { return d && d->zero; }

void dist_shard(const dist *d, size_t n, size_t *lo, size_t *hi)
{
    *lo = d ? d->lo : 0;
    *hi = d ? d->hi : n;
}

void dist_micro(dist *d, int last)
{
    if (!d) return;
    d->last_micro = last;
    if (last) { /* a new step's buckets (the last step's are all done) */
        pthread_mutex_lock(&d->mu);
        d->launched = 0;
        pthread_mutex_unlock(&d->mu);
    }
}

const float *dist_grads(dist *d)
{
    if (!d) return NULL;
    while (d->launched < d->nb) launch(d, d->launched); /* buckets no hook launched */
    d->tm.grads_wait += wait_reqs(d, d->req_g, d->nb, d->t_done, "waiting for the gradients");
    for (int i = 0; i < d->nb; i++) d->tm.grads_flight += d->t_done[i] - d->t_launch[i];
    d->tm.bytes += (long)d->n * 4;
    d->last_micro = 0;
    return d->zero ? d->gshard : d->g;
}

double dist_grad_norm(dist *d)
{
    if (!d->zero) return clip_norm(d->g, d->n); /* every rank holds the whole reduced gradient */
    double ss = clip_sumsq(d->gshard, d->hi - d->lo);
    dist_sum(d, &ss, 1);
    return sqrt(ss);
}

void dist_params(dist *d)
{
    if (!d || !d->zero) return;
    for (int i = 0; i < d->nb; i++) {
        const int *c = d->counts + (size_t)i * d->size, *o = d->displs + (size_t)i * d->size;
        POST(d, "MPI_Iallgatherv", d->mpi.Iallgatherv(MPI_IN_PLACE, 0, d->mpi.dtype_null, d->w + d->b[i].lo, c, o,
                                                      d->mpi.f32, d->mpi.world, &d->req_p[i]));
    }
    d->tm.params_wait += wait_reqs(d, d->req_p, d->nb, NULL, "waiting for the parameters");
    d->tm.bytes += (long)d->n * 4;
}

void dist_gather(dist *d, const float *shard, float *full)
{
    if (!d || !d->zero) return;
    for (int i = 0; i < d->nb; i++) {
        const int *c = d->counts + (size_t)i * d->size, *o = d->displs + (size_t)i * d->size;
        size_t at = d->b[i].lo > d->lo ? d->b[i].lo : d->lo;
        const float *src = c[d->rank] ? shard + (at - d->lo) : shard;
        float *dst = d->rank == 0 ? full + d->b[i].lo : (float *)shard;
        POST(d, "MPI_Igatherv", d->mpi.Igatherv(src, c[d->rank], d->mpi.f32, dst, c, o, d->mpi.f32, 0, d->mpi.world,
                                                &d->req_p[i]));
    }
    wait_reqs(d, d->req_p, d->nb, NULL, "gathering the optimizer state");
}

void dist_get_times(const dist *d, dist_times *t)
{
    if (d) *t = d->tm;
    else memset(t, 0, sizeof *t);
}

void dist_close(dist *d)
{
    if (!d) return;
    if (d->th_running) {
        pthread_mutex_lock(&d->mu);
        d->quit = 1;
        pthread_cond_signal(&d->cv);
        pthread_mutex_unlock(&d->mu);
        pthread_join(d->th, NULL);
    }
    d->mpi.Finalize();
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
    free(d->b), free(d->shard0), free(d->counts), free(d->displs), free(d->req_g), free(d->req_p);
    free(d->t_launch), free(d->t_done), free(d->gshard);
    free(d);
}
