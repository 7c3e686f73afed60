/* eval: the cross-entropy of a model over a validation set — `moet eval` and the trainer's
 * periodic eval share it, so the two report the same number for the same rows. */
#ifndef MOET_EVAL_H
#define MOET_EVAL_H

#include "data/loader.h"
#include "model/model.h"

typedef struct {
    double loss;      /* mean token cross-entropy over the counted targets */
    long targets;     /* counted targets (loss_mask 1, not the first position of a row) */
    int64_t rows;     /* rows evaluated */
} eval_result;

/* Evaluate the first max_batches batches of L (opened with shuffle 0), or with max_batches
 * <= 0 (or >= its batches) every row, the last partial batch included. b: a batch of L's
 * [B, T]; labels: B*T scratch; a: an arena for [B, T]. Returns 0; 1 when the rows give no
 * loss (no target at all, or a non-finite loss: r->loss is NaN, the reason in err); -1 on
 * an error (unreadable data), one line in err. With data parallelism (m->dp; L reads this
 * rank's slice) the sums are over all ranks and every rank returns the same code; err is ""
 * on a rank whose own rows were fine when another rank's were not. */
int eval_run(model *m, model_acts *a, loader *L, int64_t max_batches, int doc_mask, loader_batch *b,
             int32_t *labels, eval_result *r, char *err);

#endif
