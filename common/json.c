/* json: the pull scanner of json.h. */
#include "common/json.h"

#include "common/err.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void json_begin(json_scan *j, char *text, size_t len, char *err)
{
    *j = (json_scan){.p = text, .end = text + len, .base = text, .err = err};
}

size_t json_offset(const json_scan *j) { return (size_t)(j->p - j->base); }

int json_key_is(const char *key, size_t n, const char *s) { return strlen(s) == n && !memcmp(key, s, n); }

static int fail(json_scan *j, const char *what)
{
    return err_set(j->err, "not valid JSON: %s at byte %zu", what, json_offset(j));
}

int json_peek(json_scan *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t')) j->p++;
    return j->p < j->end ? (unsigned char)*j->p : -1;
}

static int hex4(const char *p, unsigned *v)
{
    unsigned x = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        x = x << 4 | (unsigned)d;
    }
    *v = x;
    return 0;
}

static size_t put_utf8(char *o, unsigned c)
{
    if (c < 0x80) return o[0] = (char)c, 1;
    if (c < 0x800) return o[0] = (char)(0xc0 | c >> 6), o[1] = (char)(0x80 | (c & 63)), 2;
    if (c < 0x10000) {
        o[0] = (char)(0xe0 | c >> 12), o[1] = (char)(0x80 | (c >> 6 & 63)), o[2] = (char)(0x80 | (c & 63));
        return 3;
    }
    o[0] = (char)(0xf0 | c >> 18), o[1] = (char)(0x80 | (c >> 12 & 63));
    o[2] = (char)(0x80 | (c >> 6 & 63)), o[3] = (char)(0x80 | (c & 63));
    return 4;
}

/* A string at j->p: with out != NULL decoded into out (which may be j->p itself: the
 * decoded form never outruns the reading position, and a string without escapes is
 * not written at all), else only validated. */
static int scan_string(json_scan *j, char *out, size_t *n)
{
    if (j->p >= j->end || *j->p != '"') return fail(j, "a string expected");
    const char *p = j->p + 1;
    size_t k = 0;
    for (;;) {
        /* Plain run: no quote, backslash or control byte. */
        const char *q = p;
        while (q < j->end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20) q++;
        if (out && q > p && out + k != p) memmove(out + k, p, (size_t)(q - p));   /* no write in place */
        k += (size_t)(q - p);
        p = q;
        if (p >= j->end) return j->p = (char *)p, fail(j, "unterminated string");
        if (*p == '"') break;
        if ((unsigned char)*p < 0x20) return j->p = (char *)p, fail(j, "control character in a string");
        /* Escape. */
        if (p + 1 >= j->end) return j->p = (char *)p, fail(j, "unterminated string");
        char c = p[1], e = 0;
        switch (c) {
        case '"': e = '"'; break;
        case '\\': e = '\\'; break;
        case '/': e = '/'; break;
        case 'b': e = '\b'; break;
        case 'f': e = '\f'; break;
        case 'n': e = '\n'; break;
        case 'r': e = '\r'; break;
        case 't': e = '\t'; break;
        case 'u': break;
        default: return j->p = (char *)p, fail(j, "bad escape in a string");
        }
        if (c != 'u') {
            if (out) out[k] = e;
            k++;
            p += 2;
            continue;
        }
        unsigned u, lo;
        if (p + 6 > j->end || hex4(p + 2, &u)) return j->p = (char *)p, fail(j, "bad \\u escape");
        p += 6;
        if (u >= 0xdc00 && u < 0xe000) return j->p = (char *)p - 6, fail(j, "lone surrogate");
        if (u >= 0xd800 && u < 0xdc00) {
            if (p + 6 > j->end || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) || lo < 0xdc00 || lo >= 0xe000)
                return j->p = (char *)p - 6, fail(j, "lone surrogate");
            u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
            p += 6;
        }
        char tmp[4];
        size_t m = put_utf8(tmp, u);
        if (out) memcpy(out + k, tmp, m);
        k += m;
    }
    j->p = (char *)p + 1;
    if (n) *n = k;
    return 0;
}

int json_string(json_scan *j, char **s, size_t *n)
{
    if (json_peek(j) != '"') return fail(j, "a string expected");
    char *out = j->p + 1;   /* where the text starts: an escape-free string stays as it is */
    if (scan_string(j, out, n)) return -1;
    *s = out;
    return 0;
}

static int scan_number(json_scan *j)
{
    const char *p = j->p;
    if (p < j->end && *p == '-') p++;
    if (p >= j->end || *p < '0' || *p > '9') return fail(j, "bad number");
    if (*p == '0') p++;
    else
        while (p < j->end && *p >= '0' && *p <= '9') p++;
    if (p < j->end && *p == '.') {
        p++;
        if (p >= j->end || *p < '0' || *p > '9') return fail(j, "bad number");
        while (p < j->end && *p >= '0' && *p <= '9') p++;
    }
    if (p < j->end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < j->end && (*p == '+' || *p == '-')) p++;
        if (p >= j->end || *p < '0' || *p > '9') return fail(j, "bad number");
        while (p < j->end && *p >= '0' && *p <= '9') p++;
    }
    j->p = (char *)p;
    return 0;
}

int json_int(json_scan *j, long lo, long hi, long *v)
{
    if (json_peek(j) < 0) return fail(j, "a number expected");
    const char *p = j->p;
    int neg = *p == '-';
    if (neg) p++;
    long x = 0;
    const char *d = p;
    while (p < j->end && *p >= '0' && *p <= '9') {
        if (x > (1L << 50)) return fail(j, "integer out of range");
        x = x * 10 + (*p++ - '0');
    }
    if (p == d || (p - d > 1 && *d == '0') ||
        (p < j->end && (*p == '.' || *p == 'e' || *p == 'E')))
        return fail(j, "an integer expected");
    if (neg) x = -x;
    if (x < lo || x > hi) return fail(j, "integer out of range");
    j->p = (char *)p;
    *v = x;
    return 0;
}

static int scan_word(json_scan *j, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, w, n)) return fail(j, "unexpected character");
    j->p += n;
    return 0;
}

/* One value, iteratively: containers push their closing bracket on a stack. */
int json_skip(json_scan *j)
{
    char stack[JSON_MAX_DEPTH];
    int depth = 0, c;
    for (;;) {
        c = json_peek(j);
        if (c < 0) return fail(j, "unexpected end");
        if (c == '{' || c == '[') {
            if (depth == JSON_MAX_DEPTH) return fail(j, "nested too deep");
            stack[depth++] = c == '{' ? '}' : ']';
            j->p++;
            int d = json_peek(j);
            if (d == stack[depth - 1]) {   /* empty container */
                j->p++;
                depth--;
            } else if (c == '{') {
                if (scan_string(j, NULL, NULL)) return -1;
                if (json_peek(j) != ':') return fail(j, "':' expected");
                j->p++;
                continue;
            } else {
                continue;
            }
        } else if (c == '"') {
            if (scan_string(j, NULL, NULL)) return -1;
        } else if (c == 't' || c == 'f' || c == 'n') {
            if (scan_word(j, c == 't' ? "true" : c == 'f' ? "false" : "null")) return -1;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            if (scan_number(j)) return -1;
        } else {
            return fail(j, "unexpected character");
        }
        /* After a complete value: close containers or move to the next member. */
        for (;;) {
            if (!depth) return 0;
            c = json_peek(j);
            if (c == ',') {
                j->p++;
                if (stack[depth - 1] == '}') {
                    json_peek(j);
                    if (scan_string(j, NULL, NULL)) return -1;
                    if (json_peek(j) != ':') return fail(j, "':' expected");
                    j->p++;
                }
                break;
            }
            if (c != stack[depth - 1]) return fail(j, c < 0 ? "unexpected end" : "',' or a closing bracket expected");
            j->p++;
            depth--;
        }
    }
}

int json_object_next(json_scan *j, int *state, char **key, size_t *klen)
{
    int c = json_peek(j);
    if (*state == 0) {
        if (c != '{') return fail(j, "an object expected");
        j->p++;
        *state = 1;
        if (json_peek(j) == '}') {
            j->p++;
            return 0;
        }
    } else {
        if (c == '}') {
            j->p++;
            return 0;
        }
        if (c != ',') return fail(j, c < 0 ? "unexpected end" : "',' or '}' expected");
        j->p++;
    }
    if (json_string(j, key, klen)) return -1;
    if (json_peek(j) != ':') return fail(j, "':' expected");
    j->p++;
    return 1;
}

int json_array_next(json_scan *j, int *state)
{
    int c = json_peek(j);
    if (*state == 0) {
        if (c != '[') return fail(j, "an array expected");
        j->p++;
        *state = 1;
        if (json_peek(j) == ']') {
            j->p++;
            return 0;
        }
        return 1;
    }
    if (c == ']') {
        j->p++;
        return 0;
    }
    if (c != ',') return fail(j, c < 0 ? "unexpected end" : "',' or ']' expected");
    j->p++;
    return 1;
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t k = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (k <= 1) return k;
    if (k > n) return 0;
    for (size_t i = 1; i < k; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0) || (c == 0xf0 && s[1] < 0x90) ||
        (c == 0xf4 && s[1] >= 0x90))
        return 0;
    return k;
}

int json_utf8_check(const char *s, size_t n, size_t *bad)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {   /* eight ASCII bytes at a time */
            uint64_t w;
            memcpy(&w, u + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        size_t k = utf8_seq(u + i, n - i);
        if (!k) {
            if (bad) *bad = i;
            return -1;
        }
        i += k;
    }
    return 0;
}

static int put(char **out, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 256;
        while (*len + n + 1 > c) c *= 2;
        char *b = realloc(*out, c);
        if (!b) return -1;
        *out = b;
        *cap = c;
    }
    memcpy(*out + *len, s, n);
    *len += n;
    (*out)[*len] = 0;
    return 0;
}

int json_put_string(char **out, size_t *len, size_t *cap, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    if (put(out, len, cap, "\"", 1)) return -1;
    size_t i = 0;
    while (i < n) {
        size_t a = i;   /* a run that needs no escaping */
        while (i < n && u[i] >= 0x20 && u[i] != '"' && u[i] != '\\' && u[i] < 0x80) i++;
        if (i > a && put(out, len, cap, s + a, i - a)) return -1;
        if (i >= n) break;
        char esc[8];
        const char *e = esc;
        size_t el, adv = 1;
        if (u[i] >= 0x80) {
            adv = utf8_seq(u + i, n - i);
            if (adv) e = s + i, el = adv;
            else e = "\xef\xbf\xbd", el = 3, adv = 1;   /* U+FFFD */
        } else if (u[i] == '"' || u[i] == '\\') {
            esc[0] = '\\', esc[1] = (char)u[i], el = 2;
        } else {
            static const char named[] = "btn\0fr";   /* \b \t \n (\v) \f \r */
            if (u[i] >= 8 && u[i] <= 13 && named[u[i] - 8]) esc[0] = '\\', esc[1] = named[u[i] - 8], el = 2;
            else {
                static const char hex[] = "0123456789abcdef";
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[u[i] >> 4], esc[5] = hex[u[i] & 15], el = 6;
            }
        }
        if (put(out, len, cap, e, el)) return -1;
        i += adv;
    }
    return put(out, len, cap, "\"", 1);
}
