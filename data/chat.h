/* chat: conversations to token ids plus a loss mask, one template piece at a time; the
 * same walk renders the text a Hugging Face chat_template (Jinja) must reproduce, and
 * writes that Jinja string (tokenizer_config.json's chat_template, GGUF's
 * tokenizer.chat_template).  prep (training documents) and generate (prompts) both render
 * here, so the ids at inference are the ids training saw.
 *
 * Every piece is encoded on its own with tok_encode(add_bos = 0), so its ids are
 * exactly what `moet tokenize --no-bos` prints for that piece's text, and the mask
 * boundary falls between pieces, never inside a token.  A SentencePiece-style tokenizer
 * prepends "▁" to each non-empty piece: in the text rendering that is a space in front of
 * the piece ("space" tokenizers; chat_prefix_space).
 *
 * mistral (default for tokenizers without <|im_start|>), as Mistral's v1 template
 * (Mixtral-8x7B-Instruct-v0.1's chat_template, mistral-common's tokenization):
 *     <s> [INST] {user} [/INST] {assistant}</s> [INST] {user2} [/INST] {assistant2}</s>
 *   pieces: BOS id | "[INST] {user} [/INST]" | "{assistant}" | EOS id | ...
 *   (a tokenizer that does not prepend a space gets the space written into the piece:
 *   " [INST] ...", " {assistant}", so the text is the same for both kinds).
 *   roles: an optional first "system" (its content + "\n\n" is put in front of the
 *   first user content), then user and assistant alternating, user first.
 *   mask 1 on the assistant pieces and their EOS, 0 elsewhere.
 *
 * chatml (default for tokenizers with <|im_start|>, Qwen's):
 *     <|im_start|>{role}\n{content}<|im_end|>\n ... <|endoftext|>
 *   pieces: BOS id (when the tokenizer has one) | "<|im_start|>" | "{role}\n" | "{content}" |
 *   "<|im_end|>" | "\n" per message, then EOS id.  <|im_start|> / <|im_end|> are the
 *   tokenizer's ids when it has such tokens, otherwise their text encoded like any piece.
 *   Any non-empty role is allowed.  mask 1 on an assistant's content and its <|im_end|>
 *   token(s), 0 elsewhere (role headers, "\n", BOS, the final EOS).
 *
 * Documents (add_generation_prompt 0: prep) begin with BOS when the tokenizer has one and
 * end with EOS exactly once: a mistral conversation that ends with a user turn, and every
 * chatml one, get a final EOS with mask 0.  A generation prompt (add_generation_prompt 1:
 * generate) has no final EOS: chatml ends with "<|im_start|>assistant\n", mistral with the
 * last user turn's "[/INST]" (it must end with a user turn).  An empty content ("") is a turn
 * like any other: its piece encodes to no ids (and no space) and the template around it
 * stays (an empty assistant reply is its EOS / <|im_end|> alone, still a target). */
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

/* "mistral" or "chatml" (err may be NULL). */
int chat_template_parse(const char *name, chat_template *out, char *err);
const char *chat_template_name(chat_template tpl);
/* The family's own: chatml when the tokenizer has a <|im_start|> token, else mistral. */
chat_template chat_template_default(const tok *t);
/* 1 when the tokenizer puts a space ("▁", "Ġ") in front of every piece it encodes. */
int chat_prefix_space(const tok *t);

/* Append the rendering of msgs[n] to out as a training document.  Errors (role order,
 * unknown role, tokenizer without EOS) are one line meant to follow "file:line: ". */
int chat_render(const tok *t, chat_template tpl, const chat_msg *msgs, int n, chat_seq *out, char *err);
/* The same with add_generation_prompt 1: a prompt for the assistant's reply (see above). */
int chat_render_ex(const tok *t, chat_template tpl, const chat_msg *msgs, int n, int add_generation_prompt,
                   chat_seq *out, char *err);
/* The text of that rendering (special tokens as their text, a space before each piece a
 * space tokenizer encodes): what chat_template_jinja renders for the same messages.
 * *text is malloc'd and NUL-terminated. */
int chat_render_text(const tok *t, chat_template tpl, const chat_msg *msgs, int n, int add_generation_prompt,
                     char **text, size_t *len, char *err);
/* The Hugging Face chat_template (Jinja) of tpl for this tokenizer, malloc'd: BOS / EOS as
 * the tokenizer's own texts (so it renders the same whatever bos_token / eos_token a
 * consumer passes), spaces as the tokenizer kind needs. */
int chat_template_jinja(const tok *t, chat_template tpl, char **out, char *err);
/* Which template a Jinja string is, by its markers (<|im_start|>: chatml, [INST]:
 * mistral); -1 when neither. */
int chat_template_detect(const char *jinja, chat_template *out);

/* Messages from a JSON list [{"role": "...", "content": "..."}, ...] (the strings point
 * into the parsed document *doc, which the caller frees with cJSON_Delete).  Errors name
 * the message. */
struct cJSON;
int chat_messages_json(const char *json, size_t len, struct cJSON **doc, chat_msg **msgs, int *n, char *err);

/* Append n ids, all with the same mask value.  0 ok, -1 out of memory. */
int chat_seq_push(chat_seq *s, const int32_t *ids, size_t n, uint8_t mask);
/* Encode len bytes of text (no BOS) and append with the given mask. */
int chat_seq_encode(chat_seq *s, const tok *t, const char *text, size_t len, uint8_t mask, char *err);
void chat_seq_free(chat_seq *s);

#endif
