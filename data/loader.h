/* loader: batches of shard rows for training and eval, read ahead on a thread.
 *
 * The rows of all files (globs expanded, see loader_open) form one list; an epoch
 * visits them in that order (shuffle = 0) or in a permutation that depends only on
 * (seed, epoch) and changes every epoch (shuffle = 1: Fisher-Yates driven by
 * xoshiro256** seeded with splitmix64).  A batch is batch_size consecutive entries of
 * that order; an epoch has floor(rows / batch_size) batches and the incomplete tail is
 * dropped (PyTorch's drop_last=True), so a batch never straddles two epochs.  With
 * shuffle the dropped rows differ every epoch.
 *
 * Batches are numbered by (epoch, index).  loader_cursor names the next batch
 * loader_next will return -- not what the prefetch thread already read -- and
 * loader_seek goes back to any such position, so a run resumed from a saved cursor
 * sees exactly the batches the uninterrupted run would have seen.
 *
 * Eval: open the val files with shuffle = 0, loader_seek to {0, 0}, and take
 * min(eval_batches, loader_batches_per_epoch) batches: the same rows every time; a whole-set
 * eval adds the tail (loader_read_tail).
 *
 * A background thread (started by the first loader_next, restarted by loader_seek)
 * keeps two batches ready, so the training step does not wait on disk; errors it
 * meets (corrupt row, token >= vocab) come back from loader_next in order, after the
 * good batches read before them.  One loader is driven by one thread. */
#ifndef MOET_LOADER_H
#define MOET_LOADER_H

#include "data/shard.h"

#include <stdint.h>

typedef struct loader loader;

typedef struct {
    int64_t epoch, index;  /* batch `index` (from 0) of `epoch` (from 0) */
} loader_pos;

typedef struct {
    int batch_size, seq_len;  /* B, T */
    int32_t *tokens;          /* [B, T] */
    uint8_t *loss_mask;       /* [B, T] 1 = target */
    uint8_t *doc_start;       /* [B, T] 1 = a document begins */
} loader_batch;

/* Open every shard named in files[n_files]; each entry is a path or a glob(3)
 * pattern (expanded in sorted order; the entries keep the order given).  A pattern
 * that matches nothing, a missing file, a bad shard, a row length other than
 * seq_len, a shard vocab_size above vocab_size (the model's), shards made with
 * different tokenizers, or fewer rows than batch_size in total are errors. */
int loader_open(loader **out, const char *const *files, int n_files, int seq_len, int vocab_size,
                int batch_size, int shuffle, uint64_t seed, char *err);

/* Data parallelism: this loader reads slice `part` of `parts` of every batch, rows
 * [part*B/parts, (part+1)*B/parts) of it, and the same share of the tail (loader_read_tail).
 * Cursor, epochs and shuffle stay those of whole batches, so the parts together read exactly
 * the rows one process would, and each reads only its own. B must divide evenly. Call
 * before the first loader_next; batches then have B/parts rows. */
int loader_set_slice(loader *L, int part, int parts, char *err);
int loader_batch_size(const loader *L);  /* B, the whole batch of all slices */

/* Copy the next batch into b (allocated with loader_batch_alloc for this B, T; B/parts with a slice). */
int loader_next(loader *L, loader_batch *b, char *err);

/* Eval of a whole set (shuffle = 0): the rows after the last full batch, the tail an epoch
 * drops, into b's first *n rows (*n in [0, batch_size); with a slice, rows
 * [t*part/parts, t*(part+1)/parts) of the t-row tail). Stops the read-ahead: loader_seek
 * before the next loader_next. */
int loader_read_tail(loader *L, loader_batch *b, int *n, char *err);

loader_pos loader_cursor(const loader *L);               /* of the next loader_next */
int loader_seek(loader *L, loader_pos pos, char *err);    /* index <= batches_per_epoch */

int64_t loader_rows(const loader *L);                     /* all files together */
int64_t loader_batches_per_epoch(const loader *L);
int loader_n_files(const loader *L);
const shard_info *loader_file_info(const loader *L, int i);  /* vocab, bos, eos, sha256 */
const char *loader_file_path(const loader *L, int i);
double loader_wait_seconds(const loader *L);  /* total time loader_next blocked on the reader */

void loader_close(loader *L);  /* NULL is a no-op */

int loader_batch_alloc(loader_batch *b, int batch_size, int seq_len, char *err);
/* Labels of b's first rows rows for the model: the token where loss_mask is 1, else -100. */
void loader_batch_labels(const loader_batch *b, int rows, int32_t *labels);
void loader_batch_free(loader_batch *b);

#endif
