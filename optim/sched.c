/* sched: the learning-rate schedules documented in sched.h. */
#include "optim/sched.h"

#include <math.h>
#include <string.h>

static const char *const names[] = {"constant", "cosine", "linear", "wsd"};

/* Fraction of the way from `start` to `end` at step s, clamped to [0, 1]. */
static double progress(int s, int start, int end)
{
    if (end <= start) return 1.0;
    double p = (double)(s - start) / (double)(end - start);
    return p < 0 ? 0 : p > 1 ? 1 : p;
}

double sched_lr(const sched_cfg *c, int step)
{
    const int s = step < 1 ? 1 : step;
    const int W = c->warmup_steps > 0 ? c->warmup_steps : 0, T = c->max_steps;
    const double lr = c->lr, lo = c->lr * c->min_lr_ratio;
    if (s <= W) return lr * s / W;
    switch (c->kind) {
    case SCHED_COSINE: return lo + (lr - lo) * 0.5 * (1.0 + cos(M_PI * progress(s, W, T)));
    case SCHED_LINEAR: return lr - (lr - lo) * progress(s, W, T);
    case SCHED_WSD: {
        int D = c->decay_steps > 0 ? c->decay_steps : 0;
        int start = T - D > W ? T - D : W;
        if (D == 0 || s <= start) return lr;
        return lr - (lr - lo) * progress(s, start, T);
    }
    case SCHED_CONSTANT:
    default: return lr;
    }
}

const char *sched_name(sched_kind k)
{
    return (unsigned)k < sizeof names / sizeof names[0] ? names[k] : "?";
}

int sched_parse(const char *name, sched_kind *k)
{
    for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(name, names[i])) {
            *k = (sched_kind)i;
            return 0;
        }
    return -1;
}
