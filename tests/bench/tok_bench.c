/* tok_bench: tokenizer throughput (not a test).  Usage:
 *   tok_bench TOKENIZER.json TEXT_FILE [--table NAME]
 * Prints load time (best of 3 loads), encode MB/s on one thread (the text as one call,
 * and as documents of 1000 lines), on 2 threads (documents split between them; new
 * threads start with empty word caches, so "cold" then "warm"), decode MB/s.  With
 * --table one line "NAME load_ms cold warm docs 2cold 2warm decode tokens ok" instead,
 * for tok_bench.sh's side-by-side table. */
#include "common/clock.h"
#include "common/err.h"
#include "data/tok.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const tok *t;
    const char *text;
    size_t *doc;        /* document start offsets, n_doc + 1 */
    size_t first, last; /* documents [first, last) */
    size_t n_ids;
    int passes;
    double secs[2];     /* time of each pass */
} job;

static void *encode_docs(void *p)
{
    job *j = p;
    char err[ERR_MAX];
    tok_ids ids = {0};
    for (int pass = 0; pass < j->passes; pass++) {
        double t0 = clock_seconds();
        j->n_ids = 0;
        for (size_t d = j->first; d < j->last; d++) {
            ids.n = 0;
            if (tok_encode(j->t, j->text + j->doc[d], j->doc[d + 1] - j->doc[d], 1, &ids, err)) {
                fprintf(stderr, "tok_bench: %s\n", err);
                exit(1);
            }
            j->n_ids += ids.n;
        }
        j->secs[pass] = clock_seconds() - t0;
    }
    tok_ids_free(&ids);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3 && !(argc == 5 && !strcmp(argv[3], "--table"))) {
        fprintf(stderr, "usage: tok_bench TOKENIZER.json TEXT_FILE [--table NAME]\n");
        return 2;
    }
    const char *table = argc == 5 ? argv[4] : NULL;
    double r[8] = {0};   /* load ms, MB/s: cold, warm, documents, 2 threads cold / warm, decode */
    char err[ERR_MAX];
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        fprintf(stderr, "tok_bench: cannot open %s\n", argv[2]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    rewind(f);
    char *text = malloc(n + 1);
    if (!text || fread(text, 1, n, f) != n) return 1;
    fclose(f);
    double mb = (double)n / 1e6;

    tok *t = NULL;
    double t0, best = 1e30;
    for (int k = 0; k < 3; k++) {   /* the first load also reads the file into the page cache */
        tok_free(t);
        t0 = clock_seconds();
        if (tok_load(&t, argv[1], err)) {
            fprintf(stderr, "tok_bench: %s\n", err);
            return 1;
        }
        double dt = clock_seconds() - t0;
        if (dt < best) best = dt;
    }
    r[0] = 1e3 * best;
    if (!table) printf("load            %8.1f ms   (best of 3; vocab %d)\n", r[0], tok_vocab_size(t));

    /* Whole text, one call: first (cold cache) and second run. */
    tok_ids ids = {0};
    for (int run = 0; run < 2; run++) {
        ids.n = 0;
        t0 = clock_seconds();
        if (tok_encode(t, text, n, 1, &ids, err)) return 1;
        double s = clock_seconds() - t0;
        r[1 + run] = mb / s;
        if (!table)
            printf("encode 1 thread %8.1f MB/s (%s, one %.1f MB call, %zu tokens, %.2f bytes/token)\n", mb / s,
                   run ? "warm" : "cold", mb, ids.n, (double)n / (double)ids.n);
    }

    /* Documents: runs of 1000 lines, as prep sees them. */
    size_t n_doc = 0, *doc = malloc((n / 2 + 2) * sizeof *doc);
    doc[n_doc++] = 0;
    for (size_t i = 0, lines = 0; i < n; i++)
        if (text[i] == '\n' && ++lines % 1000 == 0) doc[n_doc++] = i + 1;
    if (doc[n_doc - 1] != n) doc[n_doc++] = n;
    n_doc--;
    job one = {t, text, doc, 0, n_doc, 0, 1, {0, 0}};
    encode_docs(&one);
    r[3] = mb / one.secs[0];
    if (!table) printf("encode 1 thread %8.1f MB/s (%zu documents)\n", mb / one.secs[0], n_doc);
    /* Two threads, each encoding its half twice: first with an empty word cache. */
    job two[2] = {{t, text, doc, 0, n_doc / 2, 0, 2, {0, 0}}, {t, text, doc, n_doc / 2, n_doc, 0, 2, {0, 0}}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, encode_docs, &two[i]);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    for (int pass = 0; pass < 2; pass++) {
        double s2 = two[0].secs[pass] > two[1].secs[pass] ? two[0].secs[pass] : two[1].secs[pass];
        r[4 + pass] = mb / s2;
        if (!table)
            printf("encode 2 threads%8.1f MB/s (%s, %zu documents; %s token count as 1 thread)\n", mb / s2,
                   pass ? "warm" : "cold", n_doc, two[0].n_ids + two[1].n_ids == one.n_ids ? "same" : "DIFFERENT");
    }
    int same = two[0].n_ids + two[1].n_ids == one.n_ids;

    /* Decode the text's ids without the BOS: every tokenizer here gives the text back. */
    char *back;
    size_t len, skip = ids.n && ids.ids[0] == tok_bos_id(t);
    t0 = clock_seconds();
    if (tok_decode(t, ids.ids + skip, ids.n - skip, &back, &len, err)) return 1;
    double sd = clock_seconds() - t0;
    int back_ok = len == n && !memcmp(back, text, n);
    r[6] = (double)len / 1e6 / sd;
    if (!table) printf("decode          %8.1f MB/s (%s the text)\n", r[6], back_ok ? "gives back" : "does not give back");
    else
        printf("%s %.1f %.1f %.1f %.1f %.1f %.1f %.1f %zu %s\n", table, r[0], r[1], r[2], r[3], r[4], r[5], r[6], ids.n,
               same && back_ok ? "ok" : "MISMATCH");
    free(back);
    tok_ids_free(&ids);
    free(doc);
    free(text);
    tok_free(t);
    return 0;
}
