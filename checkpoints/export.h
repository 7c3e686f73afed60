/* export: the release directory around the weights: tokenizer files, a model card
 * (README.md with Hugging Face front matter), the Apache-2.0 LICENSE, SHA256SUMS, and
 * an all-or-nothing commit of the directory. */
#ifndef MOET_EXPORT_H
#define MOET_EXPORT_H

#include <stddef.h>

extern const char export_apache2_text[];

typedef struct {
    const char *format;       /* "hf", "merged", "peft", "gguf" */
    const char *dtype;        /* "float32", "bfloat16", "float16" */
    const char *base_model;   /* base model name or path (front matter), may be NULL */
    const char *state_json;   /* trainer_state.json of the checkpoint, or NULL (plain HF dir) */
    const char *source;       /* what was exported (path) */
    const char *model_summary;/* one line: parameters, experts ... */
} export_card;

/* Copy tokenizer.json (and tokenizer_config.json / special_tokens_map.json when they sit
 * beside it; otherwise a minimal tokenizer_config.json with t's BOS / EOS) into dir.
 * chat_template (Jinja, data/chat.h), when not NULL, is written as tokenizer_config.json's
 * "chat_template" (replacing one the source has). */
struct tok;
int export_tokenizer(const char *dir, const char *tokenizer_json, int model_max_length, const struct tok *t,
                     const char *chat_template, char *err);

/* README.md (model card), LICENSE. */
int export_card_write(const char *dir, const export_card *card, char *err);

/* SHA256SUMS over every regular file in dir (sorted), as `sha256sum` prints it. */
int export_sums(const char *dir, char *err);

/* Start an export: a temp dir next to out. Refuses an out that is or holds src (the model
 * exported), and an existing out unless force and it is an earlier export (has SHA256SUMS).
 * First tidies what killed exports left: OUT.tmp-PID of dead PIDs removed, an OUT.old-PID
 * (a --force swap cut short) put back as out when out is missing, else removed. */
int export_begin(const char *out, const char *src, int force, char *tmp, size_t cap, char *err);
/* Put tmp in place of out (replacing it when force). */
int export_commit(const char *tmp, const char *out, int force, char *err);

#endif
