/* dist: data-parallel training over MPI ranks, the same run as one process.
 *
 * Under an MPI launcher every rank holds the whole model and trains on its slice of each
 * micro-batch (the loader reads rows [r*B/N, (r+1)*B/N) only). The trainer scales the loss by
 * the global target count and the model sums its router statistics over the ranks (model_dp),
 * so the ranks' gradients add up to the one-process gradient. They are reduced in buckets of the
 * flat trainable buffer as the backward completes them (model_dp.grads_done, layer by layer; a
 * progress thread drives OpenMPI's non-blocking collectives meanwhile): MPI_Iallreduce, or with
 * ZeRO-1 MPI_Ireduce_scatter onto this rank's shard of the buffer, where AdamW then runs with
 * this rank's m and v only, before MPI_Iallgatherv gives every rank the updated parameters.
 *
 * MPI is OpenMPI's libmpi.so.40, loaded with dlopen only when the launcher's environment asks
 * for more than one rank (dist/mpi.h): without a launcher nothing is loaded. A NULL dist is one
 * process: every function below then does nothing (or returns what one process has).
 * Every collective is waited for by polling, so a rank whose peers are gone does not hang: when
 * the launcher (the parent process) signals the job, or after dist.timeout_s, it stops with one
 * line naming the step and the last checkpoint. */
#ifndef MOET_DIST_H
#define MOET_DIST_H

#include <signal.h>
#include <stddef.h>

#include "model/model.h"

typedef struct dist dist;

/* Ranks the launcher's environment announces (OMPI_COMM_WORLD_SIZE, PMI_SIZE, or with PMIx
 * SLURM_STEP_NUM_TASKS), 1 without a launcher, 0 when a launcher is there but does not say. */
int dist_launcher_size(void);

/* Start MPI when dist_launcher_size() != 1; else *d = NULL and nothing is loaded. -1 with one
 * line in err when the launcher asks for ranks and MPI cannot start. */
int dist_open(dist **d, char *err);
void dist_close(dist *d); /* MPI_Finalize; NULL is a no-op */
int dist_rank(const dist *d); /* 0 for NULL */
int dist_size(const dist *d); /* 1 for NULL */

/* Every rank calls it with its status (0, or -1 with its message, or -1 with "" for "another
 * rank failed"): -1 on every rank when any failed, err then holding the lowest such rank's
 * message on every rank. */
int dist_agree(dist *d, int rc, char *err);
/* v[n] summed over all ranks, in place. */
void dist_sum(dist *d, double *v, int n);
/* Rank 0's n bytes of buf replace the other ranks' (a path, a fixed-size record). */
void dist_bcast(dist *d, void *buf, int n);
/* Rank 0's text (NUL-terminated, *s malloc'd or NULL) replaces *s on the other ranks. */
void dist_bcast_text(dist *d, char **s);
/* A failure the other ranks cannot join: one line "moet train: rank R/N: err", abort the job. */
void dist_fail(dist *d, const char *err) __attribute__((noreturn));

/* What a rank needs to stop cleanly: the trainer's stop flag, whether the launcher (the parent
 * process) sent it, the current step and the last checkpoint's path (for the messages). */
void dist_watch(dist *d, volatile sig_atomic_t *stop, volatile sig_atomic_t *from_launcher, const int *step,
                const char *last_ckpt);

/* ---- training: the trainable buffer */

typedef struct {
    int zero;          /* -1: ZeRO-1 with more than one rank; 0; 1 */
    double bucket_mb;  /* gradient bucket size */
    int overlap;       /* 1: buckets go out as the backward completes them; 0: after it */
    double timeout_s;  /* the longest wait for the other ranks */
} dist_opts;

/* A bucket: elements [lo, hi) of the buffer, launched when part `after` is complete
 * (model_dp.grads_done order: n_layers, n_layers-1, ..., 0, -1). */
typedef struct {
    size_t lo, hi;
    int after;
} dist_bucket;

/* The buckets of a buffer of n floats described by t[nt] (each tensor's part from its HF or
 * PEFT name: "layers.L." -> L, the embedding -> -1, lm_head and the final norm -> n_layers),
 * in launch order (from the end of the buffer down), at most bucket_floats each, together
 * exactly [0, n). Without overlap all go after part -1. Returns the count (<= cap). */
int dist_plan(const model_tensor *t, int nt, size_t n, int n_layers, size_t bucket_floats, int overlap,
              dist_bucket *out, int cap);

/* Shard r of N of a buffer of n floats: [n*r/N, n*(r+1)/N), boundaries rounded down to 16 floats. */
size_t dist_shard_start(size_t n, int r, int N);

/* Attach to the buffer w, g (n floats) of m, described by t[nt]: plans the buckets, sizes the
 * shard, sets m->dp. */
int dist_attach(dist *d, model *m, const model_tensor *t, int nt, float *w, float *g, size_t n,
                const dist_opts *o, char *err);
int dist_zero(const dist *d); /* 1 when ZeRO-1 shards the optimizer */
/* This rank's part [lo, hi) of the buffer's optimizer state: its shard with ZeRO-1, else all. */
void dist_shard(const dist *d, size_t n, size_t *lo, size_t *hi);

/* Before each model_forward_backward of a step: last = 1 for its last micro-batch, whose
 * completed gradients go out. */
void dist_micro(dist *d, int last);
/* After the last micro-batch: wait for every bucket. The reduced gradients of this rank's part
 * of the buffer (dist_shard), or NULL for NULL. */
const float *dist_grads(dist *d);
/* L2 norm of the reduced gradients of all ranks (ZeRO-1: the shards' squares summed). */
double dist_grad_norm(dist *d);
/* ZeRO-1, after this rank's AdamW on its shard: every rank gets every updated parameter. */
void dist_params(dist *d);
/* ZeRO-1 checkpoints: this rank's shard of a per-element state (AdamW m or v, hi-lo floats)
 * into full (n floats; used on rank 0 only). */
void dist_gather(dist *d, const float *shard, float *full);

/* --profile: seconds since attach. grads_wait: waiting for the buckets after the backward
 * (what the overlap did not hide); grads_flight: the buckets' launch-to-done time summed;
 * params_wait: the ZeRO-1 all-gather; sync_wait: the small sums (router statistics, targets,
 * losses, norm), which also wait for the slowest rank. */
typedef struct {
    double grads_wait, grads_flight, params_wait, sync_wait;
    long bytes; /* gradient and parameter bytes this rank sent into collectives */
} dist_times;
void dist_get_times(const dist *d, dist_times *t);

#endif
