/* err: formatting of the single error line every library call can produce. */
#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* A message cut at ERR_MAX may end inside a UTF-8 sequence: drop that partial character. */
static void cut_partial_utf8(char *s)
{
    size_t n = strlen(s), j = n;
    while (j > 0 && n - j < 4 && ((unsigned char)s[j - 1] & 0xc0) == 0x80) j--;
    if (j == 0) return;
    unsigned char lead = (unsigned char)s[j - 1];
    size_t want = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
    if (lead >= 0xc0 && n - (j - 1) < want) s[j - 1] = 0;
}

int err_set(char *err, const char *fmt, ...)
{
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err, ERR_MAX, fmt, ap);
    va_end(ap);
    if (n >= ERR_MAX) cut_partial_utf8(err);
    return -1;
}

int err_wrap(char *err, const char *fmt, ...)
{
    if (!err) return -1;
    char prefix[251], old[251]; /* 250 bytes each: both halves always fit */
    va_list ap;
    va_start(ap, fmt);
    if (vsnprintf(prefix, sizeof prefix, fmt, ap) >= (int)sizeof prefix) cut_partial_utf8(prefix);
    va_end(ap);
    if (snprintf(old, sizeof old, "%s", err) >= (int)sizeof old) cut_partial_utf8(old);
    snprintf(err, ERR_MAX, "%s: %s", prefix, old);
    return -1;
}

/* Length of a valid UTF-8 sequence of a printable character at s (n bytes left), or 0. */
static int utf8_printable(const unsigned char *s, long n)
{
    int len;
    unsigned cp;
    if (s[0] < 0x80) return s[0] >= 0x20 && s[0] < 0x7f;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) len = 2, cp = s[0] & 0x1f;
    else if (s[0] >= 0xe0 && s[0] <= 0xef) len = 3, cp = s[0] & 0x0f;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4) len = 4, cp = s[0] & 0x07;
    else return 0;
    if (n < len) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff))) return 0; /* overlong */
    if (cp >= 0xd800 && cp <= 0xdfff) return 0;                                              /* surrogate */
    if (cp < 0xa0 || (cp >= 0x2028 && cp <= 0x2029) || (cp >= 0x202a && cp <= 0x202e) ||
        (cp >= 0x2066 && cp <= 0x2069) || cp == 0xfeff)
        return 0; /* C1 controls, line separators, bidi overrides, BOM: not shown raw */
    return len;
}

char *err_quote(char *dst, int cap, const char *s, long len, int max_chars)
{
    if (!s) {
        snprintf(dst, (size_t)cap, "(null)");
        return dst;
    }
    if (len < 0) len = (long)strlen(s);
    if (cap < 8) {
        dst[0] = 0;
        return dst;
    }
    const unsigned char *u = (const unsigned char *)s;
    int o = 0, chars = 0;
    for (long i = 0; i < len;) {
        char tmp[16];
        int tl, adv;
        int pl = utf8_printable(u + i, len - i);
        if (pl > 0 && u[i] != '\'' && u[i] != '"' && u[i] != '\\') {
            memcpy(tmp, u + i, (size_t)pl);
            tl = pl, adv = pl;
        } else if (u[i] == '\'' || u[i] == '"' || u[i] == '\\') {
            tmp[0] = '\\', tmp[1] = (char)u[i], tl = 2, adv = 1;
        } else {
            static const char hex[] = "0123456789ABCDEF";
            tmp[0] = '\\', tmp[1] = 'x', tmp[2] = hex[u[i] >> 4], tmp[3] = hex[u[i] & 15];
            tl = 4, adv = 1;
        }
        if (chars >= max_chars || o + tl + 4 > cap) {
            memcpy(dst + o, "...", 3); /* each step left room for these and the NUL */
            o += 3;
            break;
        }
        memcpy(dst + o, tmp, (size_t)tl);
        o += tl;
        chars++;
        i += adv;
    }
    dst[o] = 0;
    return dst;
}

const char *err_q(const char *s, long len)
{
    static _Thread_local char ring[4][ERR_QUOTE_MAX];
    static _Thread_local int next;
    char *d = ring[next];
    next = (next + 1) & 3;
    return err_quote(d, ERR_QUOTE_MAX, s, len, 64);
}
