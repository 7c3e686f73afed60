/* moet train: YAML config (+ key.path=value overrides) in, checkpoints out. */
#include "common/err.h"
#include "dist/dist.h"
#include "train/cmd.h"
#include "train/config.h"
#include "train/trainer.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: moet train CONFIG.yaml [key.path=value ...] [--profile] [--quiet] [--print-config]\n"
    "                  [--strict]\n"
    "  Trains as CONFIG says (keys: ../shared/DESIGN.md, README). Overrides like\n"
    "  optim.lr=1e-4 or data.train=[a.h5,b.h5] apply before validation. Writes\n"
    "  RUN_DIR/config.yaml, metrics.jsonl and checkpoints/step_NNNNNNNN; resumes from the\n"
    "  newest checkpoint by default. Ctrl-C / SIGTERM save a checkpoint and exit 0.\n"
    "  --profile prints time per kernel family; --quiet prints nothing but errors (and the\n"
    "  profile when asked; metrics.jsonl is written as always); --print-config checks the\n"
    "  config's keys and values and prints it resolved (every default filled in) without\n"
    "  training (the model, data and tokenizer files are checked when training starts).\n"
    "  --strict: a data.seq_len longer than the model's max_position_embeddings is an error\n"
    "  (without it, a warning).\n"
    "  Under an MPI launcher (mpirun -np N moet train ...) the N ranks train one data-parallel\n"
    "  run (README: Data-parallel training); rank 0 prints and writes.\n";

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
        else if (!strcmp(argv[i], "--strict")) o.strict = 1;
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
    dist *d = NULL;
    if (!print_only && dist_open(&d, err)) { /* under a launcher asking for ranks: every rank, the same line */
        fprintf(stderr, "moet train: %s\n", err);
        return 1;
    }
    int rc = cfg_load(&c, path, ov, nov, err);
    if (dist_agree(d, rc, err)) { /* the same config on every rank: rank 0 says what is wrong */
        if (dist_rank(d) == 0) fprintf(stderr, "moet train: %s\n", err);
        dist_close(d);
        return 1;
    }
    if (c.dist.zero < 0 && (dist_size(d) > 1 || dist_launcher_size() > 1)) c.dist.zero = 1; /* the default, recorded */
    if (print_only) {
        cfg_print_yaml(&c, stdout);
        cfg_free(&c);
        return 0;
    }
    o.dist = d;
    rc = trainer_run(&c, &o, err);
    if (rc && dist_rank(d) == 0) fprintf(stderr, "moet train: %s\n", err);
    cfg_free(&c);
    dist_close(d);
    return rc ? 1 : 0;
}
