/* err: formatting of the single error line every library call can produce. */
#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int err_set(char *err, const char *fmt, ...)
{
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, ERR_MAX, fmt, ap);
    va_end(ap);
    return -1;
}

int err_wrap(char *err, const char *fmt, ...)
{
    if (!err) return -1;
    char prefix[ERR_MAX], old[ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    snprintf(old, sizeof old, "%s", err);
    snprintf(err, ERR_MAX, "%.250s: %.250s", prefix, old); /* both halves always fit */
    return -1;
}
