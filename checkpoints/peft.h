/* peft: LoRA adapters in Hugging Face PEFT's format: adapter_config.json +
 * adapter_model.safetensors with keys base_model.model.model.layers.L.<module>.lora_A.weight
 * [r, in] / lora_B.weight [out, r]; experts per expert (...block_sparse_moe.experts.E.w1...);
 * a trained router as modules_to_save ["gate"] (...block_sparse_moe.gate.weight). */
#ifndef MOET_PEFT_H
#define MOET_PEFT_H

#include <stddef.h>

#include "checkpoints/st.h"
#include "model/lora.h"

/* Parse DIR/adapter_config.json into lc; base (may be NULL) receives
 * base_model_name_or_path. Unsupported PEFT features (DoRA, rank/alpha patterns, fused
 * target_parameters, other module names) are errors naming them. */
int peft_read_config(const char *dir, lora_config *lc, char *base, size_t cap, char *err);

/* Fill lo's tensors from DIR/adapter_model.safetensors: every tensor must be present with
 * its shape; unknown tensors are an error. */
int peft_load_weights(lora *lo, const char *dir, char *err);

/* adapter_config.json text (malloc'd). */
char *peft_config_json(const lora_config *lc, int family, const char *base_model);

/* st_out list of lo's tensors (malloc'd, lo->tab.n entries). */
st_out *peft_weight_list(const lora *lo, st_dtype dt);

/* Write adapter_config.json + adapter_model.safetensors into an existing dir. */
int peft_save(const lora *lo, const char *dir, const char *base_model, st_dtype dt, char *err);

#endif
