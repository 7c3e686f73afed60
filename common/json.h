/* json: a pull scanner over JSON text, for inputs too big for a cJSON tree or whose
 * strings must keep every byte.
 *
 * cJSON builds one malloc'd node per value: the 28 MB gpt-oss tokenizer.json is 1.5 M
 * nodes and 0.6 s of malloc and page faults before anything is looked at, and a cJSON
 * string ends at an escaped NUL ("\u0000").  This scanner walks the text in place
 * instead: strings are decoded into the buffer they came from (a decoded string is
 * never longer than its JSON form; one without escapes is not written at all, so a
 * private file mapping stays shared with the page cache), values that are not wanted
 * are skipped, and a span it skipped can still be handed to cJSON when a tree is
 * easier.  Grammar as RFC 8259, strictly: no raw control characters in strings,
 * no lone surrogates, integers and numbers as the RFC writes them, nesting at most
 * JSON_MAX_DEPTH.  UTF-8 validity of the text is the caller's (json_utf8_check). */
#ifndef MOET_JSON_H
#define MOET_JSON_H

#include <stddef.h>

#define JSON_MAX_DEPTH 256

typedef struct {
    char *p, *end;          /* the unread text */
    const char *base;       /* start of the whole text, for error offsets */
    char *err;              /* ERR_MAX buffer for the one error line */
} json_scan;

void json_begin(json_scan *j, char *text, size_t len, char *err);

/* Skip whitespace; the next byte, or -1 at the end. */
int json_peek(json_scan *j);

/* Skip one value (validated). 0 ok, -1 error. */
int json_skip(json_scan *j);

/* The value at j->p is a string: decode it in place; *s and *n the result (not
 * NUL-terminated; it may hold NUL bytes from "\u0000"). */
int json_string(json_scan *j, char **s, size_t *n);

/* The value is an integer (no fraction, no exponent) within [lo, hi]. */
int json_int(json_scan *j, long lo, long hi, long *v);

/* Members of an object / items of an array.  Call with *state = 0 at the value;
 * returns 1 when there is a member (key decoded as by json_string, ':' consumed, j->p
 * at the value) / an item (j->p at it), 0 after the closing bracket, -1 on error.  The caller
 * must consume each value (json_skip or a reader) before the next call. */
int json_object_next(json_scan *j, int *state, char **key, size_t *klen);
int json_array_next(json_scan *j, int *state);

/* Offset of j->p in the whole text, for messages. */
size_t json_offset(const json_scan *j);

/* 0 when s[0..n) is valid UTF-8, else -1 with *bad the offset of the first bad byte. */
int json_utf8_check(const char *s, size_t n, size_t *bad);

/* key[0..n) equals the C string s. */
int json_key_is(const char *key, size_t n, const char *s);

/* Append s[0..n) to out as a JSON string literal ("..." with \" \\ \n \t ... and \u00XX
 * for other control characters; bytes that are not valid UTF-8 become U+FFFD, as
 * Hugging Face's decode gives them).  out is a growable buffer (*out, *len, *cap), kept
 * NUL-terminated (so one more byte can always be stored over the NUL).
 * 0 ok, -1 out of memory. */
int json_put_string(char **out, size_t *len, size_t *cap, const char *s, size_t n);

#endif
