/* cfg: the YAML run config (DESIGN.md "YAML config"), read with libyaml, checked, and
 * resolved into one typed struct with every default filled in.
 *
 *   cfg c;  char err[ERR_MAX];
 *   if (cfg_load(&c, "configs/tiny.yaml", overrides, n_overrides, err)) -> print err, exit 1
 *   ... c.optim.lr, c.data.seq_len ...
 *   cfg_free(&c);
 *
 * Rules (the same for the file and for command-line overrides):
 * - Unknown keys and sections are errors, with the nearest known key suggested:
 *   "cfg.yaml:7: unknown key 'optim.learning_rate' (did you mean 'optim.lr'?)".
 * - Type and range errors name the key path and the value:
 *   "cfg.yaml:9: optim.lr: expected a positive number, got \"fast\"".
 *   Messages start with "FILE:LINE: " for the file (cfg_parse_string: "line N: ") and
 *   "command line: " for overrides.
 * - A key given as null (`key:`, `~`, `null`) is the same as leaving it out.
 * - Overrides are `key.path=value`, value read as YAML (scalar, or flow list/map):
 *   optim.lr=1e-4  data.train=[a.h5,b.h5]  model.arch.hidden_size=128  lora.enabled=true.
 *   They are applied to the parsed tree before validation (missing sections are created).
 * - Numbers: YAML 1.2 style, so 1e-4 is a number (PyYAML would read a string). Integer
 *   keys accept integral values (1e3). Booleans: true/false (True, TRUE, ...).
 *
 * Choices where DESIGN.md is silent:
 * - run.name defaults to "run"; run.dir to "runs/<run.name>"; run.seed in [0, 2^53] (so it
 *   survives JSON exactly).
 * - model: at least one of init_from and arch. Both may be given: then arch holds keys to
 *   apply over the checkpoint's config.json (the trainer merges them; shape changes are the
 *   loader's error). arch is any mapping of HF config.json keys, kept as JSON text and not
 *   checked here (the model module parses it).
 * - model.router_aux_loss_coef left out (or null): aux_coef_set = 0 and the trainer uses
 *   the model config's router_aux_loss_coef, else 0.02 (aux_coef holds 0.02 then).
 * - data.train is required (one file or a list; globs are kept as written, relative paths
 *   are relative to the working directory); data.seq_len >= 2 is required.
 * - train.batch_size, train.max_steps and optim.lr are required; tokenizer is optional.
 * - train.eval_batches 0 = the whole val set; eval_every / save_every 0 = never during the
 *   run (eval_every > 0 needs data.val); keep_checkpoints 0 = keep all.
 * - train.eval_at_start (extra key): eval before the first step of a fresh run (a baseline
 *   at step 0; not repeated on resume); default true when data.val lists files, and true
 *   without data.val is an error.
 * - train.resume: auto (newest complete checkpoint in run.dir, if any; also `true`),
 *   never (start fresh; also `false`), or a path to one checkpoint directory
 *   (write ./auto for a directory literally named auto).
 * - optim.grad_clip 0 disables clipping. optim.warmup_steps <= train.max_steps.
 * - optim.decay_steps (extra key, wsd only): length of the final decay, default
 *   max_steps/5 (the last 20%); warmup_steps + decay_steps <= max_steps.
 * - lora.r and lora.alpha are required when lora.enabled is true (null when not given);
 *   lora.init_from needs lora.enabled: true.
 *   lora.targets: any of q_proj k_proj v_proj o_proj and the MLP's projections in the
 *   model family's names (Mixtral w1 w2 w3, the others gate_proj down_proj up_proj: every
 *   expert, and the dense MLP / shared expert where a layer has one), at least one, no repeats.
 * - model.base_dtype: auto (a LoRA run keeps a BF16/F16 base as stored, mapped; fp32 otherwise),
 *   float32, bfloat16, float16 (a frozen base converted once); a full fine-tune is fp32 and
 *   refuses bfloat16/float16.
 * - train.activation_checkpointing: false (keep every layer's activations) or true (keep
 *   each layer's input, recompute one layer at a time in backward: same results). The router is not a LoRA target: lora.train_router: true
 *   trains the gate weights fully (as modules_to_save) next to the adapters.
 * - dist.*: only used under an MPI launcher with more than one rank; dist.zero null means
 *   ZeRO-1 there; the section is not part of a run's identity (a resume may change it). */
#ifndef MOET_CONFIG_H
#define MOET_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "optim/adamw.h"
#include "optim/sched.h"

typedef enum { CFG_RESUME_AUTO, CFG_RESUME_NEVER, CFG_RESUME_PATH } cfg_resume;
/* model.base_dtype: auto keeps a frozen base's 16-bit matrices as stored (LoRA), else fp32. */
typedef enum { CFG_BASE_AUTO, CFG_BASE_F32, CFG_BASE_BF16, CFG_BASE_F16 } cfg_base_dtype;
const char *cfg_base_dtype_name(int d); /* "auto", "float32", "bfloat16", "float16" */

typedef struct {
    struct {
        char *name;              /* "run" */
        char *dir;               /* "runs/<name>" */
        uint64_t seed;           /* 0 */
    } run;
    struct {
        char *init_from;         /* HF model dir, or NULL: random init from arch */
        char *arch_json;         /* model.arch as a JSON object, or NULL */
        double aux_coef;         /* router_aux_loss_coef; 0.02 when not set */
        int aux_coef_set;        /* 1: given in the config, overrides the model config */
        double z_coef;           /* router_z_loss_coef, 0 */
        int base_dtype;          /* CFG_BASE_*: how a frozen base's big matrices are kept */
    } model;
    char *tokenizer;             /* tokenizer.json path, or NULL */
    struct {
        char **train;            /* files or globs, as written; n_train >= 1 */
        int n_train;
        char **val;              /* may be empty */
        int n_val;
        int seq_len;             /* >= 2 */
        int shuffle;             /* 1 */
        int document_mask;       /* 0 */
    } data;
    struct {
        int batch_size;          /* rows per micro-batch, >= 1 */
        int grad_accum;          /* 1 */
        int max_steps;           /* optimizer steps, >= 1 */
        int log_every;           /* 1 */
        int eval_every;          /* 0 = never */
        int eval_batches;        /* 0 = whole val set */
        int save_every;          /* 0 = never during the run */
        int keep_checkpoints;    /* 3; 0 = keep all */
        cfg_resume resume;       /* auto */
        char *resume_path;       /* CFG_RESUME_PATH only, else NULL */
        int activation_checkpointing; /* 0: keep every layer's activations; 1: recompute in backward */
        int eval_at_start;       /* 1 when data.val lists files: eval at step 0 of a fresh run */
    } train;
    struct {
        double lr;               /* peak, > 0 */
        double beta1, beta2;     /* 0.9, 0.95; each in [0, 1) */
        double eps;              /* 1e-8, > 0 */
        double weight_decay;     /* 0, >= 0; tensors with ndim >= 2 only */
        double grad_clip;        /* 1.0; 0 = off */
        sched_kind schedule;     /* constant */
        int warmup_steps;        /* 0 */
        double min_lr_ratio;     /* 0.1, in [0, 1] */
        int decay_steps;         /* wsd: max_steps / 5 unless given */
    } optim;
    struct {
        int enabled;             /* 0 */
        int r;                   /* >= 1 when enabled; 0 when not given */
        double alpha;            /* > 0 when enabled; 0 when not given */
        double dropout;          /* 0, in [0, 1) */
        int rslora;              /* 0: scale alpha/r; 1: alpha/sqrt(r) */
        char **targets;          /* default q_proj k_proj v_proj o_proj */
        int n_targets;
        char *init_from;         /* PEFT adapter dir, or NULL */
        int train_router;        /* 0 */
    } lora;
    struct {                     /* data parallelism under an MPI launcher (dist/dist.h) */
        int zero;                /* -1 (null): 1 with more than one rank; 0 or 1 (ZeRO-1) */
        double bucket_mb;        /* 4: gradients are reduced in buckets of this size */
        int overlap;             /* 1: buckets go out during the backward (0: after it) */
        double timeout_s;        /* 600: a rank waiting longer for the others stops the run */
    } dist;
} cfg;

/* Read, override, check and resolve. On failure returns -1 with one line in err and
 * leaves *c empty (cfg_free is safe either way). overrides may be NULL when n is 0. */
int cfg_load(cfg *c, const char *yaml_path, char **overrides, int n_overrides, char *err);
int cfg_parse_string(cfg *c, const char *yaml_text, char **overrides, int n_overrides,
                     char *err);
void cfg_free(cfg *c);

/* The fully resolved config, every key, as YAML that cfg_load reads back to an equal cfg. */
void cfg_print_yaml(const cfg *c, FILE *f);

/* The same as one compact JSON object (sections as in the YAML; unset values null), for
 * trainer_state.json. malloc'd; free() it. NULL only when out of memory. */
char *cfg_to_json(const cfg *c);

/* The reverse of cfg_to_json (checked like a YAML config), e.g. to compare the config of a
 * resumed run with its checkpoint's snapshot. */
int cfg_from_json(cfg *c, const char *json, char *err);

/* The optimizer's and the schedule's view of the config. */
void cfg_adamw(const cfg *c, adamw_cfg *a);
void cfg_sched(const cfg *c, sched_cfg *s);

#endif
