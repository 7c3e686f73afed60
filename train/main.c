/* moet: the command-line front door.  Dispatches to train/cmd_<name>.c. */
#include "common/blas.h"
#include "common/err.h"
#include "train/cmd.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"train", cmd_train, "train CONFIG.yaml [key.path=value ...]   train or fine-tune from a YAML config"},
    {"prep", cmd_prep, "prep --tokenizer T.json --out DIR INPUT...   text/jsonl to HDF5 shards"},
    {"tokenize", cmd_tokenize, "tokenize TOKENIZER.json [--no-bos|--decode] < text   print token ids"},
    {"tokenizer", cmd_tokenizer, "tokenizer train --vocab-size N --out T.json INPUT...   train a BPE tokenizer"},
    {"eval", cmd_eval, "eval MODEL_OR_CHECKPOINT --data SHARD...   validation loss and perplexity"},
    {"export", cmd_export, "export CHECKPOINT OUT_DIR --format hf|peft|merged|gguf   release weights"},
    {"generate", cmd_generate, "generate MODEL_OR_CHECKPOINT --prompt TEXT   sample text"},
    {"info", cmd_info, "info MODEL_OR_CONFIG   parameters, FLOPs/token, training memory"},
    {"forward", cmd_forward, "forward MODEL_DIR --batch B.safetensors --out O.safetensors [--grads]"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: moet <command> [args]   (moet <command> --help for details)\n\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  moet %s\n", commands[i].help);
}

int cmd_wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return 1;
    return 0;
}

int cmd_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int cmd_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* Weights of a 16-bit base are read straight from the mapped safetensors files; a file cut
 * short on disk while a command runs makes the next read of a vanished page fault. That is
 * not recoverable in the middle of a GEMM, so say what happened in one line and stop (what
 * was written before, e.g. checkpoints, is complete: every file is written atomically). */
static void on_sigbus(int sig)
{
    static const char msg[] = "moet: a mapped weight file was truncated on disk while in use (SIGBUS); stopping. "
                              "Files written before are intact; do not modify a model while moet reads it.\n";
    (void)sig;
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(1);
}

int main(int argc, char **argv)
{
    /* Commands that run no matrix product skip the re-exec that picks OpenBLAS's kernels:
     * a second process start is a tenth of a second of `moet tokenize`. */
    int no_blas = argc > 1 && (!strcmp(argv[1], "tokenize") || !strcmp(argv[1], "tokenizer") || !strcmp(argv[1], "prep"));
    if (!no_blas) blas_select_kernels(argv);
    struct sigaction sa = {.sa_handler = on_sigbus};
    sigaction(SIGBUS, &sa, NULL);
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "moet: unknown command '%s' (moet --help lists them)\n", err_q(argv[1], -1));
    return 2;
}
