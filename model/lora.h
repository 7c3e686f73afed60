/* lora: low-rank adapters as PEFT defines them, y = W x + s * B (A drop(x)) with
 * s = alpha / r (rsLoRA: alpha / sqrt(r)), on any of q/k/v/o_proj and the MLP projections
 * (the family's names: Mixtral w1/w2/w3, the others gate_proj/down_proj/up_proj), which adapt
 * every expert (one adapter each) and the dense MLP / shared expert where a layer has one,
 * as PEFT's target_modules matching does; plus an optional fully trained router (PEFT
 * modules_to_save).
 * The adapters live in their own flat buffer with PEFT tensor names; the base model stays
 * frozen (no gradients, no optimizer state, its dW GEMMs skipped). */
#ifndef MOET_LORA_H
#define MOET_LORA_H

#include <stdint.h>

#include "model/model.h"

/* Targets (what lora.targets names): attention, and the MLP's gate (w1), down (w2), up (w3).
 * Sites (where adapters sit): the targets, with W* on the experts and S* on a layer's dense
 * MLP or shared expert. */
enum { LORA_Q, LORA_K, LORA_V, LORA_O, LORA_W1, LORA_W2, LORA_W3, LORA_NT };
enum { LORA_S1 = LORA_NT, LORA_S2, LORA_S3, LORA_NS };

/* The family's name of target t: "q_proj" ... "o_proj", then "w1" "w2" "w3" (Mixtral) or
 * "gate_proj" "down_proj" "up_proj" (the others). */
const char *lora_target_name(int t, int family);
/* Target of a name in any family's spelling, -1 if unknown. */
int lora_target_parse(const char *name);
/* 0 when every name is the family's own spelling; else one line saying which it uses. */
int lora_targets_check(const char *const *names, int n, int family, char *err);

typedef struct {
    int r;
    double alpha;
    int rslora;
    double dropout;      /* training only */
    unsigned targets;    /* bit t set: adapters on target t */
    int train_router;    /* router gate trained fully (modules_to_save) */
} lora_config;

/* One adapter site (layer l, site t): A (r, in) and B (out, r); for expert sites E of
 * each, expert e at A + e*r*in, B + e*out*r. */
typedef struct {
    float *A, *B, *dA, *dB;
    int in, out, n; /* n: 1, or n_experts */
    int layer, target;
} lora_site;

typedef struct lora {
    lora_config lc;
    float scale;
    model_table tab;     /* PEFT names, e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight */
    float *w, *g;        /* trainable buffer and its gradient */
    lora_site *sites;    /* [L][LORA_NS]; A == NULL where there is no adapter */
    int family;
    int L;
    uint64_t drop_key;   /* dropout stream of the current micro-batch (lora_set_dropout_key) */
    uint64_t drop_row0;  /* data parallelism: index of this rank's first row in the global micro-batch's
                          * token rows, so attention and dense-MLP adapters drop what one process would
                          * (0 alone; expert adapters draw per rank) */
    int training;        /* dropout on (set by model_forward_backward) */
    float *scr_x, *scr_t, *scr_a; /* scratch: dropped input, input-gradient term, dxa */
    size_t scr_floats, scr_cols;  /* scr_x, scr_t: rows x scr_cols (only with dropout); scr_a: rows x r */
    size_t scr_arows;
} lora;

/* A view of lo whose scratch starts at row row0: calls on disjoint row ranges (the experts of
 * a layer, run side by side on the cores) then never share scratch. */
void lora_scratch_rows(const lora *lo, int row0, lora *view);

/* Create adapters for m (not attached yet); A ~ kaiming-uniform(a=sqrt(5)) i.e.
 * U(-1/sqrt(in), 1/sqrt(in)), B = 0, seeded; router copies start from m's gates. */
int lora_create(lora **out, const model *m, const lora_config *lc, uint64_t seed, char *err);
void lora_free(lora *lo);
/* Attach to m (m->lora = lo): forward/backward use the adapters; with train_router the
 * layers' gate pointers switch to the adapter's copies. */
void lora_attach(model *m, lora *lo);
/* Fold the adapters into m's base weights (W += s B A; router copies replace the gates)
 * and detach. Needs an fp32 store (a 16-bit base is merged tensor by tensor on export). */
int lora_merge(model *m, char *err);
/* Rows [r0, r1) of the adapters' contribution to base tensor name (HF name): delta
 * (r1-r0, in) = s B[r0:r1] A; returns 1, or 0 (delta untouched) when no adapter sits on it
 * (the router copy, when trained, is not a delta). */
int lora_delta_rows(const lora *lo, const model *m, const char *name, int r0, int r1, float *delta);
/* The same for many row blocks of one tensor: lora_find looks name up once (0: no adapter
 * on it), lora_ref_rows then writes rows [r0, r1) of its delta. */
typedef struct {
    const lora_site *s;
    int e;
} lora_ref;
int lora_find(const lora *lo, const model *m, const char *name, lora_ref *ref);
void lora_ref_rows(const lora *lo, const lora_ref *ref, int r0, int r1, float *delta);
/* The trained router copy standing for base tensor name (train_router), or NULL. */
const float *lora_router_copy(const lora *lo, const char *name);

/* Site of layer l, site t, or NULL (no adapter / no LoRA). */
const lora_site *lora_site_at(const struct lora *lo, int l, int t);

/* The dropout stream of the next micro-batch: a pure function of (seed, step, micro) so
 * a resumed run drops the same units. */
void lora_set_dropout_key(lora *lo, uint64_t seed, uint64_t step, int micro);

/* Scratch for up to rows x cols inputs (called by model_acts_create), and its bytes. */
int lora_reserve(lora *lo, size_t rows, size_t cols, char *err);
size_t lora_scratch_bytes(const lora_config *lc, size_t rows, size_t cols);
/* Trainable parameters of adapters lc on a model of config c (without creating them). */
size_t lora_param_count(const model_config *c, const lora_config *lc);

/* ---- the hooks used by model/forward.c and model/moe.c (e = expert, 0 for attention)
 * forward: y (rows, ldy) += s * (drop(x) A^T) B^T, saving xa = drop(x) A^T (rows, r). */
void lora_forward(const lora *lo, const lora_site *s, int e, float *y, int ldy, const float *x, int ldx, int rows,
                  float *xa);
/* y (rows, ldy) := s * xa B^T: the adapter's output from a saved xa (what forward added). */
void lora_output(const lora *lo, const lora_site *s, int e, float *y, int ldy, const float *xa, int rows);
/* backward, weight part: dB += s dy^T xa, dxa = s dy B (written to lo->scr_a), dA += dxa^T drop(x). */
void lora_backward_w(const lora *lo, const lora_site *s, int e, const float *dy, int lddy, const float *x, int ldx,
                     int rows, const float *xa);
/* backward, input part (after lora_backward_w): dx (rows, lddx) += drop'(dxa A). */
void lora_backward_x(const lora *lo, const lora_site *s, int e, float *dx, int lddx, int rows);

#endif
