/* sample: choosing the next token from the logits, as Hugging Face's generate does it:
 * repetition penalty, then temperature, top-k and top-p (nucleus) filtering, then one
 * seeded draw (common/rng.h) from what is left, renormalised. Temperature 0 is greedy.
 * A sampler owns vocab-sized scratch, so sampling allocates nothing per token. */
#ifndef MOET_SAMPLE_H
#define MOET_SAMPLE_H

#include <stdint.h>

typedef struct {
    float temperature;        /* logits / T before the softmax; 0 = greedy (argmax) */
    int top_k;                /* keep the k highest logits; 0 = no limit */
    float top_p;              /* keep the smallest set, most likely first, whose probability
                                 reaches top_p; 1 = no limit */
    float repetition_penalty; /* CTRL's: a seen token's logit z becomes z/r if z > 0, else z*r;
                                 1 = off */
} sample_params;

/* Greedy, no filters. */
#define SAMPLE_GREEDY ((sample_params){0.0f, 0, 1.0f, 1.0f})

typedef struct sampler sampler;

/* Check the ranges: temperature >= 0, top_k >= 0, 0 < top_p <= 1, repetition_penalty > 0. */
int sample_check(const sample_params *p, char *err);

/* A sampler for logits of vocab entries, its draws seeded by seed. */
int sample_create(sampler **s, int vocab, const sample_params *p, uint64_t seed, char *err);
void sample_free(sampler *s);

/* Index of the largest logit (the lowest index among equals, as torch.argmax). */
int32_t sample_argmax(const float *logits, int vocab);

/* The distribution sample_next draws from: probs (vocab), 0 outside the kept set, summing
 * to 1; returns the size of the kept set. history (n_hist ids, repeats allowed) is what the
 * repetition penalty applies to (HF: the prompt and everything generated). Greedy or
 * top_k = 1 gives the one-hot of the argmax. logits is not modified. */
int sample_probs(sampler *s, const float *logits, const int32_t *history, int n_hist, float *probs);

/* One token drawn from sample_probs' distribution (no randomness used when greedy). */
int32_t sample_next(sampler *s, const float *logits, const int32_t *history, int n_hist);

#endif
