/* hf: Hugging Face model directories (config.json + safetensors weights, the names of
 * save_pretrained), loaded into and saved from a moet model. */
#ifndef MOET_HF_H
#define MOET_HF_H

#include <stddef.h>

#include "checkpoints/st.h"
#include "model/model.h"

/* Parse DIR/config.json. */
int ckpt_read_config(const char *dir, model_config *c, char *err);

/* Create m from an HF model dir (or a full training checkpoint): config + weights.
 * F32, BF16 and F16 are converted to fp32 straight from the mapped file. */
int ckpt_load_model(model *m, const char *dir, int with_grads, char *err);

/* Fill m's weights from a safetensors file or dir: every tensor of m must be present with
 * its shape; a tensor m does not know is an error (a different architecture). */
int ckpt_load_weights(model *m, const char *path, char *err);

/* The st_out list for m's weights (HF names, fp32 sources) converted to dtype.
 * Returns a malloc'd array of m->tab.n entries. */
st_out *ckpt_weight_list(const model *m, st_dtype dtype);

/* Write config.json, generation_config.json and the weights (sharded above max_shard
 * bytes, 0 = one file) into an existing directory. */
int ckpt_save_model(const model *m, const char *dir, st_dtype dtype, size_t max_shard, char *err);

/* "float32", "bfloat16" or "float16" for config.json's dtype. */
const char *ckpt_dtype_torch_name(st_dtype d);

#endif
