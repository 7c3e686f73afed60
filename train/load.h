/* load: open whatever a user points a command at: an HF model dir, a full training
 * checkpoint, or a LoRA checkpoint (base model rebuilt from the run's config, adapter
 * from the checkpoint). Used by eval, export and generate. */
#ifndef MOET_LOAD_H
#define MOET_LOAD_H

#include "model/lora.h"
#include "model/model.h"
#include "train/config.h"

/* The model config a run describes: model.init_from's config.json with model.arch keys
 * laid over it, or model.arch alone. */
int load_run_config(const cfg *c, model_config *mc, char *err);

/* Base model of a run (no gradients): init_from weights or random init from run.seed. */
int load_run_base(const cfg *c, model *m, int with_grads, char *err);

/* Load path. *lo receives the attached adapter of a LoRA checkpoint (else NULL);
 * *state (may be NULL) the checkpoint's trainer_state.json text (NULL for an HF dir). */
int load_any_model(const char *path, model *m, lora **lo, char **state, char *err);
/* The same with the store chosen: CKPT_BASE_AUTO (what load_any_model does: a 16-bit HF dir
 * stays 16-bit, a LoRA checkpoint's base as its model.base_dtype said) or MODEL_F32. */
int load_any_model_as(const char *path, int base_dtype, model *m, lora **lo, char **state, char *err);
/* The same for every kind of path a user points at: an HF dir, a full or LoRA checkpoint, or a
 * PEFT adapter dir (moet's peft export or PEFT's own) on the base given by base (--base DIR),
 * else its base_model_name_or_path. base (non-NULL) also replaces a LoRA checkpoint's base.
 * A checkpoint's relative paths resolve against the directory its run started in. */
int load_any_model_ex(const char *path, int base_dtype, const char *base, model *m, lora **lo, char **state,
                      char *err);

/* The directory of the model path was trained from (a checkpoint's model.init_from resolved as
 * load_any_model_ex does, a PEFT adapter's base, an HF dir itself; given overrides), or ""
 * (a random init, or a base not found). */
int load_base_dir(const char *path, const char *state_json, const char *given, char *out, size_t cap);

/* lora.* of a config as a lora_config (targets as bits). 0, or -1 for an unknown target. */
int load_lora_config(const cfg *c, lora_config *lc, char *err);

/* A resume of checkpoint dir under config now must be the same run: the same resolved model,
 * data files, seq_len, shuffle, document mask, batch, grad accumulation, seed and LoRA settings
 * as the checkpoint's own config (trainer_state.json); optim, max_steps, eval, save and log
 * settings may change. 0 ok; -1 with the first differing key named in err. */
int load_check_resume(const cfg *now, const char *dir, char *err);

/* The chat_template string of the tokenizer_config.json beside tokenizer.json tok_path
 * (malloc'd), or NULL when there is none, it cannot be read, or memory runs out. */
char *load_tokenizer_chat_template(const char *tok_path);

/* The tokenizer.json that goes with path: given (an error if it does not exist), else the
 * run's `tokenizer`, else model.init_from/tokenizer.json (both from state_json, the
 * checkpoint's trainer_state.json, may be NULL), else path/tokenizer.json. out is "" when
 * none of them exists. */
int load_find_tokenizer(const char *path, const char *state_json, const char *given, char *out, size_t cap,
                        char *err);

#endif
