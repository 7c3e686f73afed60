/* moet: the command-line front door.  Dispatches to train/cmd_<name>.c. */
#include "common/blas.h"
#include "train/cmd.h"

#include <errno.h>
#include <math.h>
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

int main(int argc, char **argv)
{
    blas_select_kernels(argv);
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "moet: unknown command '%s' (moet --help lists them)\n", argv[1]);
    return 2;
}
