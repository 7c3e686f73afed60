/* moet eval: validation loss and perplexity of a model or checkpoint on shards, the
 * same computation as the trainer's eval_every (mean CE over the counted targets). */
#include "checkpoints/hf.h"
#include "common/clock.h"
#include "common/err.h"
#include "data/loader.h"
#include "train/cmd.h"
#include "train/eval.h"
#include "train/load.h"

#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: moet eval MODEL_OR_CHECKPOINT --data SHARD... [--batch-size B] [--max-batches N]\n"
    "                 [--document-mask] [--base DIR] [--strict]\n"
    "  MODEL_OR_CHECKPOINT: an HF dir, a training checkpoint, or a PEFT adapter dir (on --base DIR,\n"
    "  else its base_model_name_or_path).\n"
    "  Mean cross-entropy over every counted target (loss_mask) of the shards, in file order,\n"
    "  and its perplexity exp(loss). Default: all batches, of 2048 tokens (at most 2 GiB of\n"
    "  activations; rows of 2048 tokens or more: one row per batch). Rows longer than the model's\n"
    "  max_position_embeddings are a warning, an error with --strict.\n";

/* seq_len of the first shard a list of files/globs names. */
static int first_seq_len(char **files, int n, int *seq, char *err)
{
    glob_t g;
    const char *path = files[0];
    int rc = glob(files[0], 0, NULL, &g);
    if (rc == 0 && g.gl_pathc) path = g.gl_pathv[0];
    shard *s;
    int r = shard_open(&s, path, 0, 0, err);
    if (rc == 0) globfree(&g);
    if (r) return -1;
    *seq = shard_get_info(s)->seq_len;
    shard_close(s);
    (void)n;
    return 0;
}

/* Rows per batch when --batch-size is not given: EVAL_TOKENS tokens per forward, like a
 * training batch (one row of 256 tokens leaves the cores idle between small GEMMs: 6x slower
 * than 8 rows, measured on the tiny model), while the activations stay under EVAL_ACTS. */
#define EVAL_TOKENS 2048
#define EVAL_ACTS (1ull << 31)
static int default_batch(const model_config *c, int T)
{
    int B = T < EVAL_TOKENS ? EVAL_TOKENS / T : 1;
    while (B > 1 && model_acts_bytes(c, B, T, 0) > EVAL_ACTS) B /= 2;
    return B;
}

int cmd_eval(int argc, char **argv)
{
    if (cmd_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    const char *path = NULL, *base = NULL;
    char **files = calloc((size_t)argc, sizeof *files);
    int nf = 0, B = 0, maxb = 0, docmask = 0, strict = 0, in_data = 0; /* B 0: chosen below */
    for (int i = 1; i < argc; i++) {
        long v;
        if (!strcmp(argv[i], "--data")) in_data = 1;
        else if ((!strcmp(argv[i], "--batch-size") || !strcmp(argv[i], "--max-batches")) && i + 1 < argc) {
            int bs = !strcmp(argv[i], "--batch-size");
            if (cmd_long(argv[i + 1], bs, 1 << 30, &v)) {
                fprintf(stderr, "moet eval: %s needs an integer %s, not '%s'\n", argv[i], bs ? ">= 1" : ">= 0 (0: all)",
                        err_q(argv[i + 1], -1));
                free(files);
                return 2;
            }
            *(bs ? &B : &maxb) = (int)v, in_data = 0, i++;
        } else if (!strcmp(argv[i], "--document-mask")) docmask = 1, in_data = 0;
        else if (!strcmp(argv[i], "--strict")) strict = 1, in_data = 0;
        else if (!strcmp(argv[i], "--base") && i + 1 < argc) base = argv[++i], in_data = 0;
        else if (argv[i][0] == '-') {
            fprintf(stderr, "moet eval: unknown option '%s'\n%s", err_q(argv[i], -1), usage);
            free(files);
            return 2;
        } else if (in_data) files[nf++] = argv[i];
        else if (!path) path = argv[i];
        else {
            fprintf(stderr, "moet eval: unexpected argument '%s'\n%s", err_q(argv[i], -1), usage);
            free(files);
            return 2;
        }
    }
    if (!path || !nf) {
        fputs(usage, stderr);
        free(files);
        return 2;
    }
    char err[ERR_MAX];
    model m;
    int have = 0, T = 0, rc = 1;
    loader *L = NULL;
    loader_batch b = {0};
    model_acts *a = NULL;
    lora *lo = NULL;
    int32_t *labels = NULL;
    if (load_any_model_ex(path, CKPT_BASE_AUTO, base, &m, &lo, NULL, err)) goto fail;
    have = 1;
    if (first_seq_len(files, nf, &T, err) || loader_open(&L, (const char *const *)files, nf, T, m.c.vocab, 1, 0, 0, err))
        goto fail;
    if (m.c.max_pos > 0 && T > m.c.max_pos) { /* as `moet train`: positions the model never saw */
        if (strict) {
            err_set(err, "the shards' rows of %d tokens are longer than the model's max_position_embeddings %d (--strict)",
                    T, m.c.max_pos);
            goto fail;
        }
        fprintf(stderr, "moet eval: warning: the shards' rows of %d tokens are longer than the model's "
                        "max_position_embeddings %d: positions past %d were never trained (--strict makes this an "
                        "error)\n", T, m.c.max_pos, m.c.max_pos);
    }
    if (B == 0) B = default_batch(&m.c, T);
    if (B > 1) { /* every row is evaluated: fewer rows than --batch-size make one smaller batch */
        if (loader_rows(L) < B) B = (int)loader_rows(L);
        loader_close(L);
        if (loader_open(&L, (const char *const *)files, nf, T, m.c.vocab, B, 0, 0, err)) goto fail;
    }
    if (loader_batch_alloc(&b, B, T, err) || model_acts_create(&a, &m, B, T, err)) goto fail;
    labels = malloc((size_t)B * T * sizeof *labels);
    if (!labels) {
        err_set(err, "out of memory");
        goto fail;
    }
    double t0 = clock_seconds();
    eval_result r;
    if (eval_run(&m, a, L, maxb, docmask, &b, labels, &r, err)) goto fail; /* no loss is a failure here too */
    double secs = clock_seconds() - t0;
    printf("val_loss %.6f  val_ppl %.4f  (%ld targets in %lld rows of %d tokens, batch %d, %.0f tok/s)\n", r.loss,
           exp(r.loss), r.targets, (long long)r.rows, T, B, r.rows * T / secs);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "moet eval: %s\n", err);
done:
    free(labels);
    free(files);
    loader_batch_free(&b);
    loader_close(L);
    model_acts_free(a);
    if (have) model_free(&m);
    lora_free(lo);
    return rc;
}
