/* fsutil: small file-system helpers, and the one way moet replaces files safely.
 *
 * Crash safety rule of the project: a good file is never replaced by a half-written
 * one.  Files are written to `PATH.tmp.<pid>`, fsynced, renamed over PATH, and the
 * parent directory is fsynced; on any failure (ENOSPC, EFBIG, EIO, ...) the temp is
 * removed and PATH is left as it was.  Whole directories (checkpoints, exports) are
 * built in `DIR.tmp-<pid>` and renamed into place with fs_dir_commit. */
#ifndef MOET_FSUTIL_H
#define MOET_FSUTIL_H

#include <stddef.h>

/* Open a regular file for reading: the fd, its size in *size; -1 with err set ("PATH: cannot
 * open: ...", "PATH: not a regular file") otherwise. */
int fs_open_regular(const char *path, size_t *size, char *err);

/* Read a whole file into a malloc'd buffer with a NUL after the last byte (so text
 * files can be used as C strings).  *len excludes the NUL.  Caller frees *buf. */
int fs_read_file(const char *path, char **buf, size_t *len, char *err);

/* Atomically replace (or create) PATH with len bytes of data; see the rule above. */
int fs_write_atomic(const char *path, const void *data, size_t len, char *err);

/* Streaming form of fs_write_atomic, for files too big to hold in memory:
 *   fs_atomic w; fs_atomic_open(&w, path, err); fs_atomic_write(&w, p, n, err) ...;
 *   fs_atomic_commit(&w, err)        -- or fs_atomic_abort(&w) to drop it.
 * After a failed write or commit the temp is already removed (abort is then a no-op).
 * Files are created with mode 0644 (less the umask). */
typedef struct {
    int  fd;                 /* -1 once committed or aborted */
    char path[4096];
    char tmp[4096 + 32];
} fs_atomic;
int  fs_atomic_open(fs_atomic *w, const char *path, char *err);
int  fs_atomic_write(fs_atomic *w, const void *data, size_t n, char *err);
int  fs_atomic_commit(fs_atomic *w, char *err);
void fs_atomic_abort(fs_atomic *w);

/* mkdir -p (mode 0755); ok if it already exists as a directory. */
int fs_mkdir_p(const char *path, char *err);

/* fsync a directory (makes renames / creations inside it durable). */
int fs_fsync_dir(const char *path, char *err);

/* rm -rf: remove a file or a directory tree; symlinks are removed, never followed.
 * A path that does not exist is not an error. */
int fs_rm_rf(const char *path, char *err);

/* out = a "/" b (no doubled slash; b absolute -> b).  0 ok, -1 if it does not fit in
 * cap bytes (out then holds a truncated, NUL-terminated string). */
int fs_path_join(char *out, size_t cap, const char *a, const char *b);

/* 1 if path is a directory (following symlinks), else 0. */
int fs_is_dir(const char *path);
/* 1 if path exists (any type; a dangling symlink counts), else 0. */
int fs_exists(const char *path);

/* Build a directory atomically:
 *   char tmp[4096]; fs_dir_begin(final, tmp, sizeof tmp, err);  -- creates tmp
 *   ... write files into tmp (plain writes are fine) ...
 *   fs_dir_commit(tmp, final, err);
 * fs_dir_begin makes `FINAL.tmp-<pid>` (removing a stale one of that name) and its
 * parents.  fs_dir_commit fsyncs every file and directory under tmp, renames tmp to
 * final and fsyncs final's parent.  It never replaces: if final already exists it
 * fails with "already exists" and leaves both final and tmp untouched (the caller
 * decides whether to fs_rm_rf the old one first or drop tmp).  After a crash at most
 * a stale `*.tmp-*` directory remains; final is either absent or complete. */
int fs_dir_begin(const char *final, char *tmp, size_t cap, char *err);
int fs_dir_commit(const char *tmp, const char *final, char *err);

/* The directory part of path: "a/b" -> "a", "b" -> ".", "/b" -> "/". */
void fs_parent_dir(const char *path, char *out, size_t cap);
/* Drop trailing slashes in place ("out/" -> "out"; "/" stays). */
void fs_trim_slashes(char *path);

/* How many trailing levels of path do not exist yet ("runs/a/b" with only runs/: 2), and
 * rmdir path then its parents, n levels in all, stopping at the first that is not empty
 * (path is cut short as it goes): a command removes the directories it made for nothing. */
int fs_missing_levels(const char *path);
void fs_remove_levels(char *path, int n);

/* Temp dirs of a killed moet (".prep-<pid>" in prep's OUT, "OUT.tmp-<pid>" of an export):
 * fs_stale_pid_name is 1 when name is prefix followed by the pid of a process that no longer
 * exists (not this one; a live or foreign pid is left alone); fs_remove_stale rm -rf's every
 * such entry of dir and returns how many went. */
int fs_stale_pid_name(const char *name, const char *prefix);
int fs_remove_stale(const char *dir, const char *prefix);

#endif
