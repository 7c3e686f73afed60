/* eval: validation cross-entropy over whole batches and the set's last partial batch. */
#include "train/eval.h"
#include "common/err.h"

#include <math.h>

static int eval_rows(model *m, model_acts *a, const loader_batch *b, int rows, int doc_mask, int32_t *labels,
                     double *ce, long *cnt, char *err)
{
    loader_batch_labels(b, rows, labels);
    model_batch mb = {rows, b->seq_len, b->tokens, labels, b->doc_start, doc_mask};
    model_stats st;
    if (model_forward(m, a, &mb, 0, 0, NULL, &st, err)) return -1;
    *ce += st.ce_sum;
    *cnt += st.n_targets;
    return 0;
}

int eval_run(model *m, model_acts *a, loader *L, int64_t max_batches, int doc_mask, loader_batch *b,
             int32_t *labels, eval_result *r, char *err)
{
    int64_t nb = loader_batches_per_epoch(L);
    int whole = max_batches <= 0 || max_batches >= nb, tail = 0, bad = 0;
    if (!whole) nb = max_batches;
    double ce = 0;
    long cnt = 0;
    if (loader_seek(L, (loader_pos){0, 0}, err)) return -1;
    for (int64_t i = 0; i < nb && !bad; i++)
        bad = loader_next(L, b, err) || eval_rows(m, a, b, b->batch_size, doc_mask, labels, &ce, &cnt, err);
    if (!bad && whole && (loader_read_tail(L, b, &tail, err) ||
                          (tail > 0 && eval_rows(m, a, b, tail, doc_mask, labels, &ce, &cnt, err))))
        bad = 1;
    if (m->dp && m->dp->sum) { /* data parallelism: each rank evaluated its slice of the rows */
        double v[3] = {ce, (double)cnt, bad};
        m->dp->sum(m->dp->ctx, v, 3);
        ce = v[0], cnt = (long)v[1];
        if (v[2] > 0 && !bad) err[0] = 0, bad = 1; /* another rank's data failed: it says why */
    }
    if (bad) return -1;
    r->rows = whole ? loader_rows(L) : nb * loader_batch_size(L);
    r->targets = cnt;
    r->loss = cnt ? ce / cnt : NAN;
    if (!cnt) {
        err_set(err, "no target tokens in the %lld evaluated rows (is every loss_mask 0?)", (long long)r->rows);
        return 1;
    }
    if (!isfinite(r->loss)) {
        err_set(err, "the loss over %ld targets is %g: the model's outputs are not finite", cnt, r->loss);
        return 1;
    }
    return 0;
}
