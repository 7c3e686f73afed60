/* sched: learning-rate schedules, a pure function of the optimizer step.
 *
 * step s is 1-based: the s-th optimizer update uses sched_lr(s).  With W = warmup_steps,
 * T = max_steps, lr = peak, lo = lr * min_lr_ratio:
 *   warmup (every kind, when W > 0):  s <= W  ->  lr * s / W   (s=1: lr/W, s=W: lr)
 *   after warmup, with p = (s - W) / (T - W) in (0, 1]  (the decay starts from lr at s=W):
 *     constant  lr
 *     cosine    lo + (lr - lo) * (1 + cos(pi * p)) / 2
 *     linear    lr - (lr - lo) * p
 *     wsd       lr while s <= T - D (D = decay_steps; "stable"), then linear over the last
 *               D steps: lr - (lr - lo) * (s - (T - D)) / D, reaching lo at s = T.
 *               The decay never starts before the warmup ends.
 * Every kind reaches exactly lo at s = T (constant: lr) and stays there for s > T;
 * s < 1 is treated as 1. */
#ifndef MOET_SCHED_H
#define MOET_SCHED_H

typedef enum { SCHED_CONSTANT, SCHED_COSINE, SCHED_LINEAR, SCHED_WSD } sched_kind;

typedef struct {
    sched_kind kind;
    double lr;             /* peak learning rate */
    int warmup_steps;      /* W >= 0 */
    int max_steps;         /* T >= 1 */
    double min_lr_ratio;   /* lo = lr * min_lr_ratio, in [0, 1] */
    int decay_steps;       /* D, wsd only */
} sched_cfg;

double sched_lr(const sched_cfg *s, int step);

/* "constant", "cosine", "linear", "wsd". */
const char *sched_name(sched_kind k);

/* Name to kind; returns 0, or -1 when the name is none of the above. */
int sched_parse(const char *name, sched_kind *k);

#endif
