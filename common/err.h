/* err: the one error convention of moet.
 * Library functions return 0 on success and -1 on failure, writing one human line
 * into a caller-provided buffer `char err[ERR_MAX]`.  Only main() prints and exits. */
#ifndef MOET_ERR_H
#define MOET_ERR_H

#define ERR_MAX 512

/* Format a message into err (if err != NULL); always returns -1 so callers can
 * write `return err_set(err, "bad %s", x);`. */
int err_set(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefix an existing message: "ctx: old message". Returns -1. */
int err_wrap(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* User text made safe to print inside an error line: printable ASCII and valid UTF-8 of
 * printable characters pass, everything else (control bytes, ESC, DEL, invalid UTF-8, C1
 * controls) becomes \xHH; quotes and backslashes are escaped; more than max_chars output
 * characters are cut and end in "...".  len < 0 means strlen(s); s NULL gives "(null)".
 * Returns dst (always NUL-terminated; cap >= 8). */
char *err_quote(char *dst, int cap, const char *s, long len, int max_chars);

/* The same into a static ring of 4 buffers of ERR_QUOTE_MAX bytes, for use inside one
 * err_set call: err_set(err, "'%s' is not a token id", err_q(text, -1)).
 * Values are cut at 64 characters. Not thread-safe across threads sharing a call. */
#define ERR_QUOTE_MAX 300
const char *err_q(const char *s, long len);

#endif
