/* shard: the HDF5 training-data file of DESIGN.md ("Data shard").
 *
 *   /tokens     [rows, seq_len] uint16 (uint32 when vocab_size > 65535)
 *   /loss_mask  [rows, seq_len] uint8, optional, 1 = position is a target
 *   /doc_start  [rows, seq_len] uint8, optional, 1 = a document begins here
 *   attributes on "/": format = "moet-shard-1", vocab_size, bos_id, eos_id,
 *                      tokenizer_sha256 (hex string), optional chat_template (the template
 *                      `moet prep` used: "mistral" or "chatml"; exports carry it on)
 *
 * Strings are fixed-length ASCII (h5py gives bytes: attrs["format"] ==
 * b"moet-shard-1"); the reader accepts variable-length ones too, as h5py writes.
 * The file uses the HDF5 1.8+ format (checksummed metadata: a flipped byte in a
 * header is an error, not a crash in libhdf5); objects carry no timestamps, so
 * the same rows give a byte-identical file.
 *
 * The writer streams rows into chunked, extendable datasets of a temporary file
 * PATH.tmp and renames it to PATH only in shard_writer_close, after an fsync: a
 * reader never sees a half-written shard.  The reader validates everything it can
 * at open and checks every token of a row against vocab_size when it reads it, so
 * a truncated file, or one with corrupted bytes, gives one error line rather than
 * a crash (3000 randomly byte-flipped shards: no crash, no hang).
 *
 * HDF5's own error printing is switched off in every thread that calls in here;
 * all functions are safe to call from several threads on different handles. */
#ifndef MOET_SHARD_H
#define MOET_SHARD_H

#include <stdint.h>

#define SHARD_FORMAT "moet-shard-1"

typedef struct {
    int64_t rows;
    int seq_len;
    int vocab_size, bos_id, eos_id;
    int has_loss_mask, has_doc_start;
    int token_bytes;                 /* 2 (uint16) or 4 (uint32) on disk */
    char tokenizer_sha256[65];       /* "" when the file has none */
    char chat_template[16];          /* the template prep renders conversations with ("mistral",
                                        "chatml"); "" when the file has none */
} shard_info;

/* ---- writer ---- */
typedef struct shard_writer shard_writer;

/* Create PATH.tmp for rows of seq_len tokens.  meta gives vocab_size, bos_id,
 * eos_id, tokenizer_sha256, chat_template (written when not ""), and in rows, when > 0, the most rows the file will get (a
 * chunk is never bigger: a 1-row shard is not padded to a 256 KB chunk); seq_len and
 * token_bytes there are ignored; the token
 * dtype follows vocab_size.  with_mask / with_doc_start choose the optional
 * datasets; when 0 the matching pointers of shard_writer_append are ignored. */
int shard_writer_create(shard_writer **out, const char *path, int seq_len, const shard_info *meta,
                        int with_mask, int with_doc_start, char *err);

/* Append one row: tokens[seq_len] (each in [0, vocab_size)), loss_mask[seq_len],
 * doc_start[seq_len]. */
int shard_writer_append(shard_writer *w, const int32_t *tokens, const uint8_t *loss_mask,
                        const uint8_t *doc_start, char *err);

int64_t shard_writer_rows(const shard_writer *w);

/* Flush, fsync and rename PATH.tmp to PATH; frees w (also on failure, after
 * removing the temp file). */
int shard_writer_close(shard_writer *w, char *err);

/* The same without the fsyncs, for a caller that makes a whole directory of shards
 * durable at once (prep: one syncfs before it publishes; 1-row shards cost 2 fsyncs each). */
int shard_writer_close_nosync(shard_writer *w, char *err);

/* Give up: remove PATH.tmp and free w.  NULL is a no-op. */
void shard_writer_abort(shard_writer *w);

/* ---- reader ---- */
typedef struct shard shard;

/* Open and validate PATH.  seq_len > 0 demands that row length; vocab_size > 0 is
 * the model's vocabulary and the file's vocab_size attribute may not exceed it
 * (0 = take the file's).  Tokens are always checked against the file's vocab_size.
 * A tokenizer_sha256 attribute, when present, is a string of 64 lowercase hex digits
 * (or empty).  Every row a dataset declares must be stored: chunks missing (a sparse
 * dataset), an unwritten contiguous dataset, or more than 1100 bytes of data per byte of
 * file (past deflate's 1032:1) are refused, so a few-KB file cannot declare 2^40 rows. */
int shard_open(shard **out, const char *path, int seq_len, int vocab_size, char *err);

const shard_info *shard_get_info(const shard *s);
const char *shard_path(const shard *s);

/* Read row i (hyperslab) into tokens[seq_len]; loss_mask / doc_start may be NULL.
 * Absent datasets read as all ones (loss_mask) and as a start at position 0 only
 * (doc_start).  A token >= vocab_size, and a loss_mask / doc_start value other than 0
 * or 1, is an error naming file, row and column. */
int shard_read_row(shard *s, int64_t i, int32_t *tokens, uint8_t *loss_mask, uint8_t *doc_start,
                   char *err);

void shard_close(shard *s);  /* NULL is a no-op */

#endif
