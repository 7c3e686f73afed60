/* prep: text and jsonl to packed HDF5 training shards (`moet prep`).
 *
 * Inputs, in the order given:
 *   .txt    one document per file (trailing newlines dropped), or with
 *           split_paragraphs one per block of lines separated by blank lines
 *           (lines of only whitespace; a block keeps its inner newlines).
 *   .jsonl  one JSON object per line: {"text": "..."} is a document;
 *           {"messages": [{"role", "content"}, ...]} is a conversation rendered
 *           with the chat template (data/chat.h).  "text" wins when both exist.
 *           Blank lines are ignored; a bad line (invalid JSON, neither field, wrong
 *           types, bad role order) is reported as "FILE:LINE: reason" and skipped,
 *           or ends the run with that message when fatal_errors.
 * Empty documents ("" or an empty .txt) are skipped and counted, and so are conversations
 * without a target (no assistant turn: only system / user messages).  Every shard records
 * the chat template (attribute chat_template), the one given or the tokenizer's own.
 *
 * A text document is BOS + tok_encode(text) + EOS (the ids `moet tokenize` prints,
 * then EOS), without the BOS for a tokenizer that has none (Qwen, gpt-oss: the
 * document is its ids and <|endoftext|>); loss_mask is 1 on every token but the BOS
 * (nothing predicts a document start).  A conversation is its chat rendering (BOS
 * first when there is one, EOS last).
 *
 * Documents are packed back to back into rows of exactly seq_len tokens; a document
 * longer than what is left of a row continues in the next row.  doc_start is 1 on
 * each document's first token only (its BOS; a continued document does not start again at position
 * 0 of the next row).  The last row of each split is padded with EOS, loss_mask 0,
 * doc_start 0.  A document goes to the validation split when
 * splitmix64(seed, its index among the accepted documents) / 2^64 < val_fraction.
 * Output: OUT/train-00000.h5, ... and OUT/val-00000.h5, ... of rows_per_shard rows
 * (the last one shorter); each written atomically; shards of those names left by an
 * earlier run beyond the new count are removed at the end.  Shards wait in OUT/.prep-PID
 * until the whole run has succeeded; a failed run removes that stage and the levels of OUT
 * it created (so nothing is left), and a run removes the stages of killed runs (dead PIDs).
 *
 * Documents are parsed and tokenized in parallel (OpenMP, `threads`) chunk by chunk
 * and packed in input order, so the output does not depend on the thread count. */
#ifndef MOET_PREP_H
#define MOET_PREP_H

#include "data/chat.h"

#include <stdint.h>

enum { PREP_WARNING, PREP_PROGRESS };

typedef struct {
    const char *tokenizer;        /* tokenizer.json */
    const char *out_dir;          /* created if missing */
    const char *const *inputs;
    int n_inputs;
    int seq_len;                  /* [2048] */
    double val_fraction;          /* [0] in [0, 1) */
    int64_t rows_per_shard;       /* [2048] */
    int split_paragraphs;         /* [0] */
    chat_template chat;           /* with chat_given; else the tokenizer's own (chat_template_default) */
    int chat_given;               /* [0] */
    uint64_t seed;                /* [0] */
    int fatal_errors;             /* [0] --on-error fatal */
    int threads;                  /* [0] = OpenMP's default */
    /* optional: bad-line warnings and progress lines (no newline), from the calling thread */
    void (*report)(void *ctx, int kind, const char *line);
    void *ctx;
} prep_opts;

typedef struct {
    int64_t documents, train_documents, val_documents, empty_documents, skipped_lines;
    int64_t no_target_conversations; /* skipped: only system / user turns, nothing to learn */
    chat_template chat;           /* the template conversations were rendered with (the shards' chat_template) */
    int64_t tokens;               /* document tokens, BOS and EOS included, padding not */
    int64_t padding, targets;     /* padding tokens; positions with loss_mask 1 */
    int64_t train_rows, val_rows;
    int train_shards, val_shards;
    double bytes, seconds;        /* input bytes read, wall time */
} prep_stats;

void prep_defaults(prep_opts *o);

int prep_run(const prep_opts *o, prep_stats *st, char *err);

/* One .jsonl line (len bytes, without its newline) as prep_run reads it, appended to out:
 * 0 a document (BOS ... EOS with its loss mask), 1 none (an empty one, "text": "" or
 * "messages": [], or a conversation without an assistant turn), -1 a bad line with the reason in why (ERR_MAX bytes; one line meant to follow
 * "FILE:LINE: "). */
int prep_json_line(const tok *t, chat_template tpl, const char *line, size_t len, chat_seq *out, char *why);

#endif
