/* moet tokenizer train: learn a byte-fallback BPE tokenizer.json from text files. */
#include "train/cmd.h"

#include "common/err.h"
#include "common/fsutil.h"
#include "data/tok.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moet tokenizer train --vocab-size N --out tokenizer.json [--min-frequency K] INPUT...\n\n"
            "Trains a byte-fallback BPE tokenizer (SentencePiece-style, as Mistral's) on the text\n"
            "files and writes it as a Hugging Face tokenizer.json: ids 0-2 <unk> <s> </s>, 3-258\n"
            "the byte pieces <0x00>..<0xFF>, then the merged pieces, then single characters.\n"
            "Pieces hold \"\xe2\x96\x81\" (a space) only at their start; newlines and tabs stay byte\n"
            "pieces.  Pairs seen fewer than K times (default 2) are not merged.  Deterministic.\n");
}

static void progress(void *ctx, const char *line)
{
    (void)ctx;
    fprintf(stderr, "moet tokenizer: %s\n", line);
}

int cmd_tokenizer(int argc, char **argv)
{
    if (cmd_wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    if (argc < 2 || strcmp(argv[1], "train")) {
        fprintf(stderr, "moet tokenizer: expected 'train' (moet tokenizer --help)\n");
        return 2;
    }
    long vocab = 0, min_freq = 2;
    const char *out = NULL;
    const char **inputs = calloc((size_t)argc, sizeof *inputs);
    int n_in = 0;
    if (!inputs) return 1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        int has_val = i + 1 < argc;
        if (!strcmp(a, "--vocab-size") && has_val) {
            if (cmd_long(argv[++i], 1, 1L << 24, &vocab)) {
                fprintf(stderr, "moet tokenizer: --vocab-size wants a positive integer, not '%s'\n", argv[i]);
                free(inputs);
                return 2;
            }
        } else if (!strcmp(a, "--min-frequency") && has_val) {
            if (cmd_long(argv[++i], 1, 1L << 40, &min_freq)) {
                fprintf(stderr, "moet tokenizer: --min-frequency wants a positive integer, not '%s'\n", argv[i]);
                free(inputs);
                return 2;
            }
        } else if (!strcmp(a, "--out") && has_val) {
            out = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "moet tokenizer: unknown or incomplete option '%s' (moet tokenizer --help)\n", a);
            free(inputs);
            return 2;
        } else {
            inputs[n_in++] = a;
        }
    }
    if (!vocab || !out || !n_in) {
        fprintf(stderr, "moet tokenizer: train needs --vocab-size, --out and at least one INPUT\n");
        free(inputs);
        return 2;
    }
    if (min_freq > 0x7fffffff) min_freq = 0x7fffffff;
    /* where the result goes is checked before the (long) training, not at its end */
    char dir[4096];
    fs_parent_dir(out, dir, sizeof dir);
    if (fs_is_dir(out) || access(dir, W_OK)) {
        fprintf(stderr, "moet tokenizer: --out %s: %s\n", out,
                fs_is_dir(out) ? "is a directory (give a file such as DIR/tokenizer.json)"
                               : "its directory does not exist or is not writable");
        free(inputs);
        return 1;
    }
    char err[ERR_MAX];
    int rc = tok_train_progress(inputs, n_in, (int)vocab, (int)min_freq, out, progress, NULL, err);
    free(inputs);
    if (rc) {
        fprintf(stderr, "moet tokenizer: %s\n", err);
        return 1;
    }
    return 0;
}
