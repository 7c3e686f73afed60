/* ref_files: what the tokenizer tests share for reading reference files. shared_init() takes
 * $SHARED (default ../shared); path_of("data/...") names a file under it (8 names live at a
 * time); slurp() reads a whole file, NUL-terminated (NULL when it cannot); print_ids() prints
 * up to 60 ids of a mismatch. */
#ifndef MOET_TEST_REF_FILES_H
#define MOET_TEST_REF_FILES_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static char shared[512];

static void shared_init(void)
{
    const char *s = getenv("SHARED");
    snprintf(shared, sizeof shared, "%s", s && *s ? s : "../shared");
}

static char *path_of(const char *rel)
{
    static char p[8][1024];
    static int k;
    char *b = p[k++ % 8];
    snprintf(b, 1024, "%s/%s", shared, rel);
    return b;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) b[n] = 0;
    if (b && len) *len = (size_t)n;
    return b;
}

static void print_ids(const char *what, const int32_t *ids, size_t n)
{
    fprintf(stderr, "  %s [", what);
    for (size_t i = 0; i < n && i < 60; i++) fprintf(stderr, "%s%d", i ? ", " : "", (int)ids[i]);
    fprintf(stderr, "%s]\n", n > 60 ? ", ..." : "");
}

#endif
