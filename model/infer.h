/* infer: autoregressive inference with a KV cache. The same model as model_forward
 * (same kernels where they fit, RoPE tables in double), but each token is computed once:
 * the keys (after RoPE) and values of every position seen so far stay in a cache of
 * [L][ctx, KV, hd] floats, and a new token only attends to them.
 *
 *   infer *st; infer_create(&st, &m, ctx, err);
 *   infer_prefill(st, prompt, n, logits, err);     -- positions 0..n-1, logits of n-1
 *   infer_step(st, next, logits, err);             -- position n, and so on
 *
 * The state is sized once for ctx positions (no allocation afterwards); the model must
 * outlive it and is only read. One state serves one sequence at a time. */
#ifndef MOET_INFER_H
#define MOET_INFER_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

typedef struct infer infer;

/* A state for sequences of up to ctx positions. */
int infer_create(infer **st, const model *m, int ctx, char *err);
void infer_free(infer *st);

/* Bytes infer_create(c, ctx) allocates (KV cache + scratch), without allocating. */
size_t infer_bytes(const model_config *c, int ctx);

/* Forget the sequence: the next token is position 0 again. */
void infer_reset(infer *st);
/* Positions filled so far (= the position the next token gets). */
int infer_pos(const infer *st);
int infer_ctx(const infer *st);

/* Append n tokens at positions pos..pos+n-1 through the batched path (GEMMs over the
 * tokens, in chunks of at most INFER_CHUNK rows). logits_last (V), when non-NULL, gets
 * the logits of the last of them; logits_all (n, V), when non-NULL, those of every one.
 * May be called more than once (a chat turn appended to a cached conversation). */
#define INFER_CHUNK 256
int infer_prefill(infer *st, const int32_t *tokens, int n, float *logits_last, float *logits_all, char *err);

/* Append one token at position pos; logits (V) of the next token. Matrix-vector products. */
int infer_step(infer *st, int32_t token, float *logits, char *err);

#endif
