/* gguf: llama.cpp's GGUF format, written from a moet model and its tokenizer
 * (DESIGN.md "GGUF"): architecture "llama" with llama.expert_count /
 * llama.expert_used_count; experts stacked as blk.L.ffn_{gate,up,down}_exps, router
 * blk.L.ffn_gate_inp; q/k rows permuted back to llama.cpp's interleaved RoPE; dims
 * written innermost first; 32-byte alignment; tokenizer.ggml.* from tokenizer.json. */
#ifndef MOET_GGUF_H
#define MOET_GGUF_H

#include "checkpoints/st.h"
#include "data/tok.h"
#include "model/model.h"

/* Write m and t to path (atomically: temp + fsync + rename; on failure path is untouched).
 * dtype (ST_F32, ST_F16 or ST_BF16; anything else is an error) is used for the 2-D/3-D
 * weight matrices; norms and the router stay F32 as llama.cpp's converter does. name goes
 * to general.name (a path keeps only its last component). t is required (GGUF embeds the
 * tokenizer) and may have fewer tokens than m's vocab: the rest become "[PADi]" (type
 * UNUSED); more tokens, token texts that repeat, or an odd head_dim are errors.
 * tokenizer.ggml.add_bos_token / add_eos_token / add_space_prefix follow what tok_encode
 * does.  A SentencePiece-style tokenizer is written as llama.cpp's "llama" model (scores),
 * a byte-level one as "gpt2" (merges, and tokenizer.ggml.pre = llama.cpp's name for its
 * pre-tokenizer regex; a regex llama.cpp has no name for is an error). */
int gguf_write_model(const char *path, const model *m, const tok *t, st_dtype dtype, const char *name, char *err);

#endif
