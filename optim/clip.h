/* clip: global-norm gradient clipping, as torch.nn.utils.clip_grad_norm_. */
#ifndef MOET_CLIP_H
#define MOET_CLIP_H

#include <stddef.h>

/* g is (n,): every trainable gradient, one flat buffer.  Returns the L2 norm of g BEFORE
 * clipping (sum of squares accumulated in double).  When max_norm > 0 and
 * coef = max_norm / (norm + 1e-6) is < 1, scales g by coef (torch's formula).
 * A non-finite norm (inf or NaN gradients) is returned without touching g: the caller
 * stops the run.  max_norm <= 0 disables clipping (the norm is still returned). */
double clip_grad_norm(float *g, size_t n, double max_norm);

/* The same in two halves, for an optimizer that applies the scale as it reads g (one pass
 * over the gradients fewer): the norm (in double), and the factor clip_grad_norm would
 * scale g by: max_norm / (norm + 1e-6) rounded to float, or exactly 1 when it does not
 * clip (coef >= 1, max_norm <= 0 or a non-finite norm). */
double clip_norm(const float *g, size_t n);
/* sum of g[i]^2 in double: a shard's share of the global norm (clip_norm = its sqrt). */
double clip_sumsq(const float *g, size_t n);
float clip_coef(double norm, double max_norm);

#endif
