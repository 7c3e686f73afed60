/* moet prep: text / jsonl to HDF5 training shards (the work is data/prep.c). */
#include "train/cmd.h"

#include "common/err.h"
#include "data/prep.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char USAGE[] =
    "usage: moet prep --tokenizer tokenizer.json --out DIR [options] INPUT...\n"
    "\n"
    "Tokenize .txt and .jsonl files and pack them into HDF5 shards of fixed-length rows\n"
    "(OUT/train-00000.h5 ..., OUT/val-00000.h5 ...).\n"
    "\n"
    "  INPUT                 .txt: one document per file (or per paragraph, see below)\n"
    "                        .jsonl: {\"text\": ...} or {\"messages\": [{\"role\", \"content\"}, ...]}\n"
    "  --seq-len N           tokens per row [2048]\n"
    "  --val-fraction F      share of documents held out into val-*.h5 [0]\n"
    "  --rows-per-shard R    rows per shard file [2048]\n"
    "  --split-paragraphs    .txt: one document per blank-line-separated block\n"
    "  --chat-template T     mistral | chatml, for \"messages\" lines [chatml when the tokenizer has\n"
    "                        <|im_start|>, else mistral]; recorded in the shards (chat_template)\n"
    "  --seed S              seed of the train/val split [0]\n"
    "  --on-error E          skip | fatal: what a bad jsonl line does [skip]\n"
    "  --threads N           tokenizer threads [all cores]\n"
    "\n"
    "Rows are documents packed back to back, each BOS ... EOS; the last row is padded\n"
    "with EOS (loss_mask 0).  Chat data has loss_mask 1 only on assistant replies.\n";

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "moet prep: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (moet prep --help)\n");
    return 2;
}

typedef struct {
    int tty, progress_open;
} term;

static void on_report(void *ctx, int kind, const char *line)
{
    term *t = ctx;
    if (t->progress_open) fputc('\n', stderr), t->progress_open = 0;
    if (kind == PREP_PROGRESS && t->tty) {
        fprintf(stderr, "\r%s\033[K", line);
        t->progress_open = 1;
    } else {
        fprintf(stderr, "%s%s\n", kind == PREP_WARNING ? "moet prep: " : "", line);
    }
    fflush(stderr);
}

static double pct(int64_t a, int64_t b) { return b > 0 ? 100.0 * (double)a / (double)b : 0.0; }

int cmd_prep(int argc, char **argv)
{
    if (cmd_wants_help(argc, argv)) {
        fputs(USAGE, stdout);
        return 0;
    }
    prep_opts o;
    prep_defaults(&o);
    const char **inputs = calloc(argc, sizeof *inputs);
    if (!inputs) return fprintf(stderr, "moet prep: out of memory\n"), 1;
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        if (strncmp(a, "--", 2) || !strcmp(a, "--split-paragraphs")) {
            if (!strcmp(a, "--split-paragraphs")) o.split_paragraphs = 1;
            else inputs[o.n_inputs++] = a;
            continue;
        }
        char name[64];
        const char *eq = strchr(a, '=');
        snprintf(name, sizeof name, "%.*s", eq ? (int)(eq - a) : (int)strlen(a), a);
        if (eq) val = eq + 1;
        else if (i + 1 < argc) val = argv[++i];
        else {
            rc = usage_error("%s needs a value", err_q(name, -1));
            goto out;
        }
        long v;
        char *end;
        if (!strcmp(name, "--tokenizer")) o.tokenizer = val;
        else if (!strcmp(name, "--out")) o.out_dir = val;
        else if (!strcmp(name, "--seq-len")) { /* a row needs 2 tokens for one target, as train does */
            if (cmd_long(val, 2, 1 << 24, &v)) {
                rc = usage_error("%s wants an integer in [2, 16777216]", name);
                goto out;
            }
            o.seq_len = (int)v;
        } else if (!strcmp(name, "--threads")) { /* more than 1024 threads only overflows stacks */
            if (cmd_long(val, 1, 1024, &v)) {
                rc = usage_error("%s wants an integer in [1, 1024]", name);
                goto out;
            }
            o.threads = (int)v;
        } else if (!strcmp(name, "--rows-per-shard")) {
            if (cmd_long(val, 1, 1L << 40, &v)) {
                rc = usage_error("%s wants a positive integer", name);
                goto out;
            }
            o.rows_per_shard = v;
        } else if (!strcmp(name, "--seed")) {
            errno = 0;
            o.seed = strtoull(val, &end, 10);
            if (errno || end == val || *end || val[0] == '-') {
                rc = usage_error("%s wants a non-negative integer", name);
                goto out;
            }
        } else if (!strcmp(name, "--val-fraction")) {
            o.val_fraction = strtod(val, &end);
            if (end == val || *end || !(o.val_fraction >= 0 && o.val_fraction < 1)) {
                rc = usage_error("%s wants a number in [0, 1)", name);
                goto out;
            }
        } else if (!strcmp(name, "--chat-template")) {
            char err[ERR_MAX];
            if (chat_template_parse(val, &o.chat, err)) {
                rc = usage_error("%s", err);
                goto out;
            }
            o.chat_given = 1;
        } else if (!strcmp(name, "--on-error")) {
            if (strcmp(val, "skip") && strcmp(val, "fatal")) {
                rc = usage_error("--on-error wants skip or fatal, not '%s'", err_q(val, -1));
                goto out;
            }
            o.fatal_errors = !strcmp(val, "fatal");
        } else {
            rc = usage_error("unknown option %s", err_q(name, -1));
            goto out;
        }
    }
    if (!o.tokenizer || !o.out_dir) {
        rc = usage_error("%s", !o.tokenizer ? "--tokenizer is required" : "--out is required");
        goto out;
    }
    if (o.n_inputs == 0) {
        rc = usage_error("%s", "no INPUT files given");
        goto out;
    }
    o.inputs = inputs;
    term t = {.tty = isatty(2)};
    o.report = on_report, o.ctx = &t;
    prep_stats st;
    char err[ERR_MAX] = "";
    int failed = prep_run(&o, &st, err);
    if (t.progress_open) fputs("\r\033[K", stderr);  /* the summary replaces the progress line */
    if (failed) {
        fprintf(stderr, "moet prep: %s\n", err);
        rc = 1;
        goto out;
    }
    int64_t rows = st.train_rows + st.val_rows, positions = rows * o.seq_len;
    printf("prep: %lld documents (%lld train, %lld val), %lld tokens\n", (long long)st.documents,
           (long long)st.train_documents, (long long)st.val_documents, (long long)st.tokens);
    printf("prep: %lld rows of %d: train %lld rows in %d shard(s), val %lld rows in %d shard(s) -> %s\n",
           (long long)rows, o.seq_len, (long long)st.train_rows, st.train_shards, (long long)st.val_rows,
           st.val_shards, o.out_dir);
    printf("prep: padding %.2f%%, masked (not a target) %.2f%% of positions; %lld bad lines skipped, "
           "%lld empty documents, %lld conversations without an assistant turn skipped; chat template %s; "
           "%.2f s, %.1f MB/s\n",
           pct(st.padding, positions), pct(positions - st.targets, positions), (long long)st.skipped_lines,
           (long long)st.empty_documents, (long long)st.no_target_conversations, chat_template_name(st.chat),
           st.seconds, st.seconds > 0 ? st.bytes / 1e6 / st.seconds : 0.0);
    rc = 0;
out:
    free(inputs);
    return rc;
}
