/* gguf: llama.cpp's GGUF format, written from a moet model and its tokenizer
 * (DESIGN.md "GGUF"): the family's llama.cpp architecture ("llama" for Mixtral, "qwen3moe",
 * "qwen2moe", "olmoe") with {arch}.expert_count / {arch}.expert_used_count (Qwen: also
 * expert_feed_forward_length, expert_shared_feed_forward_length); experts stacked as
 * blk.L.ffn_{gate,up,down}_exps, router blk.L.ffn_gate_inp, q/k norms attn_{q,k}_norm,
 * biases attn_{q,k,v}.bias, shared expert ffn_{gate,up,down}_shexp + ffn_gate_inp_shexp;
 * q/k rows permuted back to interleaved RoPE for "llama" only (the others use NEOX RoPE,
 * HF's own layout); dims written innermost first; 32-byte alignment; tokenizer.ggml.* from
 * tokenizer.json. */
#ifndef MOET_GGUF_H
#define MOET_GGUF_H

#include "checkpoints/st.h"
#include "data/tok.h"
#include "model/model.h"

/* 0 when llama.cpp's architecture for c's family computes what c describes; else -1 and one
 * line naming the option it lacks (a dense MLP layer, norm_topk_prob against what the
 * architecture hard-codes, attention biases, clip_qkv, ...; see gguf.c). gguf_write_model
 * checks this first. */
int gguf_check_model(const model_config *c, char *err);

/* Write m and t to path (atomically: temp + fsync + rename; on failure path is untouched).
 * dtype (ST_F32, ST_F16 or ST_BF16; anything else is an error) is used for the 2-D/3-D
 * weight matrices; norms and the router stay F32 as llama.cpp's converter does. name goes
 * to general.name (a path keeps only its last component). t is required (GGUF embeds the
 * tokenizer) and may have fewer tokens than m's vocab: the rest become "[PADi]" (type
 * UNUSED); more tokens, token texts that repeat, or an odd head_dim are errors.
 * tokenizer.ggml.add_bos_token / add_eos_token / add_space_prefix follow what tok_encode
 * does.  A SentencePiece-style tokenizer is written as llama.cpp's "llama" model (scores),
 * a byte-level one as "gpt2" (merges, and tokenizer.ggml.pre = llama.cpp's name for its
 * pre-tokenizer regex; a regex llama.cpp has no name for is an error).
 * A model gguf_check_model refuses is an error. The base may be in the low-precision store. */
int gguf_write_model(const char *path, const model *m, const tok *t, st_dtype dtype, const char *name, char *err);
/* The same with tokenizer.chat_template (a Jinja string, data/chat.h) when not NULL. */
int gguf_write_model_ex(const char *path, const model *m, const tok *t, st_dtype dtype, const char *name,
                        const char *chat_template, char *err);

#endif
