/* moet train: YAML config (+ key.path=value overrides) in, checkpoints out. */
#include "common/err.h"
#include "train/cmd.h"
#include "train/config.h"
#include "train/trainer.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: moet train CONFIG.yaml [key.path=value ...] [--profile] [--quiet] [--print-config]\n"
    "  Trains as CONFIG says (keys: ../shared/DESIGN.md, README). Overrides like\n"
    "  optim.lr=1e-4 or data.train=[a.h5,b.h5] apply before validation. Writes\n"
    "  RUN_DIR/config.yaml, metrics.jsonl and checkpoints/step_NNNNNNNN; resumes from the\n"
    "  newest checkpoint by default. Ctrl-C / SIGTERM save a checkpoint and exit 0.\n"
    "  --profile prints time per kernel family; --quiet prints nothing but errors (and the\n"
    "  profile when asked; metrics.jsonl is written as always); --print-config checks the\n"
    "  config's keys and values and prints it resolved (every default filled in) without\n"
    "  training (the model, data and tokenizer files are checked when training starts).\n";

int cmd_train(int argc, char **argv)
{
    if (cmd_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    const char *path = NULL;
    char *ov[256];
    int nov = 0;
    trainer_opts o = {0};
    int print_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--profile")) o.profile = 1;
        else if (!strcmp(argv[i], "--quiet")) o.quiet = 1;
        else if (!strcmp(argv[i], "--print-config")) print_only = 1;
        else if (argv[i][0] == '-') {
            fprintf(stderr, "moet train: unknown option '%s'\n%s", err_q(argv[i], -1), usage);
            return 2;
        } else if (!path) path = argv[i];
        else if (strchr(argv[i], '=') && nov < 256) ov[nov++] = argv[i];
        else {
            fprintf(stderr, "moet train: '%s' is not a key.path=value override\n%s", err_q(argv[i], -1), usage);
            return 2;
        }
    }
    if (!path) {
        fputs(usage, stderr);
        return 2;
    }
    char err[ERR_MAX];
    cfg c;
    if (cfg_load(&c, path, ov, nov, err)) {
        fprintf(stderr, "moet train: %s\n", err);
        return 1;
    }
    if (print_only) {
        cfg_print_yaml(&c, stdout);
        cfg_free(&c);
        return 0;
    }
    int rc = trainer_run(&c, &o, err);
    if (rc) fprintf(stderr, "moet train: %s\n", err);
    cfg_free(&c);
    return rc ? 1 : 0;
}
