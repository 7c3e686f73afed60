/* shard: HDF5 read/write of the moet data shard (layout in shard.h / DESIGN.md). */
#include "data/shard.h"

#include "common/err.h"
#include "data/chat.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* HDF5 keeps its error-printing switch per thread in thread-safe builds, so every
 * entry point turns it off for the calling thread.  A handle (writer or reader) is
 * used by one thread at a time; different handles may be used concurrently. */
static void quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static const char *const DSET[3] = {"tokens", "loss_mask", "doc_start"};

/* ------------------------------------------------------------------ writer */

struct shard_writer {
    char *path, *tmp;
    int seq_len, token_bytes, vocab_size;
    int with[3];                   /* which of DSET are written */
    hid_t file, dset[3];
    int64_t rows;                  /* rows appended so far (flushed + buffered) */
    int64_t chunk_rows, buffered;  /* rows per HDF5 chunk; rows waiting in buf */
    void *buf[3];                  /* [chunk_rows, seq_len] each, file dtype */
};

static int write_int_attr(hid_t file, const char *name, int64_t v)
{
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a < 0 ? -1 : H5Awrite(a, H5T_NATIVE_INT64, &v);
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return rc < 0 ? -1 : 0;
}

/* Fixed-length, NUL-terminated ASCII (h5py reads it as bytes: b"moet-shard-1").
 * Not variable-length: those live in HDF5's global heap, which has no checksum
 * and whose reader in libhdf5 1.10 crashes or hangs on corrupted bytes (3000
 * byte-flipped files: 4 crashes with variable-length strings, 0 with these). */
static int write_str_attr(hid_t file, const char *name, const char *v)
{
    hid_t ty = H5Tcopy(H5T_C_S1);
    H5Tset_size(ty, strlen(v) + 1);
    H5Tset_strpad(ty, H5T_STR_NULLTERM);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file, name, ty, sp, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a < 0 ? -1 : H5Awrite(a, ty, v);
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(ty);
    return rc < 0 ? -1 : 0;
}

static hid_t file_type(int d, int token_bytes)
{
    if (d > 0) return H5T_STD_U8LE;
    return token_bytes == 2 ? H5T_STD_U16LE : H5T_STD_U32LE;
}

static size_t elem_bytes(int d, int token_bytes) { return d > 0 ? 1 : (size_t)token_bytes; }

static void writer_free(shard_writer *w)
{
    for (int d = 0; d < 3; d++) {
        if (w->dset[d] >= 0) H5Dclose(w->dset[d]);
        free(w->buf[d]);
    }
    if (w->file >= 0) H5Fclose(w->file);
    free(w->path);
    free(w->tmp);
    free(w);
}

int shard_writer_create(shard_writer **out, const char *path, int seq_len, const shard_info *meta,
                        int with_mask, int with_doc_start, char *err)
{
    quiet();
    *out = NULL;
    if (seq_len < 1) return err_set(err, "%s: seq_len must be >= 1, got %d", path, seq_len);
    if (meta->vocab_size < 1) return err_set(err, "%s: vocab_size must be >= 1", path);
    shard_writer *w = calloc(1, sizeof *w);
    if (!w) return err_set(err, "%s: out of memory", path);
    w->file = -1;
    for (int d = 0; d < 3; d++) w->dset[d] = -1;
    w->seq_len = seq_len;
    w->vocab_size = meta->vocab_size;
    w->token_bytes = meta->vocab_size > 65535 ? 4 : 2;
    w->with[0] = 1, w->with[1] = with_mask != 0, w->with[2] = with_doc_start != 0;
    /* ~256 KiB of tokens per chunk: big enough for fast sequential writes, small
     * enough that a shuffled single-row read does not drag megabytes along. */
    int64_t cr = (256 * 1024) / ((int64_t)seq_len * w->token_bytes);
    w->chunk_rows = cr < 1 ? 1 : cr > 1024 ? 1024 : cr;
    if (meta->rows > 0 && meta->rows < w->chunk_rows) w->chunk_rows = meta->rows; /* small shards, small chunks */
    w->path = strdup(path);
    w->tmp = malloc(strlen(path) + 5);
    if (!w->path || !w->tmp) goto oom;
    sprintf(w->tmp, "%s.tmp", path);
    for (int d = 0; d < 3; d++)
        if (w->with[d] && !(w->buf[d] = malloc(w->chunk_rows * seq_len * elem_bytes(d, w->token_bytes))))
            goto oom;

    /* The 1.8+ file format checksums all its metadata, so a corrupted header is
     * reported by libhdf5 instead of being parsed (the 1.6-compatible default
     * crashes on byte flips in the root object header).  h5py reads it. */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS), fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V110);
    H5Pset_obj_track_times(fcpl, 0);  /* the root group's header would hold mtimes */
    errno = 0;
    w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, fcpl, fapl);
    H5Pclose(fapl);
    H5Pclose(fcpl);
    if (w->file < 0) {
        err_set(err, "%s: cannot create (%s)", w->tmp, errno ? strerror(errno) : "HDF5 error");
        writer_free(w);
        return -1;
    }
    hsize_t dims[2] = {0, (hsize_t)seq_len}, maxd[2] = {H5S_UNLIMITED, (hsize_t)seq_len};
    hsize_t chunk[2] = {(hsize_t)w->chunk_rows, (hsize_t)seq_len};
    for (int d = 0; d < 3; d++) {
        if (!w->with[d]) continue;
        hid_t sp = H5Screate_simple(2, dims, maxd), pl = H5Pcreate(H5P_DATASET_CREATE);
        H5Pset_chunk(pl, 2, chunk);
        H5Pset_obj_track_times(pl, 0);  /* no mtimes: same rows, byte-identical file */
        w->dset[d] = H5Dcreate2(w->file, DSET[d], file_type(d, w->token_bytes), sp, H5P_DEFAULT, pl,
                                H5P_DEFAULT);
        H5Pclose(pl);
        H5Sclose(sp);
        if (w->dset[d] < 0) goto h5fail;
    }
    if (write_str_attr(w->file, "format", SHARD_FORMAT) || write_int_attr(w->file, "vocab_size", meta->vocab_size) ||
        write_int_attr(w->file, "bos_id", meta->bos_id) || write_int_attr(w->file, "eos_id", meta->eos_id) ||
        write_str_attr(w->file, "tokenizer_sha256", meta->tokenizer_sha256) ||
        (meta->chat_template[0] && write_str_attr(w->file, "chat_template", meta->chat_template)))
        goto h5fail;
    *out = w;
    return 0;
h5fail:
    err_set(err, "%s: HDF5 could not create the datasets/attributes", w->tmp);
    shard_writer_abort(w);
    return -1;
oom:
    writer_free(w);
    return err_set(err, "%s: out of memory", path);
}

static int writer_flush(shard_writer *w, char *err)
{
    if (w->buffered == 0) return 0;
    int64_t first = w->rows - w->buffered;
    hsize_t size[2] = {(hsize_t)w->rows, (hsize_t)w->seq_len};
    hsize_t start[2] = {(hsize_t)first, 0}, count[2] = {(hsize_t)w->buffered, (hsize_t)w->seq_len};
    for (int d = 0; d < 3; d++) {
        if (!w->with[d]) continue;
        if (H5Dset_extent(w->dset[d], size) < 0) goto fail;
        hid_t fs = H5Dget_space(w->dset[d]), ms = H5Screate_simple(2, count, NULL);
        herr_t rc = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
        if (rc >= 0) rc = H5Dwrite(w->dset[d], file_type(d, w->token_bytes), ms, fs, H5P_DEFAULT, w->buf[d]);
        H5Sclose(ms);
        H5Sclose(fs);
        if (rc < 0) goto fail;
    }
    w->buffered = 0;
    return 0;
fail:
    return err_set(err, "%s: HDF5 write failed at row %lld (disk full?)", w->tmp, (long long)first);
}

int shard_writer_append(shard_writer *w, const int32_t *tokens, const uint8_t *loss_mask,
                        const uint8_t *doc_start, char *err)
{
    quiet();
    int T = w->seq_len;
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= w->vocab_size)
            return err_set(err, "%s: row %lld position %d: token %d outside [0, %d)", w->path,
                           (long long)w->rows, t, tokens[t], w->vocab_size);
    int64_t off = w->buffered * T;
    if (w->token_bytes == 2) {
        uint16_t *dst = (uint16_t *)w->buf[0] + off;
        for (int t = 0; t < T; t++) dst[t] = (uint16_t)tokens[t];
    } else {
        uint32_t *dst = (uint32_t *)w->buf[0] + off;
        for (int t = 0; t < T; t++) dst[t] = (uint32_t)tokens[t];
    }
    const uint8_t *src[3] = {NULL, loss_mask, doc_start};
    for (int d = 1; d < 3; d++) {
        if (!w->with[d]) continue;
        uint8_t *dst = (uint8_t *)w->buf[d] + off;
        for (int t = 0; t < T; t++) dst[t] = src[d][t] != 0;
    }
    w->buffered++;
    w->rows++;
    return w->buffered == w->chunk_rows ? writer_flush(w, err) : 0;
}

int64_t shard_writer_rows(const shard_writer *w) { return w->rows; }

static int fsync_path(const char *path, int flags)
{
    int fd = open(path, flags);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static int writer_finish(shard_writer *w, int durable, char *err)
{
    quiet();
    if (writer_flush(w, err)) {
        shard_writer_abort(w);
        return -1;
    }
    herr_t rc = 0;
    for (int d = 0; d < 3; d++) {
        if (w->dset[d] >= 0 && H5Dclose(w->dset[d]) < 0) rc = -1;
        w->dset[d] = -1;
    }
    if (H5Fclose(w->file) < 0) rc = -1;
    w->file = -1;
    if (rc < 0) {
        err_set(err, "%s: HDF5 could not finish the file (disk full?)", w->tmp);
        shard_writer_abort(w);
        return -1;
    }
    if ((durable && fsync_path(w->tmp, O_RDONLY)) || rename(w->tmp, w->path)) {
        err_set(err, "%s: cannot fsync/rename into place: %s", w->path, strerror(errno));
        shard_writer_abort(w);
        return -1;
    }
    char *dir = durable ? strdup(w->path) : NULL;
    if (dir) fsync_path(dirname(dir), O_RDONLY | O_DIRECTORY);  /* make the rename durable */
    free(dir);
    writer_free(w);
    return 0;
}

int shard_writer_close(shard_writer *w, char *err) { return writer_finish(w, 1, err); }
int shard_writer_close_nosync(shard_writer *w, char *err) { return writer_finish(w, 0, err); }

void shard_writer_abort(shard_writer *w)
{
    if (!w) return;
    quiet();
    for (int d = 0; d < 3; d++) {
        if (w->dset[d] >= 0) H5Dclose(w->dset[d]);
        w->dset[d] = -1;
    }
    if (w->file >= 0) H5Fclose(w->file);
    w->file = -1;
    unlink(w->tmp);
    writer_free(w);
}

/* ------------------------------------------------------------------ reader */

struct shard {
    char *path;
    shard_info info;
    hid_t file, dset[3], space[3], mspace;
    uint32_t *row;  /* [seq_len] scratch for the range check */
    off_t file_size;
    hsize_t chunk[3][2];     /* a chunked dataset's chunk dims; {0, 0}: not chunked */
    int nfilters[3];         /* its filter pipeline's length (0: chunks stored as they are) */
    int64_t checked[3];      /* the chunk row whose chunks read_into last found inside the file */
};

/* Integer attribute of "/", any integer type on disk; -1 if absent or not integer. */
static int read_int_attr(hid_t file, const char *name, int64_t *v)
{
    if (H5Aexists(file, name) <= 0) return -1;
    hid_t a = H5Aopen(file, name, H5P_DEFAULT);
    if (a < 0) return -1;
    hid_t ty = H5Aget_type(a), sp = H5Aget_space(a);
    int ok = H5Tget_class(ty) == H5T_INTEGER && H5Sget_simple_extent_npoints(sp) == 1 &&
             H5Aread(a, H5T_NATIVE_INT64, v) >= 0;
    H5Sclose(sp);
    H5Tclose(ty);
    H5Aclose(a);
    return ok ? 0 : -1;
}

/* String attribute (variable- or fixed-length) into out[cap]; -1 if absent. */
static int read_str_attr(hid_t file, const char *name, char *out, size_t cap)
{
    out[0] = 0;
    if (H5Aexists(file, name) <= 0) return -1;
    hid_t a = H5Aopen(file, name, H5P_DEFAULT);
    if (a < 0) return -1;
    hid_t ty = H5Aget_type(a), sp = H5Aget_space(a);
    int rc = -1;
    if (H5Tget_class(ty) == H5T_STRING && H5Sget_simple_extent_npoints(sp) == 1) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_cset(mt, H5Tget_cset(ty));  /* HDF5 converts no ASCII <-> UTF-8 */
        if (H5Tis_variable_str(ty) > 0) {
            char *s = NULL;
            H5Tset_size(mt, H5T_VARIABLE);
            if (H5Aread(a, mt, &s) >= 0 && s) {
                snprintf(out, cap, "%s", s);
                H5free_memory(s);
                rc = 0;
            }
        } else {
            size_t n = H5Tget_size(ty);
            char *s = n <= 65536 ? calloc(1, n + 1) : NULL; /* a string attribute, not a lying size */
            H5Tset_size(mt, n + 1);  /* room for the terminator */
            if (s && H5Aread(a, mt, s) >= 0) {
                snprintf(out, cap, "%s", s);
                rc = 0;
            }
            free(s);
        }
        H5Tclose(mt);
    }
    H5Sclose(sp);
    H5Tclose(ty);
    H5Aclose(a);
    return rc;
}

/* Opens DSET[d]: unsigned integer of the given byte size(s), 2-D; dims out. */
static int open_dset(shard *s, int d, hsize_t dims[2], char *err)
{
    if (H5Lexists(s->file, DSET[d], H5P_DEFAULT) <= 0)
        return d == 0 ? err_set(err, "%s: no /tokens dataset (not a moet shard?)", s->path) : 1;
    s->dset[d] = H5Dopen2(s->file, DSET[d], H5P_DEFAULT);
    if (s->dset[d] < 0) return err_set(err, "%s: cannot open /%s (corrupt file?)", s->path, DSET[d]);
    hid_t ty = H5Dget_type(s->dset[d]);
    int cls = H5Tget_class(ty), sign = H5Tget_sign(ty);
    size_t size = H5Tget_size(ty);
    H5Tclose(ty);
    int ok_size = d == 0 ? (size == 2 || size == 4) : size == 1;
    if (cls != H5T_INTEGER || sign != H5T_SGN_NONE || !ok_size)
        return err_set(err, "%s: /%s must be %s", s->path, DSET[d], d == 0 ? "uint16 or uint32" : "uint8");
    if (d == 0) s->info.token_bytes = (int)size;
    s->space[d] = H5Dget_space(s->dset[d]);
    if (s->space[d] < 0 || H5Sget_simple_extent_ndims(s->space[d]) != 2)
        return err_set(err, "%s: /%s must be 2-D [rows, seq_len]", s->path, DSET[d]);
    H5Sget_simple_extent_dims(s->space[d], dims, NULL);
    return 0;
}

/* The rows a dataset declares must be stored in the file.  HDF5 reads chunks that were never
 * written (and an unwritten contiguous dataset) as fill values, so a few-KB file can declare
 * 2^40 rows that eval would read for hours and the loader would permute (issue 14).  Refused:
 * a chunked dataset with chunks missing, an unwritten contiguous one, and more data than
 * SHARD_MAX_RATIO times the file's size (deflate, the strongest filter HDF5 has built in,
 * stays under 1032:1). Compact datasets live in the object header and are small. */
#define SHARD_MAX_RATIO 1100.0
static int check_stored(shard *s, int d, const hsize_t dims[2], char *err)
{
    double bytes = (double)dims[0] * (double)dims[1] * (d == 0 ? s->info.token_bytes : 1);
    if (bytes > SHARD_MAX_RATIO * (double)s->file_size + 65536.0)
        return err_set(err, "%s: /%s declares [%llu, %llu] (%.3g bytes) in a file of %lld bytes: rows that are not "
                            "stored (a sparse or forged dataset?)",
                       s->path, DSET[d], (unsigned long long)dims[0], (unsigned long long)dims[1], bytes,
                       (long long)s->file_size);
    hid_t pl = H5Dget_create_plist(s->dset[d]);
    if (pl < 0) return err_set(err, "%s: cannot read the layout of /%s (corrupt file?)", s->path, DSET[d]);
    H5D_layout_t layout = H5Pget_layout(pl);
    hsize_t chunk[2] = {0, 0}, have = 0, want = 0;
    char why[96] = "";
    if (layout == H5D_CHUNKED) {
        hid_t all = H5Dget_space(s->dset[d]); /* selects everything */
        herr_t n = all < 0 ? -1 : H5Dget_num_chunks(s->dset[d], all, &have);
        if (all >= 0) H5Sclose(all);
        if (H5Pget_chunk(pl, 2, chunk) != 2 || !chunk[0] || !chunk[1] || n < 0)
            snprintf(why, sizeof why, "unreadable chunk layout");
        else if (have < (want = ((dims[0] + chunk[0] - 1) / chunk[0]) * ((dims[1] + chunk[1] - 1) / chunk[1])))
            snprintf(why, sizeof why, "%llu of its %llu chunks are written", (unsigned long long)have,
                     (unsigned long long)want);
    } else if (layout == H5D_CONTIGUOUS) {
        if (H5Dget_storage_size(s->dset[d]) < (hsize_t)bytes) snprintf(why, sizeof why, "its data was never written");
    } else if (layout != H5D_COMPACT) {
        snprintf(why, sizeof why, "unknown storage layout");
    }
    s->nfilters[d] = layout == H5D_CHUNKED ? H5Pget_nfilters(pl) : 0;
    H5Pclose(pl);
    s->chunk[d][0] = why[0] ? 0 : chunk[0];
    s->chunk[d][1] = why[0] ? 0 : chunk[1];
    s->checked[d] = -1;
    if (why[0])
        return err_set(err, "%s: /%s declares [%llu, %llu] but %s (a sparse or forged dataset?)", s->path, DSET[d],
                       (unsigned long long)dims[0], (unsigned long long)dims[1], why);
    return 0;
}

int shard_open(shard **out, const char *path, int seq_len, int vocab_size, char *err)
{
    quiet();
    *out = NULL;
    struct stat st;
    if (stat(path, &st)) return err_set(err, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return err_set(err, "%s: not a regular file", path);
    shard *s = calloc(1, sizeof *s);
    if (!s) return err_set(err, "%s: out of memory", path);
    s->file = s->mspace = -1;
    for (int d = 0; d < 3; d++) s->dset[d] = s->space[d] = -1;
    if (!(s->path = strdup(path))) goto oom;

    s->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (s->file < 0) {
        err_set(err, "%s: not a readable HDF5 file (truncated or corrupt?)", path);
        goto fail;
    }
    char fmt[64];
    if (read_str_attr(s->file, "format", fmt, sizeof fmt)) {
        err_set(err, "%s: no 'format' attribute (not a moet shard?)", path);
        goto fail;
    }
    if (strcmp(fmt, SHARD_FORMAT)) {  /* a corrupt attribute may hold any bytes */
        err_set(err, "%s: format is '%s', expected '%s'", path, err_q(fmt, -1), SHARD_FORMAT);
        goto fail;
    }
    int64_t v[3];
    const char *names[3] = {"vocab_size", "bos_id", "eos_id"};
    for (int i = 0; i < 3; i++)
        if (read_int_attr(s->file, names[i], &v[i])) {
            err_set(err, "%s: missing or non-integer attribute '%s'", path, names[i]);
            goto fail;
        }
    if (v[0] < 1 || v[0] > INT32_MAX) {
        err_set(err, "%s: vocab_size %lld is not a valid vocabulary size", path, (long long)v[0]);
        goto fail;
    }
    s->info.vocab_size = (int)v[0];
    s->info.bos_id = v[1] >= 0 && v[1] < v[0] ? (int)v[1] : -1;
    s->info.eos_id = v[2] >= 0 && v[2] < v[0] ? (int)v[2] : -1;
    if (H5Aexists(s->file, "tokenizer_sha256") > 0) {  /* optional; when there, a sha256 in hex */
        char sha[80];
        if (read_str_attr(s->file, "tokenizer_sha256", sha, sizeof sha) ||
            !(sha[0] == 0 || (strlen(sha) == 64 && strspn(sha, "0123456789abcdef") == 64))) {
            err_set(err, "%s: attribute 'tokenizer_sha256' is not a sha256 in hex (64 digits 0-9a-f)", path);
            goto fail;
        }
        snprintf(s->info.tokenizer_sha256, sizeof s->info.tokenizer_sha256, "%s", sha);
    }
    if (H5Aexists(s->file, "chat_template") > 0) {  /* optional; when there, a template name */
        char name[80];
        chat_template tpl;
        if (read_str_attr(s->file, "chat_template", name, sizeof name) || chat_template_parse(name, &tpl, NULL)) {
            err_set(err, "%s: attribute 'chat_template' is not a chat template name (mistral or chatml)", path);
            goto fail;
        }
        snprintf(s->info.chat_template, sizeof s->info.chat_template, "%.15s", name); /* a template name: short */
    }
    if (vocab_size > 0 && s->info.vocab_size > vocab_size) {
        err_set(err, "%s: shard vocab_size %d is larger than the model's %d (other tokenizer?)", path,
                s->info.vocab_size, vocab_size);
        goto fail;
    }

    hsize_t dims[3][2];
    for (int d = 0; d < 3; d++) {
        int rc = open_dset(s, d, dims[d], err);
        if (rc < 0) goto fail;
        if (d == 1) s->info.has_loss_mask = rc == 0;
        if (d == 2) s->info.has_doc_start = rc == 0;
        if (rc == 0 && d > 0 && (dims[d][0] != dims[0][0] || dims[d][1] != dims[0][1])) {
            err_set(err, "%s: /%s is [%llu, %llu] but /tokens is [%llu, %llu]", path, DSET[d],
                    (unsigned long long)dims[d][0], (unsigned long long)dims[d][1],
                    (unsigned long long)dims[0][0], (unsigned long long)dims[0][1]);
            goto fail;
        }
    }
    if (s->info.token_bytes == 2 && s->info.vocab_size > 65536) {
        err_set(err, "%s: vocab_size %d does not fit the uint16 /tokens", path, s->info.vocab_size);
        goto fail;
    }
    if (dims[0][0] == 0 || dims[0][1] == 0 || dims[0][1] > INT32_MAX) {
        err_set(err, "%s: /tokens is empty or malformed ([%llu, %llu])", path, (unsigned long long)dims[0][0],
                (unsigned long long)dims[0][1]);
        goto fail;
    }
    s->file_size = st.st_size;
    for (int d = 0; d < 3; d++)
        if (s->dset[d] >= 0 && check_stored(s, d, dims[0], err)) goto fail;
    s->info.rows = (int64_t)dims[0][0];
    s->info.seq_len = (int)dims[0][1];
    if (seq_len > 0 && s->info.seq_len != seq_len) {
        err_set(err, "%s: rows are %d tokens long, expected seq_len %d", path, s->info.seq_len, seq_len);
        goto fail;
    }
    hsize_t mdims[2] = {1, dims[0][1]};
    s->mspace = H5Screate_simple(2, mdims, NULL);
    if (!(s->row = malloc(sizeof *s->row * s->info.seq_len))) goto oom;
    *out = s;
    return 0;
oom:
    err_set(err, "%s: out of memory", path);
fail:
    shard_close(s);
    return -1;
}

const shard_info *shard_get_info(const shard *s) { return &s->info; }
const char *shard_path(const shard *s) { return s->path; }

/* The chunks holding row i lie inside the file, and one stored as it is (no filter applied)
 * has exactly a chunk's bytes. A chunk's stored size comes from the chunk index, which HDF5
 * trusts: a damaged record claiming 4 GB in a 40 KB file makes H5Dread allocate the 4 GB
 * before it fails, and one claiming 0 bytes for an unfiltered chunk makes it copy past its
 * buffer (both found by make fuzz). Checked once per chunk row. */
static int check_chunks(shard *s, int d, int64_t i, char *err)
{
    const hsize_t *c = s->chunk[d];
    if (!c[0]) return 0;
    int64_t ci = i / (int64_t)c[0];
    if (ci == s->checked[d]) return 0;
    unsigned all = s->nfilters[d] >= 32 ? ~0u : (1u << s->nfilters[d]) - 1;   /* every filter skipped */
    hsize_t raw = c[0] * c[1] * (d == 0 ? (hsize_t)s->info.token_bytes : 1);  /* a chunk's bytes */
    for (hsize_t col = 0; col < (hsize_t)s->info.seq_len; col += c[1]) {
        hsize_t off[2] = {(hsize_t)ci * c[0], col}, size = 0;
        unsigned mask;
        haddr_t addr = HADDR_UNDEF;
        if (H5Dget_chunk_info_by_coord(s->dset[d], off, &mask, &addr, &size) < 0 || addr == HADDR_UNDEF ||
            addr > (haddr_t)s->file_size || size > (hsize_t)s->file_size - addr || !size)
            return err_set(err, "%s: /%s row %lld: its chunk claims %llu bytes at byte %llu of a %lld-byte file "
                                "(truncated or corrupt file?)",
                           s->path, DSET[d], (long long)i, (unsigned long long)size, (unsigned long long)addr,
                           (long long)s->file_size);
        if ((mask & all) == all && size != raw)   /* no filter applied to it */
            return err_set(err, "%s: /%s row %lld: its chunk claims %llu bytes, but unfiltered it must hold %llu "
                                "(corrupt file?)",
                           s->path, DSET[d], (long long)i, (unsigned long long)size, (unsigned long long)raw);
    }
    s->checked[d] = ci;
    return 0;
}

static int read_into(shard *s, int d, int64_t i, hid_t mtype, void *dst, char *err)
{
    if (check_chunks(s, d, i, err)) return -1;
    hsize_t start[2] = {(hsize_t)i, 0}, count[2] = {1, (hsize_t)s->info.seq_len};
    if (H5Sselect_hyperslab(s->space[d], H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        H5Dread(s->dset[d], mtype, s->mspace, s->space[d], H5P_DEFAULT, dst) < 0)
        return err_set(err, "%s: reading /%s row %lld failed (truncated or corrupt file?)", s->path, DSET[d],
                       (long long)i);
    return 0;
}

/* loss_mask and doc_start hold 0 or 1: anything else is a damaged or foreign file. */
static int check_flags(const shard *s, int d, int64_t i, const uint8_t *v, char *err)
{
    for (int t = 0; t < s->info.seq_len; t++)
        if (v[t] > 1)
            return err_set(err, "%s: row %lld position %d: /%s is %u, not 0 or 1 (corrupt shard?)", s->path,
                           (long long)i, t, DSET[d], v[t]);
    return 0;
}

int shard_read_row(shard *s, int64_t i, int32_t *tokens, uint8_t *loss_mask, uint8_t *doc_start, char *err)
{
    quiet();
    int T = s->info.seq_len;
    if (i < 0 || i >= s->info.rows)
        return err_set(err, "%s: row %lld out of range [0, %lld)", s->path, (long long)i, (long long)s->info.rows);
    if (read_into(s, 0, i, H5T_NATIVE_UINT32, s->row, err)) return -1;
    for (int t = 0; t < T; t++) {
        if (s->row[t] >= (uint32_t)s->info.vocab_size)
            return err_set(err, "%s: row %lld position %d: token %u >= vocab_size %d (corrupt shard?)", s->path,
                           (long long)i, t, s->row[t], s->info.vocab_size);
        tokens[t] = (int32_t)s->row[t];
    }
    if (loss_mask) {
        if (!s->info.has_loss_mask) memset(loss_mask, 1, T);
        else if (read_into(s, 1, i, H5T_NATIVE_UINT8, loss_mask, err) || check_flags(s, 1, i, loss_mask, err)) return -1;
    }
    if (doc_start) {
        if (!s->info.has_doc_start) {
            memset(doc_start, 0, T);
            doc_start[0] = 1;
        } else if (read_into(s, 2, i, H5T_NATIVE_UINT8, doc_start, err) || check_flags(s, 2, i, doc_start, err)) {
            return -1;
        }
    }
    return 0;
}

void shard_close(shard *s)
{
    if (!s) return;
    quiet();
    for (int d = 0; d < 3; d++) {
        if (s->space[d] >= 0) H5Sclose(s->space[d]);
        if (s->dset[d] >= 0) H5Dclose(s->dset[d]);
    }
    if (s->mspace >= 0) H5Sclose(s->mspace);
    if (s->file >= 0) H5Fclose(s->file);
    free(s->row);
    free(s->path);
    free(s);
}
