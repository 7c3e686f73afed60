/* chat: conversations to token ids plus a loss mask, one template piece at a time.
 *
 * Every piece is encoded on its own with tok_encode(add_bos = 0), so its ids are
 * exactly what `moet tokenize --no-bos` prints for that piece's text, and the mask
 * boundary falls between pieces, never inside a token.  (A SentencePiece-style
 * tokenizer prepends "▁" to each piece: that is the space between pieces below.)
 *
 * mistral (default), as Mistral's Hugging Face template:
 *     <s>[INST] {user} [/INST] {assistant}</s>[INST] {user2} [/INST] {assistant2}</s>
 *   pieces: BOS id | "[INST] {user} [/INST]" | "{assistant}" | EOS id | ...
 *   roles: an optional first "system" (its content + "\n\n" is put in front of the
 *   first user content), then user and assistant alternating, user first.
 *   mask 1 on the assistant pieces and their EOS, 0 elsewhere.
 *
 * chatml:
 *     <s><|im_start|>{role}\n{content}<|im_end|>\n ... </s>
 *   pieces: BOS id | "<|im_start|>" | "{role}\n" | "{content}" | "<|im_end|>" | "\n"
 *   per message, then EOS id.  <|im_start|> / <|im_end|> are the tokenizer's ids
 *   when it has such tokens, otherwise their text encoded like any piece.  Any
 *   non-empty role is allowed.  mask 1 on an assistant's content and its
 *   <|im_end|> token(s), 0 elsewhere (role headers, "\n", BOS, the final EOS).
 *
 * Both templates begin with BOS when the tokenizer has one (byte-level tokenizers such
 * as Qwen's have none: the document starts with <|im_start|>); a mistral conversation
 * that ends with a user turn, and every chatml one, get a final EOS with mask 0
 * (tok_eos_id: "</s>", or "<|endoftext|>" for Qwen), so every rendered document ends
 * with EOS exactly once.  An empty content ("") is a turn like any other: its
 * piece encodes to no ids and the template around it stays (an empty assistant
 * reply is its EOS / <|im_end|> alone, still a target). */
#ifndef MOET_CHAT_H
#define MOET_CHAT_H

#include "data/tok.h"

#include <stddef.h>
#include <stdint.h>

typedef enum { CHAT_MISTRAL, CHAT_CHATML } chat_template;

typedef struct {
    const char *role;            /* NUL-terminated */
    const char *content;         /* content_len bytes, need not be NUL-terminated */
    size_t content_len;
} chat_msg;

/* A document being built: ids[n] and mask[n] (1 = target).  Zero-init is empty. */
typedef struct {
    int32_t *ids;
    uint8_t *mask;
    size_t n, cap;
} chat_seq;

/* "mistral" or "chatml". */
int chat_template_parse(const char *name, chat_template *out, char *err);

/* Append the rendering of msgs[n] to out.  Errors (role order, unknown role,
 * tokenizer without EOS) are one line meant to follow "file:line: ". */
int chat_render(const tok *t, chat_template tpl, const chat_msg *msgs, int n, chat_seq *out, char *err);

/* Append n ids, all with the same mask value.  0 ok, -1 out of memory. */
int chat_seq_push(chat_seq *s, const int32_t *ids, size_t n, uint8_t mask);
/* Encode len bytes of text (no BOS) and append with the given mask. */
int chat_seq_encode(chat_seq *s, const tok *t, const char *text, size_t len, uint8_t mask, char *err);
void chat_seq_free(chat_seq *s);

#endif
