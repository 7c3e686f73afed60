/* hf: Hugging Face model directories (config.json + safetensors weights, the names of
 * save_pretrained), loaded into and saved from a moet model. */
#ifndef MOET_HF_H
#define MOET_HF_H

#include <stddef.h>

#include "checkpoints/st.h"
#include "model/model.h"

/* Parse DIR/config.json. */
int ckpt_read_config(const char *dir, model_config *c, char *err);

/* Create m from an HF model dir (or a full training checkpoint): config + weights, all in
 * fp32 (F32, BF16, F16 and F64 converted straight from the mapped file). */
int ckpt_load_model(model *m, const char *dir, int with_grads, char *err);
/* The same with the big matrices of a frozen base (no gradients) kept as base_dtype:
 * MODEL_F32, MODEL_BF16, MODEL_F16, or CKPT_BASE_AUTO for the files' own 16-bit dtype
 * (ckpt_disk_dtype). with_grads forces fp32. */
#define CKPT_BASE_AUTO (-1)
int ckpt_load_model_as(model *m, const char *dir, int with_grads, int base_dtype, char *err);
/* MODEL_BF16 / MODEL_F16 when most bytes of the 2-D tensors at path are stored so, else
 * MODEL_F32. */
int ckpt_disk_dtype(const char *path, int *dtype, char *err);

/* Fill m's weights from a safetensors file or dir: every tensor of m must be present with
 * its shape; a tensor m does not know is an error (a different architecture); a
 * non-finite value is an error naming the tensor. Low tensors of m (model_create_low) whose
 * file dtype is m->base_dtype point into the mapping, which m then owns (closed by
 * model_free); others are converted. */
int ckpt_load_weights(model *m, const char *path, char *err);

/* The st_out list for m's weights (HF names, fp32 sources; an fp32 store) converted to dtype.
 * Returns a malloc'd array of m->tab.n entries. */
st_out *ckpt_weight_list(const model *m, st_dtype dtype);

/* Write config.json, generation_config.json and the weights (sharded above max_shard
 * bytes, 0 = one file) into an existing directory. */
int ckpt_save_model(const model *m, const char *dir, st_dtype dtype, size_t max_shard, char *err);

/* The same with lo's adapters folded in (W + s B A computed in fp32, then written in dtype;
 * a trained router copy replaces the gate), tensor by tensor: works on a 16-bit base that
 * lora_merge cannot change in place. lo NULL: ckpt_save_model. */
struct lora;
int ckpt_save_merged(const model *m, const struct lora *lo, const char *dir, st_dtype dtype, size_t max_shard,
                     char *err);

/* "float32", "bfloat16" or "float16" for config.json's dtype. */
const char *ckpt_dtype_torch_name(st_dtype d);

#endif
