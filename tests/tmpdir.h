/* tmpdir: the temporary directory a C test binary works in. A setup calls
 * tmpdir_make("name"), its teardown tmpdir_remove(); tmp_path("file") names a file in it. */
#ifndef MOET_TEST_TMPDIR_H
#define MOET_TEST_TMPDIR_H

#include <stdio.h>
#include <stdlib.h>

#include "common/err.h"
#include "common/fsutil.h"

static char dir[64];

static int tmpdir_make(const char *name)
{
    snprintf(dir, sizeof dir, "/tmp/%s_XXXXXX", name);
    return mkdtemp(dir) ? 0 : -1;
}

static int tmpdir_remove(void)
{
    char err[ERR_MAX];
    return fs_rm_rf(dir, err);
}

/* dir/name; the last 8 results stay valid */
static const char *tmp_path(const char *name)
{
    static char p[8][256];
    static int k;
    k = (k + 1) % 8;
    snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
    return p[k];
}

#endif
