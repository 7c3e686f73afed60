/* adamw: the AdamW update over flat fp32 buffers, numerically as torch.optim.AdamW
 * (single-tensor path, amsgrad off).  The optimizer knows nothing about layers: the
 * caller describes its parameter buffer as segments and flags the ones that take
 * weight decay (moet: tensors with ndim >= 2).
 *
 * Per element of each segment, with t = step (1-based) and every scalar rounded to
 * float once, as torch does:
 *     p  = p * (1 - lr*wd)                       only in segments with decay != 0
 *     m  = b1*m + (1-b1)*g                       (one FMA, as torch's AVX2 kernel)
 *     v  = b2*v + ((1-b2)*g)*g                   (one FMA)
 *     p  = p + (-(lr / (1-b1^t)) * m) / (sqrt(v) / sqrt(1-b2^t) + eps)
 * Elements outside every segment are not touched; segments must not overlap.
 * No allocation; OpenMP over elements. */
#ifndef MOET_ADAMW_H
#define MOET_ADAMW_H

#include <stddef.h>

typedef struct {
    double beta1, beta2;   /* torch defaults 0.9, 0.999; moet's config default 0.9, 0.95 */
    double eps;            /* added to sqrt(v_hat) */
    double weight_decay;   /* decoupled; applied only to segments with decay != 0 */
} adamw_cfg;

typedef struct {
    size_t offset, n;      /* elements [offset, offset+n) of p, g, m, v */
    int decay;             /* 1: apply weight decay to this segment */
} adamw_seg;

/* One optimizer step. p, g, m, v: the same flat layout; m and v start at zero.
 * step: 1 for the first update (bias correction); lr: this step's learning rate. */
void adamw_step(const adamw_cfg *c, float *p, const float *g, float *m, float *v,
                const adamw_seg *segs, int nseg, int step, float lr);
/* The same with every gradient read as g[i] * gscale (rounded to float, as an in-place
 * clip_grad_norm_ would have left it): clipping fused into the update, g untouched. */
void adamw_step_scaled(const adamw_cfg *c, float *p, const float *g, float *m, float *v,
                       const adamw_seg *segs, int nseg, int step, float lr, float gscale);
/* The same, and g := 0 over the segments as each element is read: the next step accumulates
 * into a zeroed buffer without a pass of its own (the zeroing pass is a write of the whole
 * buffer through memory, ~2% of a small model's step; here the line is already in cache). */
void adamw_step_consume(const adamw_cfg *c, float *p, float *g, float *m, float *v,
                        const adamw_seg *segs, int nseg, int step, float lr, float gscale);

/* The segments' parts inside elements [lo, hi) of the buffer, with offsets relative to lo,
 * into out (room for nseg): for an optimizer that owns one shard of the buffer (ZeRO-1).
 * A tensor cut by a shard boundary keeps its decay flag on both sides. out may be segs.
 * Returns the count. */
int adamw_segs_slice(const adamw_seg *segs, int nseg, size_t lo, size_t hi, adamw_seg *out);

#endif
