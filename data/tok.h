/* tok: the tokenizer.  Loads a Hugging Face tokenizer.json whose model is BPE and
 * encodes / decodes id for id as HF `tokenizers` does, for both kinds in use:
 *   SentencePiece style (Mistral / Mixtral / Llama-2): byte fallback, "\u2581" for spaces;
 *   byte-level (GPT-2 style: Qwen2/3, OLMoE, gpt-oss, Llama-3): a regex pre-tokenizer,
 *     every byte a GPT-2 char of the vocab;
 * and trains new tokenizers of the first kind.
 *
 * Supported tokenizer.json parts (anything else is an error naming the type):
 *   model         BPE (merges "a b" or ["a","b"]; byte_fallback, fuse_unk,
 *                 ignore_merges, unk_token; dropout is ignored: encoding is exact)
 *   normalizer    null, Sequence, NFC, NFD, NFKC, NFKD (utf8proc), Prepend,
 *                 Replace (string pattern), Strip
 *   pre_tokenizer null, Sequence of: Split (Regex or String pattern, every behavior,
 *                 invert; regexes on PCRE2), Metaspace (prepend_scheme always|first|never
 *                 or add_prefix_space, split), ByteLevel (add_prefix_space, use_regex;
 *                 last in the sequence)
 *   decoder       null, Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace
 *   added_tokens  split out of the raw text first (leftmost-longest), with
 *                 lstrip / rstrip / single_word / normalized as HF applies them
 *   post_processor null, ByteLevel, TemplateProcessing, Bert/RobertaProcessing, Sequence:
 *                 the special tokens of the single-sequence template go around the text
 *
 * Encode is thread-safe on a shared const tok (each thread keeps its own small
 * cache of encoded words).  Decode follows HF decode(skip_special_tokens=False),
 * except that bytes come back raw even when they are not valid UTF-8 (HF would
 * print U+FFFD), so invalid input round-trips. */
#ifndef MOET_TOK_H
#define MOET_TOK_H

#include <stddef.h>
#include <stdint.h>

typedef struct tok tok;
typedef struct { int32_t *ids; size_t n, cap; } tok_ids;   /* growable; zero-init is empty */

/* GGUF token types (tokenizer.ggml.token_type). */
enum { TOK_NORMAL = 1, TOK_UNKNOWN = 2, TOK_CONTROL = 3, TOK_USER = 4, TOK_BYTE = 6 };

/* Load tokenizer.json at path. 0 ok, -1 with one line in err. */
int  tok_load(tok **out, const char *path, char *err);
void tok_free(tok *t);

/* Encode len bytes of text, APPENDING ids to out.  add_bos: HF's add_special_tokens,
 * the post-processor's tokens around the text (BOS first for Mistral; nothing for
 * Qwen and gpt-oss; as HF, no post-processor adds none).  Any bytes are taken: what is
 * not valid UTF-8 goes through byte fallback (SentencePiece style) or is encoded as
 * its own bytes (byte-level), so decode gives it back. */
int  tok_encode(const tok *t, const char *text, size_t len, int add_bos, tok_ids *out, char *err);

/* Decode ids to a malloc'd, NUL-terminated text of *len bytes (free() it).
 * Special tokens' text is kept ("<s> Hello"). An id out of range is an error. */
int  tok_decode(const tok *t, const int32_t *ids, size_t n, char **text, size_t *len, char *err);
/* The same with skip_special != 0 dropping special added tokens, as HF
 * decode(skip_special_tokens=True). */
int  tok_decode_ex(const tok *t, const int32_t *ids, size_t n, int skip_special,
                   char **text, size_t *len, char *err);

void tok_ids_free(tok_ids *v);
/* Append one id (grows v). 0 ok, -1 out of memory. */
int  tok_ids_push(tok_ids *v, int32_t id);

int  tok_vocab_size(const tok *t);   /* highest id + 1 over model vocab and added tokens */
int  tok_bos_id(const tok *t);       /* the BOS encode adds; "<s>" if no post-processor; -1 if none */
/* The token that ends a document: the last one the post-processor appends, else the
 * first of "</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>" that is a special added
 * token (a SentencePiece-style vocab's plain "</s>" too); -1 if none. */
int  tok_eos_id(const tok *t);
/* Padding: tokenizer.json's padding.pad_id, else a special "<pad>", "<|padding|>",
 * "<|pad|>", else (byte-level) the special end-of-text token; -1 if none. */
int  tok_pad_id(const tok *t);
int  tok_unk_id(const tok *t);       /* -1 if none */
int  tok_is_bytelevel(const tok *t); /* 1: a ByteLevel pre-tokenizer (GPT-2 style vocab) */
/* Merges in rank order: the pair of rank r in *left, *right; returns 1, or 0 when a
 * later copy of the same pair overrides this one (HF keeps the later rank). */
int  tok_merge_count(const tok *t);
int  tok_merge_pair(const tok *t, int rank, int32_t *left, int32_t *right);
/* The i-th regex of the pre-tokenizer (Split patterns in order; ByteLevel's GPT-2
 * pattern when it runs one), as in the file; NULL past the last. */
const char *tok_pre_regex(const tok *t, int i);
int  tok_id_of(const tok *t, const char *piece);   /* -1 if absent */
const char *tok_piece(const tok *t, int id);       /* "▁the", "<0x0A>"; NULL if no such id */
int  tok_piece_type(const tok *t, int id);         /* TOK_* above */
/* SentencePiece-style score (DESIGN.md, GGUF): -(id - 259) for normal pieces,
 * -1e9 for normal pieces made only of "▁", 0 for control / byte / unknown / user. */
float tok_piece_score(const tok *t, int id);
const char *tok_sha256(const tok *t);              /* hex sha256 of the tokenizer.json bytes */

/* Train a byte-fallback BPE tokenizer on the text files and write it as a
 * Mistral-shaped tokenizer.json (ids 0-2 <unk> <s> </s>, 3-258 <0x00>..<0xFF>,
 * then merged pieces in the order learned, then single characters).  Words are
 * "▁"-prefixed runs: a piece holds "▁" only as its first character, control
 * characters and invalid UTF-8 are never inside a piece (byte fallback), and
 * the text "<unk>" / "<s>" / "</s>" is left out as the encoder splits it off.
 * Pairs seen fewer than min_freq times are not merged (the vocab may then come
 * out smaller; tok_train says so via progress).  Deterministic.  The file is
 * written to a temp name, fsynced and renamed over out_path. */
int  tok_train(const char *const *files, int n_files, int vocab_size, int min_freq,
               const char *out_path, char *err);
/* The same, calling progress(ctx, line) with human progress lines. */
int  tok_train_progress(const char *const *files, int n_files, int vocab_size, int min_freq,
                        const char *out_path, void (*progress)(void *ctx, const char *line),
                        void *ctx, char *err);

#endif
