/* trainer: `moet train` — the loop that turns a resolved config into checkpoints:
 * data -> forward/backward (grad accumulation) -> clip -> AdamW, with logging,
 * metrics.jsonl, periodic eval, atomic checkpoints and exact resume. */
#ifndef MOET_TRAINER_H
#define MOET_TRAINER_H

#include "dist/dist.h"
#include "train/config.h"

typedef struct {
    int profile;   /* print time per kernel family at the end */
    int quiet;     /* no progress lines (metrics.jsonl is still written) */
    int strict;    /* data.seq_len beyond the model's max_position_embeddings is an error, not a warning */
    dist *dist;    /* data parallelism over MPI ranks (dist/dist.h); NULL: one process */
} trainer_opts;

/* Run to train.max_steps (or until SIGINT/SIGTERM, which checkpoint and return 0).
 * Returns 0 on success, -1 with one line in err. With o->dist every rank returns at the same
 * point with the same status; err is then the same on every rank (rank 0 prints it), and
 * only rank 0 prints, writes metrics, config.yaml and checkpoints. */
int trainer_run(const cfg *c, const trainer_opts *o, char *err);

#endif
