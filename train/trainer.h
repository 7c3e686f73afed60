/* trainer: `moet train` — the loop that turns a resolved config into checkpoints:
 * data -> forward/backward (grad accumulation) -> clip -> AdamW, with logging,
 * metrics.jsonl, periodic eval, atomic checkpoints and exact resume. */
#ifndef MOET_TRAINER_H
#define MOET_TRAINER_H

#include "train/config.h"

typedef struct {
    int profile;   /* print time per kernel family at the end */
    int quiet;     /* no progress lines (metrics.jsonl is still written) */
} trainer_opts;

/* Run to train.max_steps (or until SIGINT/SIGTERM, which checkpoint and return 0).
 * Returns 0 on success, -1 with one line in err. */
int trainer_run(const cfg *c, const trainer_opts *o, char *err);

#endif
