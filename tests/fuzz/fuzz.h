/* fuzz: what every fuzz target shares (tests/fuzz/README.md).
 *
 * A target is LLVMFuzzerTestOneInput over one parser; moet's own rules are checked on top of
 * the sanitizers: every failure leaves exactly one printable line in err (no control bytes,
 * no invalid UTF-8, not empty, no doubled "X: X:" prefix), and the target aborts with the
 * message when one does not, so libFuzzer keeps the input as a finding. Files a parser
 * wants by path are written into one private temp directory (on /dev/shm when there). */
#ifndef MOET_FUZZ_H
#define MOET_FUZZ_H

#include "common/err.h"
#include "common/fsutil.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char fuzz_dir[256];

static void fuzz_cleanup(void)
{
    if (fuzz_dir[0]) fs_rm_rf(fuzz_dir, NULL);
}

/* The private temp dir, made on first use and removed at exit. */
static const char *fuzz_tmp(void)
{
    if (!fuzz_dir[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fuzz_dir, sizeof fuzz_dir, "%s/moet_fuzz_XXXXXX", base);
        if (!mkdtemp(fuzz_dir)) abort();
        atexit(fuzz_cleanup);
    }
    return fuzz_dir;
}

/* fuzz_tmp()/name; the last 4 results stay valid. */
static const char *fuzz_path(const char *name)
{
    static char p[4][512];
    static int k;
    char *o = p[k++ & 3];
    snprintf(o, sizeof p[0], "%s/%s", fuzz_tmp(), name);
    return o;
}

/* Write data to fuzz_tmp()/name (replacing it); returns the path. */
__attribute__((unused)) static const char *fuzz_write(const char *name, const void *data, size_t size)
{
    const char *path = fuzz_path(name);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f)) abort();
    return path;
}

/* data as a NUL-terminated string (malloc'd; bytes after an inner NUL are cut off by it). */
__attribute__((unused)) static char *fuzz_str(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s) abort();
    memcpy(s, data, size);
    s[size] = 0;
    return s;
}

static void fuzz_fail(const char *what, const char *err)
{
    fprintf(stderr, "\nmoet fuzz: %s: [", what);
    for (const unsigned char *c = (const unsigned char *)err; *c; c++)
        fprintf(stderr, *c >= 0x20 && *c < 0x7f ? "%c" : "\\x%02X", *c);
    fprintf(stderr, "]\n");
    abort();
}

/* 1 if s is valid UTF-8 (no overlongs, surrogates or > U+10FFFF). */
static int fuzz_utf8_ok(const unsigned char *s)
{
    while (*s) {
        unsigned c = *s, cp;
        int k = c < 0x80 ? 0 : c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2 : c >= 0xf0 && c <= 0xf4 ? 3 : -1;
        if (k < 0) return 0;
        cp = k == 0 ? c : c & (0x3f >> k);
        for (int j = 1; j <= k; j++) {
            if ((s[j] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (s[j] & 0x3f);
        }
        if ((k == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return 0;
        s += k + 1;
    }
    return 1;
}

/* The rule an error line breaks, or NULL: set, shorter than ERR_MAX, printable UTF-8 on one
 * line, no "A: A: " (a doubled prefix). */
static const char *fuzz_err_rule(const char *err)
{
    if (!err[0]) return "error without a message";
    if (strlen(err) >= ERR_MAX) return "message overflows ERR_MAX";
    for (const unsigned char *c = (const unsigned char *)err; *c; c++)
        if (*c < 0x20 || *c == 0x7f) return "control byte in a message";
    if (!fuzz_utf8_ok((const unsigned char *)err)) return "invalid UTF-8 in a message";
    /* The doubled-prefix check reads moet's own words: quoted user text ('...' or "...", with
     * \' and \" inside, as err_q writes it) is blanked first, since it may repeat anything. */
    char plain[ERR_MAX];
    snprintf(plain, sizeof plain, "%s", err);
    for (char *c = plain, q = 0; *c; c++) {
        if (q && *c == '\\' && c[1]) *c++ = '_', *c = '_';
        else if (q && *c == q) q = 0;
        else if (q) *c = '_';
        else if ((*c == '\'' || *c == '"') && (c == plain || c[-1] == ' ' || c[-1] == '(' || c[-1] == '[')) q = *c;
    }
    for (const char *a = plain; a && *a;) {
        const char *sep = strstr(a, ": ");
        if (!sep) break;
        size_t n = (size_t)(sep - a);
        if (n >= 4 && !strncmp(sep + 2, a, n) && !strncmp(sep + 2 + n, ": ", 2)) return "doubled prefix in a message";
        a = sep + 2;
    }
    return NULL;
}

/* The error line a failed call left must keep the rules; a finding (abort) otherwise. */
__attribute__((unused)) static void fuzz_check_err(const char *err)
{
    const char *rule = fuzz_err_rule(err);
    if (rule) fuzz_fail(rule, err);
}

#endif
