/* trainer_int: the trainer's state, shared by the loop (trainer.c) and its checkpoints
 * (trainer_ckpt.c). Not an API: only these two files include it. */
#ifndef MOET_TRAINER_INT_H
#define MOET_TRAINER_INT_H

#include "data/loader.h"
#include "dist/dist.h"
#include "model/lora.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "optim/sched.h"
#include "common/rng.h"
#include "train/plan.h"
#include "train/trainer.h"

#include <stdio.h>

/* What the optimizer updates: one flat buffer described by named tensors. */
typedef struct {
    const model_tensor *t;
    int n;
    float *w, *g;
    size_t total;
} tview;

typedef struct {
    const cfg *c;
    const trainer_opts *o;
    model m;
    int have_model;
    lora *lo;              /* LoRA runs: the adapters (the base is frozen) */
    model_acts *acts;
    loader *train, *val;
    loader_batch *mb;      /* grad_accum micro-batches */
    int32_t *labels;       /* (B*T) scratch */
    tview tv;
    dist *d;               /* data parallelism (NULL: one process) */
    size_t opt_lo, nopt;   /* the optimizer's part of tv: [opt_lo, opt_lo + nopt) (a ZeRO-1 shard, else all) */
    float *mom, *vel;      /* AdamW moments over that part */
    adamw_seg *segs;
    int nseg;
    adamw_cfg ac;
    sched_cfg sc;
    double aux_coef, z_coef;
    int step;              /* optimizer steps completed */
    long long tokens_seen;
    double elapsed0;       /* wall seconds of the earlier runs of this training (trainer_state.json) */
    double t_start;        /* when this process's first step began */
    char chat_template[16]; /* the shards' chat_template attribute ("" when they have none) */
    rng_state rng;
    FILE *metrics;
    char run_dir[4096], ckpt_root[4096], last_ckpt[4096];
    long *load;            /* (L, E) expert picks of the current step */
    double last_loss, last_val_loss; /* for trainer_state.json and the model card */
    model_prof prof;       /* --profile: kernel times */
    double t_opt, t_step, t_data; /* --profile: optimizer, whole steps, data wait */
    double t_fb;           /* wall time inside model_forward_backward */
    int prof_steps;
    int lock_fd;           /* RUN_DIR/.moet-train.lock, flock'ed while training (-1: none) */
    int made_run_dir;      /* levels of run_dir this process created (it holds the lock; removed if setup fails) */
    int g_zeroed;          /* tv.g is all zero (AdamW zeroed it as it read it): no zeroing pass */
    int warned_no_targets; /* a step without target tokens was reported */
    plan_in plan_in;       /* the run as the memory planner sees it */
    size_t planned_bytes;  /* its planned peak (0: not planned) */
    int stop;              /* under MPI: the ranks agreed to stop after this step */
    double *sums;          /* under MPI: (2 + L*E) per-step sums over the ranks */
    dist_times dt0;        /* --profile: communication times at the end of the warm-up step */
} trainer;

/* Write RUN_DIR/checkpoints/step_N (rank 0; under ZeRO-1 the AdamW shards are gathered first).
 * Every rank returns the same status; tr->last_ckpt is the new checkpoint on every rank. */
int trainer_save_checkpoint(trainer *tr, char *err);
/* Step, data cursor, RNG and this rank's AdamW moments from checkpoint dir (every rank). */
int trainer_restore_state(trainer *tr, const char *dir, char *err);
/* Drop metrics.jsonl lines of steps after `step` (a resumed run logs them again). */
int trainer_trim_metrics(const char *path, int step, char *err);
/* Wall seconds of the whole training so far: the earlier runs' and this one's. */
double trainer_elapsed(const trainer *tr);

#endif
