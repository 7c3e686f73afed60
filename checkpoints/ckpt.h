/* ckpt: training-state checkpoints, RUN_DIR/checkpoints/step_NNNNNNNN/ (DESIGN.md).
 * A checkpoint is built in a temp dir, fsynced and renamed, so a directory named step_*
 * is always complete; trainer_state.json lists the sha256 of every other file and is
 * checked again before a resume trusts it. What goes into the files is the trainer's
 * business: this module only writes, finds, verifies and prunes. */
#ifndef MOET_CKPT_H
#define MOET_CKPT_H

#include <stddef.h>

#include "checkpoints/st.h"

typedef struct {
    const char *name;      /* file name inside the checkpoint, e.g. "model.safetensors" */
    const st_out *tensors; /* a safetensors file of n tensors ... */
    int n;
    const char *text;      /* ... or a text file */
} ckpt_file;

/* Write ROOT/step_%08d: the files, then trainer_state.json = state_json (a JSON object)
 * with "files": {name: sha256} added. Then keeps only the `keep` newest checkpoints
 * (0 = all). path_out (>= 4096 bytes) receives the checkpoint's path. */
int ckpt_save(const char *root, int step, const ckpt_file *files, int n, const char *state_json, int keep,
              char *path_out, char *err);

/* Newest checkpoint under ROOT whose trainer_state.json parses and whose files match
 * their sha256; path_out = "" when there is none. Damaged ones are skipped (their count
 * in *skipped, may be NULL). Leftover temp dirs of interrupted saves are removed. */
int ckpt_find_latest(const char *root, char *path_out, size_t cap, int *skipped, char *err);

/* Verify a checkpoint dir and return its trainer_state.json text (malloc'd). */
int ckpt_read_state(const char *dir, char **state_json, char *err);

/* The trainer's own fields of a trainer_state.json text (the config snapshot, last losses
 * and the sha256s are read by their users). Each is checked: step an integer in [0, 1e9],
 * epoch / index integers in [0, 2^53), rng four strings of 16 hex digits (not all zero),
 * tokens_seen absent (0) or an integer in [0, 2^53), elapsed_s absent (0) or a finite number >= 0,
 * chat_template absent ("") or a template name (data/chat.h). err: "step, data position or rng
 * missing or out of range: <which>". */
typedef struct {
    int step;
    long long epoch, index;   /* the loader position of the next batch */
    unsigned long long rng[4];
    long long tokens_seen;
    double elapsed_s;         /* wall seconds of training so far; absent (older checkpoints): 0 */
    char chat_template[16];   /* the shards' chat template ("mistral", "chatml"); absent: "" */
    int lora;                 /* "kind": "lora" (else a full model) */
} ckpt_state;
int ckpt_state_parse(const char *json, ckpt_state *st, char *err);

/* 1 if dir looks like a training checkpoint (has trainer_state.json). */
int ckpt_is_checkpoint(const char *dir);

#endif
