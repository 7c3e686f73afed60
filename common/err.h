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

#endif
