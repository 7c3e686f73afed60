/* fsutil: file reading, crash-safe file and directory replacement, mkdir -p, rm -rf.
 * Everything goes through raw fds so every error (short write, ENOSPC, EFBIG, EIO on
 * fsync) is seen and reported, never swallowed by stdio buffering. */
#include "common/fsutil.h"
#include "common/err.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int fs_open_regular(const char *path, size_t *size, char *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_set(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(err, "%s: not a regular file", path);
    }
    *size = (size_t)st.st_size;
    return fd;
}

int fs_read_file(const char *path, char **buf, size_t *len, char *err)
{
    *buf = NULL;
    *len = 0;
    size_t cap, n = 0;
    int fd = fs_open_regular(path, &cap, err);
    if (fd < 0) return -1;
    char *p = malloc(cap + 1);
    if (!p) { close(fd); return err_set(err, "%s: out of memory (%zu bytes)", path, cap); }
    for (;;) {
        char probe;                      /* the file may have grown since fstat */
        char *dst = n < cap ? p + n : &probe;
        ssize_t r = read(fd, dst, n < cap ? cap - n : 1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            free(p); close(fd);
            return err_set(err, "%s: read failed: %s", path, strerror(e));
        }
        if (r == 0) break;
        if (dst == &probe) {
            char *q = realloc(p, 2 * cap + 4096 + 1);
            if (!q) { free(p); close(fd); return err_set(err, "%s: out of memory", path); }
            p = q;
            cap = 2 * cap + 4096;
            p[n] = probe;
            r = 1;
        }
        n += (size_t)r;
    }
    close(fd);
    p[n] = '\0';
    *buf = p;
    *len = n;
    return 0;
}

/* The directory part of path ("." when there is none). */
void fs_parent_dir(const char *path, char *out, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash) { snprintf(out, cap, "."); return; }
    size_t n = (size_t)(slash - path);
    if (n == 0) n = 1;                   /* "/file" -> "/" */
    snprintf(out, cap, "%.*s", (int)n, path);
}

int fs_atomic_open(fs_atomic *w, const char *path, char *err)
{
    w->fd = -1;
    if (snprintf(w->path, sizeof w->path, "%s", path) >= (int)sizeof w->path)
        return err_set(err, "%s: path too long", path);
    snprintf(w->tmp, sizeof w->tmp, "%s.tmp.%ld", path, (long)getpid());
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) return err_set(err, "%s: cannot create temp file: %s", path, strerror(errno));
    return 0;
}

void fs_atomic_abort(fs_atomic *w)
{
    if (w->fd < 0) return;
    close(w->fd);
    unlink(w->tmp);
    w->fd = -1;
}

int fs_atomic_write(fs_atomic *w, const void *data, size_t n, char *err)
{
    if (w->fd < 0) return err_set(err, "%s: write after close", w->path);
    const char *p = data;
    while (n > 0) {
        ssize_t r = write(w->fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            fs_atomic_abort(w);
            return err_set(err, "%s: write failed: %s", w->path, strerror(e));
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

int fs_atomic_commit(fs_atomic *w, char *err)
{
    if (w->fd < 0) return err_set(err, "%s: commit after close", w->path);
    if (fsync(w->fd) != 0) {
        int e = errno;
        fs_atomic_abort(w);
        return err_set(err, "%s: fsync failed: %s", w->path, strerror(e));
    }
    int rc = close(w->fd);
    w->fd = -1;
    if (rc != 0) {
        int e = errno;
        unlink(w->tmp);
        return err_set(err, "%s: close failed: %s", w->path, strerror(e));
    }
    if (rename(w->tmp, w->path) != 0) {
        int e = errno;
        unlink(w->tmp);
        return err_set(err, "%s: rename failed: %s", w->path, strerror(e));
    }
    char dir[sizeof w->path];
    fs_parent_dir(w->path, dir, sizeof dir);
    return fs_fsync_dir(dir, err);
}

int fs_write_atomic(const char *path, const void *data, size_t len, char *err)
{
    fs_atomic w;
    if (fs_atomic_open(&w, path, err) != 0) return -1;
    if (fs_atomic_write(&w, data, len, err) != 0) return -1;
    return fs_atomic_commit(&w, err);
}

int fs_mkdir_p(const char *path, char *err)
{
    char p[PATH_MAX];
    if (!path[0]) return err_set(err, "mkdir: empty path");
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p)
        return err_set(err, "%s: path too long", path);
    for (char *s = p + 1; ; s++) {       /* create each prefix ending at a '/' */
        if (*s != '/' && *s != '\0') continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            return err_set(err, "%s: cannot create directory: %s", p, strerror(errno));
        if (!fs_is_dir(p)) return err_set(err, "%s: exists and is not a directory", p);
        *s = c;
        if (c == '\0') break;
    }
    return 0;
}

int fs_fsync_dir(const char *path, char *err)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return err_set(err, "%s: cannot open directory: %s", path, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0 && e != EINVAL)          /* EINVAL: the file system cannot sync dirs */
        return err_set(err, "%s: fsync failed: %s", path, strerror(e));
    return 0;
}

/* Remove name (relative to dirfd) and, for a directory, everything below it. */
static int rm_at(int dirfd, const char *name, const char *top, char *err)
{
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) return 0;
        return err_set(err, "%s: cannot stat %s: %s", top, name, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlinkat(dirfd, name, 0) != 0 && errno != ENOENT)
            return err_set(err, "%s: cannot remove %s: %s", top, name, strerror(errno));
        return 0;
    }
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return err_set(err, "%s: cannot open %s: %s", top, name, strerror(errno));
    DIR *d = fdopendir(fd);
    if (!d) { close(fd); return err_set(err, "%s: cannot read %s", top, name); }
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        rc = rm_at(fd, e->d_name, top, err);
    }
    closedir(d);
    if (rc != 0) return rc;
    if (unlinkat(dirfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT)
        return err_set(err, "%s: cannot remove directory %s: %s", top, name, strerror(errno));
    return 0;
}

int fs_rm_rf(const char *path, char *err)
{
    return rm_at(AT_FDCWD, path, path, err);
}

int fs_path_join(char *out, size_t cap, const char *a, const char *b)
{
    int n;
    if (b[0] == '/' || a[0] == '\0') n = snprintf(out, cap, "%s", b);
    else if (a[strlen(a) - 1] == '/') n = snprintf(out, cap, "%s%s", a, b);
    else n = snprintf(out, cap, "%s/%s", a, b);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int fs_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int fs_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

int fs_dir_begin(const char *final, char *tmp, size_t cap, char *err)
{
    int n = snprintf(tmp, cap, "%s.tmp-%ld", final, (long)getpid());
    if (n < 0 || (size_t)n >= cap) return err_set(err, "%s: path too long", final);
    if (fs_rm_rf(tmp, err) != 0) return -1;
    return fs_mkdir_p(tmp, err);
}

/* fsync every file and directory under path (directories after their contents). */
static int sync_tree(int dirfd, const char *name, const char *top, char *err)
{
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return err_set(err, "%s: cannot stat %s: %s", top, name, strerror(errno));
    if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) return 0;   /* symlinks etc. */
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return err_set(err, "%s: cannot open %s: %s", top, name, strerror(errno));
    int rc = 0;
    if (S_ISDIR(st.st_mode)) {
        int fd2 = dup(fd);
        DIR *d = fd2 >= 0 ? fdopendir(fd2) : NULL;
        if (!d) {
            if (fd2 >= 0) close(fd2);
            close(fd);
            return err_set(err, "%s: cannot read %s", top, name);
        }
        struct dirent *e;
        while (rc == 0 && (e = readdir(d)) != NULL)
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                rc = sync_tree(fd, e->d_name, top, err);
        closedir(d);
    }
    if (rc == 0 && fsync(fd) != 0 && !(S_ISDIR(st.st_mode) && errno == EINVAL))
        rc = err_set(err, "%s: fsync %s failed: %s", top, name, strerror(errno));
    close(fd);
    return rc;
}

int fs_dir_commit(const char *tmp, const char *final, char *err)
{
    if (!fs_is_dir(tmp)) return err_set(err, "%s: not a directory", tmp);
    if (fs_exists(final)) return err_set(err, "%s: already exists", final);
    if (sync_tree(AT_FDCWD, tmp, tmp, err) != 0) return -1;
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_NOREPLACE) != 0) {
        int e = errno;
        if (e == EEXIST || e == ENOTEMPTY) return err_set(err, "%s: already exists", final);
        if (e != EINVAL && e != ENOSYS)
            return err_set(err, "%s: rename from %s failed: %s", final, tmp, strerror(e));
        /* No RENAME_NOREPLACE on this file system: rename() never replaces a non-empty
         * directory, and we checked above that final did not exist. */
        if (rename(tmp, final) != 0)
            return err_set(err, "%s: rename from %s failed: %s", final, tmp, strerror(errno));
    }
    char dir[PATH_MAX];
    fs_parent_dir(final, dir, sizeof dir);
    return fs_fsync_dir(dir, err);
}

void fs_trim_slashes(char *path)
{
    for (size_t n = strlen(path); n > 1 && path[n - 1] == '/'; n--) path[n - 1] = 0;
}

/* path without trailing slashes; 0 when it has a "." or ".." component (whose levels are not
 * simply its prefixes: nothing is counted or removed then) */
static int plain_path(const char *path, char *d, size_t cap)
{
    snprintf(d, cap, "%s", path);
    fs_trim_slashes(d);
    for (const char *p = d; *p; p++) {
        if (p != d && p[-1] != '/') continue; /* the start of a component */
        size_t len = strcspn(p, "/");
        if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.')) return 0;
    }
    return 1;
}

int fs_missing_levels(const char *path)
{
    char d[4096];
    if (!plain_path(path, d, sizeof d)) return 0;
    int n = 0;
    while (d[0] && !fs_exists(d)) {
        n++;
        char *sl = strrchr(d, '/');
        if (!sl || sl == d) break;
        *sl = 0;
    }
    return n;
}

/* rmdir path and then its parents, n levels in all, stopping at the first that is not empty. */
void fs_remove_levels(char *path, int n)
{
    char d[4096];
    if (!plain_path(path, d, sizeof d)) return;
    snprintf(path, strlen(path) + 1, "%s", d); /* d is never longer */
    for (int i = 0; i < n; i++) {
        if (rmdir(path)) return;
        char *sl = strrchr(path, '/');
        if (!sl || sl == path) return;
        *sl = 0;
    }
}

int fs_stale_pid_name(const char *name, const char *prefix)
{
    size_t n = strlen(prefix);
    if (strncmp(name, prefix, n)) return 0;
    const char *d = name + n;
    if (!d[0] || strlen(d) > 9 || strspn(d, "0123456789") != strlen(d) || d[0] == '0') return 0;
    long pid = strtol(d, NULL, 10);
    return pid != (long)getpid() && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

int fs_remove_stale(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int removed = 0;
    struct dirent *e;
    char p[PATH_MAX];
    while ((e = readdir(d)) != NULL)
        if (fs_stale_pid_name(e->d_name, prefix) && fs_path_join(p, sizeof p, dir, e->d_name) == 0 &&
            fs_rm_rf(p, NULL) == 0)
            removed++;
    closedir(d);
    return removed;
}
