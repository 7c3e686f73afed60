/* plan: the memory a training run holds at its peak, from the same sizing code the trainer
 * allocates with (model_store_plan, model_acts_bytes_ckpt, lora_param_count), so `moet info`
 * and the trainer's start-up line can say whether a run fits before it starts.
 *
 * What counts (bytes, at the peak of a step):
 *   weights      the model store: fp32 buffer + the frozen base's 16-bit matrices (mapped
 *                file pages count: they are resident once read)
 *   trainable    LoRA adapters (and a trained router copy); 0 in a full fine-tune, whose
 *                weights are the trainable tensors
 *   grads        one gradient per trainable value
 *   optimizer    AdamW m and v (divided over the ranks with ZeRO-1)
 *   activations  the arena (kept activations + one layer of scratch + lm_head chunk)
 *   scratch      widening tiles of a 16-bit base, LoRA scratch, data batches, and the
 *                process itself (runtime: libraries, OpenBLAS buffers, thread stacks,
 *                measured on this machine and kept as a constant plus a per-thread term) */
#ifndef MOET_PLAN_H
#define MOET_PLAN_H

#include <stddef.h>

#include "model/lora.h"
#include "model/model.h"

typedef struct {
    int B, T;           /* micro-batch rows (per rank), sequence length */
    int grad_accum;
    int ckpt;           /* activation checkpointing */
    int lora;           /* 0: full fine-tune */
    lora_config lc;     /* with lora */
    int base_dtype;     /* MODEL_* the frozen base's big matrices are kept in (fp32 for full) */
    int ranks, zero;    /* data-parallel ranks (>= 1) and ZeRO-1 */
} plan_in;

typedef struct {
    size_t parameters, active, trainable_params;
    double flops_per_token;  /* forward, at T */
    size_t weights, trainable, grads, optimizer, activations, scratch, total;
    size_t tiles, lora_scratch, runtime, batches; /* the parts of scratch */
} plan_out;

int plan_make(const model_config *c, const plan_in *in, plan_out *out, char *err);

/* Peak resident set of this process so far (getrusage), bytes. */
size_t plan_peak_rss(void);
/* MemAvailable of /proc/meminfo, bytes; 0 if unknown. */
size_t plan_mem_available(void);

#endif
