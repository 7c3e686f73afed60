/* moet tokenize: text on stdin -> token ids on stdout (or ids -> text with --decode). */
#include "train/cmd.h"

#include "common/err.h"
#include "data/tok.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moet tokenize TOKENIZER.json [--no-bos] < text\n"
            "       moet tokenize TOKENIZER.json --decode [--skip-special] < ids\n\n"
            "Reads all of stdin as one text and prints its token ids on one line,\n"
            "separated by single spaces (BOS first unless --no-bos).\n"
            "--decode reads whitespace-separated ids and prints the text exactly (no\n"
            "newline added); special tokens are kept unless --skip-special.\n");
}

static int read_stdin(char **buf, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    while (b) {
        n += fread(b + n, 1, cap - n, stdin);
        if (n < cap) break;
        char *nb = realloc(b, cap *= 2);
        if (!nb) free(b);
        b = nb;
    }
    if (!b || ferror(stdin)) {
        free(b);
        return -1;
    }
    *buf = b;
    *len = n;
    return 0;
}

static int print_ids(const tok_ids *ids)
{
    /* One buffered line: up to 11 chars per id. */
    char *line = malloc(ids->n * 12 + 2), *p = line;
    if (!line) return -1;
    for (size_t i = 0; i < ids->n; i++) p += sprintf(p, i ? " %d" : "%d", (int)ids->ids[i]);
    *p++ = '\n';
    int bad = fwrite(line, 1, (size_t)(p - line), stdout) != (size_t)(p - line);
    free(line);
    return bad || fflush(stdout) ? -1 : 0;
}

/* Whitespace-separated decimal ids from text into ids. */
static int parse_ids(const char *s, size_t n, tok_ids *ids, char *err)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r'))) i++;
        if (i == n) break;
        size_t a = i;
        while (i < n && !(s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r'))) i++;
        char word[24];
        size_t k = i - a;
        char *end;
        if (k >= sizeof word) return err_set(err, "'%.20s...' is not a token id", s + a);
        memcpy(word, s + a, k);
        word[k] = 0;
        errno = 0;
        long v = strtol(word, &end, 10);
        if (*end || errno || v < 0 || v > 0x7fffffff) return err_set(err, "'%s' is not a token id", word);
        if (tok_ids_push(ids, (int32_t)v)) return err_set(err, "out of memory");
    }
    return 0;
}

int cmd_tokenize(int argc, char **argv)
{
    if (cmd_wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    const char *path = NULL;
    int bos = 1, decode = 0, skip_special = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--no-bos")) bos = 0;
        else if (!strcmp(argv[i], "--decode")) decode = 1;
        else if (!strcmp(argv[i], "--skip-special")) skip_special = 1;
        else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "moet tokenize: unknown option '%s' (moet tokenize --help)\n", argv[i]);
            return 2;
        } else if (!path) path = argv[i];
        else {
            fprintf(stderr, "moet tokenize: one tokenizer.json expected, got '%s' too\n", argv[i]);
            return 2;
        }
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    if ((decode && !bos) || (!decode && skip_special)) {
        fprintf(stderr, "moet tokenize: %s goes with %s\n", decode ? "--no-bos" : "--skip-special",
                decode ? "encoding, not --decode" : "--decode");
        return 2;
    }

    char err[ERR_MAX];
    tok *t;
    if (tok_load(&t, path, err)) {
        fprintf(stderr, "moet tokenize: %s\n", err);
        return 1;
    }
    char *in = NULL;
    size_t n = 0;
    tok_ids ids = {0};
    int rc = 1;
    if (read_stdin(&in, &n)) {
        fprintf(stderr, "moet tokenize: cannot read stdin\n");
        goto done;
    }
    if (!decode) {
        if (tok_encode(t, in, n, bos, &ids, err)) {
            fprintf(stderr, "moet tokenize: %s\n", err);
            goto done;
        }
        if (print_ids(&ids)) {
            fprintf(stderr, "moet tokenize: cannot write stdout\n");
            goto done;
        }
    } else {
        char *text;
        size_t len;
        if (parse_ids(in, n, &ids, err) ||
            tok_decode_ex(t, ids.ids, ids.n, skip_special, &text, &len, err)) {
            fprintf(stderr, "moet tokenize: %s\n", err);
            goto done;
        }
        int bad = fwrite(text, 1, len, stdout) != len || fflush(stdout);
        free(text);
        if (bad) {
            fprintf(stderr, "moet tokenize: cannot write stdout\n");
            goto done;
        }
    }
    rc = 0;
done:
    free(in);
    tok_ids_free(&ids);
    tok_free(t);
    return rc;
}
