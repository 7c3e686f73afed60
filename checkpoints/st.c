/* st: safetensors reader and writer.
 *
 * Reader: each file is mmapped (read-only, private) whole; the JSON header is copied
 * out and parsed with cJSON, every entry is checked against the format's rules, and
 * st_tensor.data points straight into the mapping.  A sharded model keeps one
 * mapping per shard.  Writer: header built by hand (exact integers, fixed field
 * order), data streamed through fs_atomic so a model larger than memory can be
 * converted and written. */
#include "checkpoints/st.h"
#include "common/err.h"
#include "common/half.h"
#include "common/fsutil.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; moet assumes a little-endian host"
#endif

#define HEADER_MAX 100000000ull          /* the limit the reference implementation uses */
#define EXACT_MAX  9007199254740992.0    /* 2^53: larger JSON numbers are not exact */

/* ---- dtypes and scalar conversions ---------------------------------------------- */

static const struct { const char *name; int size; int rank; } DT[] = {
    /* rank: safetensors' Dtype enum order, used for the on-disk layout order */
    [ST_F32] = { "F32", 4, 15 }, [ST_F16] = { "F16", 2, 11 }, [ST_BF16] = { "BF16", 2, 12 },
    [ST_F64] = { "F64", 8, 16 }, [ST_I64] = { "I64", 8, 17 }, [ST_I32] = { "I32", 4, 13 },
    [ST_I16] = { "I16", 2, 9 },  [ST_I8] = { "I8", 1, 5 },    [ST_U8] = { "U8", 1, 4 },
    [ST_BOOL] = { "BOOL", 1, 0 },
};
#define NDT ((int)(sizeof DT / sizeof DT[0]))

static int dt_ok(st_dtype d) { return (unsigned)d < (unsigned)NDT; }
const char *st_dtype_name(st_dtype d) { return dt_ok(d) ? DT[d].name : "?"; }
int st_dtype_size(st_dtype d) { return dt_ok(d) ? DT[d].size : 0; }
static int is_float(st_dtype d) { return d == ST_F32 || d == ST_F16 || d == ST_BF16 || d == ST_F64; }

int st_dtype_parse(const char *name, st_dtype *out)
{
    for (int i = 0; i < NDT; i++)
        if (!strcmp(name, DT[i].name)) { *out = (st_dtype)i; return 0; }
    return -1;
}

uint16_t st_f32_to_bf16(float x) { return half_f32_to_bf16(x); }
float st_bf16_to_f32(uint16_t h) { return half_bf16_to_f32(h); }
uint16_t st_f32_to_f16(float x) { return half_f32_to_f16(x); }
float st_f16_to_f32(uint16_t h) { return half_f16_to_f32(h); }

/* ---- reader ------------------------------------------------------------------------ */

typedef struct {
    char      *path;
    void      *map;
    size_t     len;
    st_tensor *t;            /* sorted by name; names owned */
    int        n;
    char     **meta;         /* key, value, key, value ... (owned) */
    int        nmeta;
} shard;

struct st_file {
    shard     *sh;
    int        nsh;
    st_tensor *t;            /* the visible tensors, sorted by name (names owned by sh) */
    int        n;
};

static int by_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

/* 1 if s[0..n) is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF). */
static int utf8_ok(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        int k = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
        if (k < 0 || (k == 1 && c < 0xC2) || (k > 0 && i + (size_t)k >= n)) return 0;
        uint32_t cp = k == 0 ? c : c & (0x3F >> k);
        for (int j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        if ((k == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (k == 3 && (cp < 0x10000 || cp > 0x10FFFF))) return 0;
        i += (size_t)k + 1;
    }
    return 1;
}

/* An exact non-negative JSON integer (< 2^53), or -1. */
static int64_t json_uint(const cJSON *v)
{
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= EXACT_MAX) || d != floor(d)) return -1;
    return (int64_t)d;
}

typedef struct { uint64_t begin, end; int i; } span;
static int by_begin(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Parse one tensor entry; data offsets go to *sp (validated by the caller). */
static int parse_entry(const char *path, const char *raw_name, const cJSON *v, st_tensor *t,
                       span *sp, size_t data_len, char *err)
{
    char name[ERR_QUOTE_MAX]; /* the name as messages show it */
    err_quote(name, sizeof name, raw_name, -1, 64);
    if (!cJSON_IsObject(v)) return err_set(err, "%s: tensor '%s': entry is not an object", path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(v, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(v, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(v, "data_offsets");
    if (!cJSON_IsString(dt)) return err_set(err, "%s: tensor '%s': missing \"dtype\"", path, name);
    if (!cJSON_IsArray(sh)) return err_set(err, "%s: tensor '%s': missing \"shape\"", path, name);
    if (!cJSON_IsArray(off)) return err_set(err, "%s: tensor '%s': missing \"data_offsets\"", path, name);
    if (st_dtype_parse(dt->valuestring, &t->dtype) != 0)
        return err_set(err, "%s: tensor '%s': unknown dtype \"%s\"", path, name, err_q(dt->valuestring, -1));
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_MAX_DIMS)
        return err_set(err, "%s: tensor '%s': bad shape (%d dimensions, at most %d supported)",
                       path, name, nd, ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    for (int d = 0; d < nd; d++) {
        const cJSON *x = cJSON_GetArrayItem(sh, d);
        int64_t k = json_uint(x);
        if (k < 0)
            return err_set(err, "%s: tensor '%s': bad shape (dimension %d is not a non-negative integer)",
                           path, name, d);
        t->shape[d] = k;
        if (__builtin_mul_overflow(numel, (uint64_t)k, &numel))
            return err_set(err, "%s: tensor '%s': shape overflows", path, name);
    }
    uint64_t nbytes;
    if (numel > (uint64_t)INT64_MAX ||
        __builtin_mul_overflow(numel, (uint64_t)st_dtype_size(t->dtype), &nbytes) || nbytes > SIZE_MAX)
        return err_set(err, "%s: tensor '%s': shape overflows", path, name);
    int64_t b = cJSON_GetArraySize(off) == 2 ? json_uint(cJSON_GetArrayItem(off, 0)) : -1;
    int64_t e = cJSON_GetArraySize(off) == 2 ? json_uint(cJSON_GetArrayItem(off, 1)) : -1;
    if (b < 0 || e < 0 || b > e)
        return err_set(err, "%s: tensor '%s': data_offsets must be [begin, end] with 0 <= begin <= end",
                       path, name);
    if ((uint64_t)(e - b) != nbytes)
        return err_set(err, "%s: tensor '%s': byte count %lld of data_offsets [%lld, %lld] != %llu "
                       "for %s with %llu elements", path, name, (long long)(e - b), (long long)b,
                       (long long)e, (unsigned long long)nbytes, st_dtype_name(t->dtype),
                       (unsigned long long)numel);
    if ((uint64_t)e > data_len)
        return err_set(err, "%s: tensor '%s': data_offsets [%lld, %lld] outside the data area (%zu bytes)",
                       path, name, (long long)b, (long long)e, data_len);
    t->numel = (int64_t)numel;
    t->nbytes = (size_t)nbytes;
    sp->begin = (uint64_t)b;
    sp->end = (uint64_t)e;
    return 0;
}

static int parse_metadata(shard *s, const cJSON *m, char *err)
{
    if (cJSON_IsNull(m)) return 0;
    if (!cJSON_IsObject(m)) return err_set(err, "%s: __metadata__ is not an object", s->path);
    int n = cJSON_GetArraySize(m);
    s->meta = calloc((size_t)(2 * n + 1), sizeof *s->meta);
    if (!s->meta) return err_set(err, "%s: out of memory", s->path);
    const cJSON *kv;
    cJSON_ArrayForEach(kv, m) {
        if (!cJSON_IsString(kv))
            return err_set(err, "%s: __metadata__ value of '%s' is not a string", s->path, err_q(kv->string, -1));
        s->meta[2 * s->nmeta] = strdup(kv->string);
        s->meta[2 * s->nmeta + 1] = strdup(kv->valuestring);
        s->nmeta++;
        if (!s->meta[2 * s->nmeta - 2] || !s->meta[2 * s->nmeta - 1])
            return err_set(err, "%s: out of memory", s->path);
    }
    return 0;
}

/* Parse and validate the header hdr[0..hlen) (NUL-terminated copy) of shard s. */
static int parse_header(shard *s, const char *hdr, size_t hlen, size_t data_len, char *err)
{
    const char *path = s->path;
    if (!utf8_ok((const unsigned char *)hdr, hlen)) return err_set(err, "%s: header is not valid UTF-8", path);
    if (strlen(hdr) != hlen) return err_set(err, "%s: header contains a NUL byte", path);
    if (hlen == 0 || hdr[0] != '{') return err_set(err, "%s: header is not a JSON object", path);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, hlen, &end, 0);
    if (root)                                    /* after the object: padding only */
        for (const char *p = end; p < hdr + hlen; p++)
            if (!strchr(" \t\r\n", *p)) { cJSON_Delete(root); root = NULL; end = p; break; }
    if (!root)
        return err_set(err, "%s: header is not valid JSON (at byte %td of %zu)", path,
                       end ? end - hdr : (ptrdiff_t)0, hlen);
    int rc = 0, nt = 0, nmeta = 0;
    span *sp = NULL;
    const cJSON *v;
    cJSON_ArrayForEach(v, root) nt += strcmp(v->string, "__metadata__") != 0;
    s->t = calloc((size_t)nt + 1, sizeof *s->t);
    sp = calloc((size_t)nt + 1, sizeof *sp);
    if (!s->t || !sp) { rc = err_set(err, "%s: out of memory", path); goto done; }
    cJSON_ArrayForEach(v, root) {
        if (!strcmp(v->string, "__metadata__")) {
            if (nmeta++) { rc = err_set(err, "%s: duplicate __metadata__", path); goto done; }
            if ((rc = parse_metadata(s, v, err)) != 0) goto done;
            continue;
        }
        st_tensor *t = &s->t[s->n];
        if ((rc = parse_entry(path, v->string, v, t, &sp[s->n], data_len, err)) != 0) goto done;
        if (!(t->name = strdup(v->string))) { rc = err_set(err, "%s: out of memory", path); goto done; }
        sp[s->n].i = s->n;
        s->n++;
    }
    /* Contiguity: sorted by begin, each tensor starts where the previous ended, the
     * first at 0 and the last ends at the end of the file. */
    qsort(sp, (size_t)s->n, sizeof *sp, by_begin);
    uint64_t at = 0;
    for (int k = 0; k < s->n; k++) {
        const char *nm = s->t[sp[k].i].name;
        if (sp[k].begin < at) {
            rc = err_set(err, "%s: tensors '%s' and '%s' overlap (data_offsets [%llu, %llu])", path,
                         err_q(s->t[sp[k - 1].i].name, -1), err_q(nm, -1), (unsigned long long)sp[k].begin,
                         (unsigned long long)sp[k].end);
            goto done;
        }
        if (sp[k].begin > at) {
            rc = err_set(err, "%s: hole of %llu bytes before tensor '%s' (data must be contiguous)",
                         path, (unsigned long long)(sp[k].begin - at), err_q(nm, -1));
            goto done;
        }
        s->t[sp[k].i].data = (const char *)s->map + 8 + hlen + sp[k].begin;
        at = sp[k].end;
    }
    if (at != data_len) {
        rc = err_set(err, "%s: %llu bytes after the last tensor (the data must end at the end of the file)",
                     path, (unsigned long long)(data_len - at));
        goto done;
    }
    qsort(s->t, (size_t)s->n, sizeof *s->t, by_name);
    for (int i = 1; i < s->n; i++)
        if (!strcmp(s->t[i - 1].name, s->t[i].name)) {
            rc = err_set(err, "%s: duplicate tensor name '%s'", path, err_q(s->t[i].name, -1));
            goto done;
        }
done:
    free(sp);
    cJSON_Delete(root);
    return rc;
}

static void shard_free(shard *s)
{
    for (int i = 0; i < s->n; i++) free((char *)s->t[i].name);
    free(s->t);
    for (int i = 0; i < 2 * s->nmeta; i++) free(s->meta[i]);
    free(s->meta);
    if (s->map) munmap(s->map, s->len);
    free(s->path);
}

static int shard_load(shard *s, const char *path, char *err)
{
    memset(s, 0, sizeof *s);
    if (!(s->path = strdup(path))) return err_set(err, "%s: out of memory", path);
    int fd = fs_open_regular(path, &s->len, err);
    if (fd < 0) return -1;
    if (s->len < 8) {
        close(fd);
        return err_set(err, "%s: file is too short for safetensors (%zu bytes, need at least 8)", path, s->len);
    }
    void *map = mmap(NULL, s->len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return err_set(err, "%s: mmap failed: %s", path, strerror(errno));
    s->map = map;
    uint64_t hlen;
    memcpy(&hlen, map, 8);
    if (hlen > HEADER_MAX)
        return err_set(err, "%s: header length %llu is over the %llu-byte limit (not a safetensors file?)",
                       path, (unsigned long long)hlen, HEADER_MAX);
    if (hlen > s->len - 8)
        return err_set(err, "%s: header length %llu runs past the end of the file (%zu bytes)", path,
                       (unsigned long long)hlen, s->len);
    char *hdr = malloc(hlen + 1);
    if (!hdr) return err_set(err, "%s: out of memory", path);
    memcpy(hdr, (const char *)map + 8, hlen);
    hdr[hlen] = '\0';
    int rc = parse_header(s, hdr, hlen, s->len - 8 - hlen, err);
    free(hdr);
    return rc;
}

/* Sort f's visible tensors by name; names must be unique. */
static int sort_unique(st_file *f, const char *path, char *err)
{
    qsort(f->t, (size_t)f->n, sizeof *f->t, by_name);
    for (int i = 1; i < f->n; i++)
        if (!strcmp(f->t[i - 1].name, f->t[i].name))
            return err_set(err, "%s: duplicate tensor name '%s'", path, err_q(f->t[i].name, -1));
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int shard_find(const shard *s, const char *name)
{
    st_tensor key = { .name = name };
    const st_tensor *t = bsearch(&key, s->t, (size_t)s->n, sizeof *s->t, by_name);
    return t ? (int)(t - s->t) : -1;
}

/* A shard name from an index must stay inside the model directory. */
static int shard_name_ok(const char *s)
{
    if (!s[0] || s[0] == '/') return 0;
    for (const char *c = s; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) return 0; /* it ends up in paths and messages */
    for (const char *p = s; (p = strstr(p, "..")) != NULL; p += 2)
        if ((p == s || p[-1] == '/') && (p[2] == '\0' || p[2] == '/')) return 0;
    return 1;
}

static int index_load(st_file *f, const char *path, char *err)
{
    char *text;
    size_t len;
    if (fs_read_file(path, &text, &len, err) != 0) return -1;
    cJSON *root = cJSON_ParseWithLength(text, len + 1);
    free(text);
    int rc = 0;
    const char **names = NULL;                   /* the distinct shard file names, sorted */
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!root || !cJSON_IsObject(root)) { rc = err_set(err, "%s: index is not a JSON object", path); goto done; }
    if (!cJSON_IsObject(wm)) { rc = err_set(err, "%s: index has no \"weight_map\" object", path); goto done; }
    int n = cJSON_GetArraySize(wm), nu = 0;
    names = calloc((size_t)n + 1, sizeof *names);
    f->t = calloc((size_t)n + 1, sizeof *f->t);
    if (!names || !f->t) { rc = err_set(err, "%s: out of memory", path); goto done; }
    const cJSON *v;
    cJSON_ArrayForEach(v, wm) {
        if (!cJSON_IsString(v) || !shard_name_ok(v->valuestring)) {
            rc = err_set(err, "%s: weight_map entry '%s' does not name a shard file", path, err_q(v->string, -1));
            goto done;
        }
        names[nu++] = v->valuestring;
    }
    qsort(names, (size_t)nu, sizeof *names, cmp_str);
    int k = 0;
    for (int i = 0; i < nu; i++)
        if (k == 0 || strcmp(names[k - 1], names[i])) names[k++] = names[i];
    nu = k;
    f->sh = calloc((size_t)nu + 1, sizeof *f->sh);
    if (!f->sh) { rc = err_set(err, "%s: out of memory", path); goto done; }
    char dir[PATH_MAX], sp[PATH_MAX];                /* shards live beside the index */
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    for (int i = 0; i < nu; i++) {
        if (fs_path_join(sp, sizeof sp, dir, names[i]) != 0) {
            rc = err_set(err, "%s: shard path too long", path);
            goto done;
        }
        if (!fs_exists(sp)) {
            rc = err_set(err, "%s: shard '%s' named by the index is missing", path, err_q(names[i], -1));
            goto done;
        }
        f->nsh++;
        if ((rc = shard_load(&f->sh[i], sp, err)) != 0) goto done;
    }
    cJSON_ArrayForEach(v, wm) {
        const char **hit = bsearch(&v->valuestring, names, (size_t)nu, sizeof *names, cmp_str);
        const shard *s = &f->sh[hit - names];
        int j = shard_find(s, v->string);
        if (j < 0) {
            rc = err_set(err, "%s: tensor '%s' is listed in the index but absent from shard '%s'",
                         path, err_q(v->string, -1), err_q(v->valuestring, -1));
            goto done;
        }
        f->t[f->n++] = s->t[j];
    }
    rc = sort_unique(f, path, err);
done:
    free(names);
    cJSON_Delete(root);
    return rc;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static int single_load(st_file *f, const char *path, char *err)
{
    f->sh = calloc(1, sizeof *f->sh);
    if (!f->sh) return err_set(err, "%s: out of memory", path);
    f->nsh = 1;
    if (shard_load(&f->sh[0], path, err) != 0) return -1;
    f->n = f->sh[0].n;
    f->t = calloc((size_t)f->n + 1, sizeof *f->t);
    if (!f->t) return err_set(err, "%s: out of memory", path);
    memcpy(f->t, f->sh[0].t, (size_t)f->n * sizeof *f->t);
    return 0;
}

int st_open(st_file **out, const char *path, char *err)
{
    *out = NULL;
    st_file *f = calloc(1, sizeof *f);
    if (!f) return err_set(err, "%s: out of memory", path);
    char p[PATH_MAX];
    int rc;
    if (fs_is_dir(path)) {
        if (fs_path_join(p, sizeof p, path, "model.safetensors") == 0 && fs_exists(p))
            rc = single_load(f, p, err);
        else if (fs_path_join(p, sizeof p, path, "model.safetensors.index.json") == 0 && fs_exists(p))
            rc = index_load(f, p, err);
        else
            rc = err_set(err, "%s: no model.safetensors or model.safetensors.index.json in directory", path);
    } else if (ends_with(path, ".json")) {
        rc = index_load(f, path, err);
    } else {
        rc = single_load(f, path, err);
    }
    if (rc != 0) { st_close(f); return -1; }
    *out = f;
    return 0;
}

void st_close(st_file *f)
{
    if (!f) return;
    for (int i = 0; i < f->nsh; i++) shard_free(&f->sh[i]);
    free(f->sh);
    free(f->t);
    free(f);
}

int st_count(const st_file *f) { return f->n; }
const st_tensor *st_at(const st_file *f, int i) { return i >= 0 && i < f->n ? &f->t[i] : NULL; }

const st_tensor *st_find(const st_file *f, const char *name)
{
    st_tensor key = { .name = name };
    return bsearch(&key, f->t, (size_t)f->n, sizeof *f->t, by_name);
}

const char *st_metadata(const st_file *f, const char *key)
{
    if (f->nsh == 0) return NULL;
    const shard *s = &f->sh[0];
    for (int i = 0; i < s->nmeta; i++)
        if (!strcmp(s->meta[2 * i], key)) return s->meta[2 * i + 1];
    return NULL;
}

void st_release(const st_tensor *t)
{
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)t->data, b = a + t->nbytes;
    a = (a + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1); /* whole pages inside the tensor only */
    b &= ~((uintptr_t)pg - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

int st_read_f32(const st_tensor *t, float *dst, int64_t n, char *err)
{
    if (n != t->numel)
        return err_set(err, "tensor '%s': asked for %lld values, it has %lld", err_q(t->name, -1), (long long)n,
                       (long long)t->numel);
    if (!is_float(t->dtype))
        return err_set(err, "tensor '%s': dtype %s is not a float type", err_q(t->name, -1),
                       st_dtype_name(t->dtype));
    const unsigned char *p = t->data;
    if (t->dtype == ST_F32) { memcpy(dst, p, (size_t)n * 4); return 0; }
    #pragma omp parallel for schedule(static) if (n > (1 << 20))
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        double d;
        switch (t->dtype) {
        case ST_F16:  memcpy(&h, p + 2 * i, 2); dst[i] = st_f16_to_f32(h); break;
        case ST_BF16: memcpy(&h, p + 2 * i, 2); dst[i] = st_bf16_to_f32(h); break;
        default:      memcpy(&d, p + 8 * i, 8); dst[i] = (float)d; break;
        }
    }
    return 0;
}

int st_read_i64(const st_tensor *t, int64_t *dst, int64_t n, char *err)
{
    if (n != t->numel)
        return err_set(err, "tensor '%s': asked for %lld values, it has %lld", err_q(t->name, -1), (long long)n,
                       (long long)t->numel);
    const unsigned char *p = t->data;
    for (int64_t i = 0; i < n; i++) {
        int32_t i32;
        int16_t i16;
        switch (t->dtype) {
        case ST_I64:  memcpy(&dst[i], p + 8 * i, 8); break;
        case ST_I32:  memcpy(&i32, p + 4 * i, 4); dst[i] = i32; break;
        case ST_I16:  memcpy(&i16, p + 2 * i, 2); dst[i] = i16; break;
        case ST_I8:   dst[i] = (int8_t)p[i]; break;
        case ST_U8:   dst[i] = p[i]; break;
        case ST_BOOL: dst[i] = p[i] != 0; break;
        default:
            return err_set(err, "tensor '%s': dtype %s is not an integer type", err_q(t->name, -1),
                           st_dtype_name(t->dtype));
        }
    }
    return 0;
}

/* ---- writer ------------------------------------------------------------------------ */

typedef struct { char *p; size_t n, cap; int oom; } sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = 2 * (b->n + n + 1) + 256;
        char *q = realloc(b->p, cap);
        if (!q) { b->oom = 1; return; }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A JSON string literal (UTF-8 passed through; quotes, backslashes, controls escaped). */
static void sb_str(sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { char e[2] = { '\\', (char)c }; sb_put(b, e, 2); }
        else if (c < 0x20) sb_printf(b, "\\u%04x", c);
        else sb_put(b, s, 1);
    }
    sb_put(b, "\"", 1);
}

/* Validate one output tensor; *nbytes = its size on disk. */
static int out_check(const st_out *o, size_t *nbytes, char *err)
{
    if (!o->name || !o->name[0]) return err_set(err, "tensor with an empty name");
    if (!utf8_ok((const unsigned char *)o->name, strlen(o->name)))
        return err_set(err, "tensor name '%s' is not valid UTF-8", err_q(o->name, -1));
    if (!strcmp(o->name, "__metadata__")) return err_set(err, "tensor name '__metadata__' is reserved");
    if (!dt_ok(o->dtype)) return err_set(err, "tensor '%s': bad dtype %d", o->name, (int)o->dtype);
    if (o->ndim < 0 || o->ndim > ST_MAX_DIMS)
        return err_set(err, "tensor '%s': bad ndim %d", o->name, o->ndim);
    if (!!o->f32 + !!o->raw + !!o->fill != 1)
        return err_set(err, "tensor '%s': give exactly one of f32, raw and fill", o->name);
    if ((o->f32 || o->fill) && !is_float(o->dtype))
        return err_set(err, "tensor '%s': cannot convert fp32 to %s", o->name, st_dtype_name(o->dtype));
    uint64_t numel = 1, nb;
    for (int d = 0; d < o->ndim; d++)
        if (o->shape[d] < 0 || o->shape[d] > (int64_t)EXACT_MAX ||
            __builtin_mul_overflow(numel, (uint64_t)o->shape[d], &numel))
            return err_set(err, "tensor '%s': bad shape", o->name);
    if (__builtin_mul_overflow(numel, (uint64_t)st_dtype_size(o->dtype), &nb) || nb > (uint64_t)EXACT_MAX)
        return err_set(err, "tensor '%s': bad shape (too big)", o->name);
    *nbytes = (size_t)nb;
    return 0;
}

/* qsort_r comparators over indices into an st_out array. */
static int by_out_name(const void *a, const void *b, void *ctx)
{
    const st_out *t = ctx;
    return strcmp(t[*(const int *)a].name, t[*(const int *)b].name);
}

/* Layout order as the safetensors library: larger element type first, then by name. */
static int by_layout(const void *a, const void *b, void *ctx)
{
    const st_out *x = &((const st_out *)ctx)[*(const int *)a], *y = &((const st_out *)ctx)[*(const int *)b];
    if (DT[x->dtype].rank != DT[y->dtype].rank) return DT[y->dtype].rank - DT[x->dtype].rank;
    return strcmp(x->name, y->name);
}

/* Stream one tensor's bytes (converting fp32 sources in chunks) into w. */
static int write_data(fs_atomic *w, const st_out *o, size_t nbytes, char *err)
{
    if (o->raw) return fs_atomic_write(w, o->raw, nbytes, err);
    if (o->f32 && o->dtype == ST_F32) return fs_atomic_write(w, o->f32, nbytes, err);
    enum { CHUNK = 1 << 16 };
    size_t numel = nbytes / (size_t)st_dtype_size(o->dtype);
    unsigned char *buf = malloc((size_t)CHUNK * 8);
    float *made = o->fill ? malloc((size_t)CHUNK * sizeof(float)) : NULL;
    if (!buf || (o->fill && !made)) { free(buf); free(made); fs_atomic_abort(w); return err_set(err, "%s: out of memory", w->path); }
    for (size_t i0 = 0; i0 < numel; i0 += CHUNK) {
        size_t m = numel - i0 < CHUNK ? numel - i0 : CHUNK;
        const float *x0 = o->f32 ? o->f32 + i0 : made;
        if (o->fill) o->fill(o, i0, m, made);
        if (o->dtype == ST_F32) {
            if (fs_atomic_write(w, x0, m * sizeof(float), err) != 0) { free(buf); free(made); return -1; }
            continue;
        }
        for (size_t i = 0; i < m; i++) {
            float x = x0[i];
            if (o->dtype == ST_F64) { double d = x; memcpy(buf + 8 * i, &d, 8); continue; }
            uint16_t h = o->dtype == ST_BF16 ? st_f32_to_bf16(x) : st_f32_to_f16(x);
            memcpy(buf + 2 * i, &h, 2);
        }
        if (fs_atomic_write(w, buf, m * (size_t)st_dtype_size(o->dtype), err) != 0) { free(buf); free(made); return -1; }
    }
    free(buf);
    free(made);
    return 0;
}

int st_write(const char *path, const st_out *t, int n, const char *const *meta_kv, char *err)
{
    int rc = -1;
    size_t *nb = calloc((size_t)n + 1, sizeof *nb);
    int *order = calloc((size_t)n + 1, sizeof *order);
    sbuf h = { 0 };
    if (!nb || !order) { err_set(err, "%s: out of memory", path); goto done; }
    for (int i = 0; i < n; i++) {
        if (out_check(&t[i], &nb[i], err) != 0) { err_wrap(err, "%s", path); goto done; }
        order[i] = i;
    }
    qsort_r(order, (size_t)n, sizeof *order, by_out_name, (void *)t);
    for (int i = 1; i < n; i++)
        if (!strcmp(t[order[i - 1]].name, t[order[i]].name)) {
            err_set(err, "%s: duplicate tensor name '%s'", path, t[order[i]].name);
            goto done;
        }
    qsort_r(order, (size_t)n, sizeof *order, by_layout, (void *)t);

    /* Header: metadata first, then tensors in layout order, padded to 8 bytes. */
    const char *format = "pt";
    for (const char *const *m = meta_kv; m && m[0] && m[1]; m += 2)
        if (!strcmp(m[0], "format")) format = m[1];
    sb_put(&h, "{\"__metadata__\":{\"format\":", 26);
    sb_str(&h, format);
    for (const char *const *m = meta_kv; m && m[0] && m[1]; m += 2) {
        if (!strcmp(m[0], "format")) continue;
        sb_put(&h, ",", 1);
        sb_str(&h, m[0]);
        sb_put(&h, ":", 1);
        sb_str(&h, m[1]);
    }
    sb_put(&h, "}", 1);
    size_t off = 0;
    for (int k = 0; k < n; k++) {
        const st_out *o = &t[order[k]];
        sb_put(&h, ",", 1);
        sb_str(&h, o->name);
        sb_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(o->dtype));
        for (int d = 0; d < o->ndim; d++) sb_printf(&h, "%s%lld", d ? "," : "", (long long)o->shape[d]);
        sb_printf(&h, "],\"data_offsets\":[%zu,%zu]}", off, off + nb[order[k]]);
        off += nb[order[k]];
    }
    sb_put(&h, "}", 1);
    while (!h.oom && h.n % 8) sb_put(&h, " ", 1);
    if (h.oom) { err_set(err, "%s: out of memory", path); goto done; }
    if (h.n > HEADER_MAX) { err_set(err, "%s: header would be %zu bytes (too many tensors)", path, h.n); goto done; }

    fs_atomic w;
    if (fs_atomic_open(&w, path, err) != 0) goto done;
    uint64_t hlen = h.n;
    if (fs_atomic_write(&w, &hlen, 8, err) != 0 || fs_atomic_write(&w, h.p, h.n, err) != 0) goto done;
    for (int k = 0; k < n; k++)
        if (write_data(&w, &t[order[k]], nb[order[k]], err) != 0) goto done;
    rc = fs_atomic_commit(&w, err);
done:
    free(h.p);
    free(order);
    free(nb);
    return rc;
}

/* 1 if name is a weight file an HF save in this directory may have written. */
static int is_weight_file(const char *name)
{
    unsigned a, b;
    int end = 0;
    if (!strcmp(name, "model.safetensors") || !strcmp(name, "model.safetensors.index.json")) return 1;
    return sscanf(name, "model-%5u-of-%5u.safetensors%n", &a, &b, &end) == 2 &&
           end == (int)strlen(name);
}

/* Remove weight files in dir that are not among keep[0..nkeep). */
static int remove_stale(const char *dir, char **keep, int nkeep, char *err)
{
    DIR *d = opendir(dir);
    if (!d) return err_set(err, "%s: cannot list: %s", dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    char p[PATH_MAX];
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (!is_weight_file(e->d_name)) continue;
        int kept = 0;
        for (int i = 0; i < nkeep && !kept; i++) kept = !strcmp(keep[i], e->d_name);
        if (kept) continue;
        if (fs_path_join(p, sizeof p, dir, e->d_name) != 0 || unlink(p) != 0)
            rc = err_set(err, "%s: cannot remove stale %s", dir, e->d_name);
    }
    closedir(d);
    return rc;
}

int st_write_sharded(const char *dir, const st_out *t, int n, size_t max_shard_bytes,
                     const char *const *meta_kv, char *err)
{
    int rc = -1, nsh = 0;
    size_t total = 0, cur = 0;      /* cur: bytes in the open shard */
    int *shard_of = calloc((size_t)n + 1, sizeof *shard_of);
    st_out *sub = calloc((size_t)n + 1, sizeof *sub);
    char **files = NULL;
    sbuf ix = { 0 };
    if (!shard_of || !sub) { err_set(err, "%s: out of memory", dir); goto done; }
    if (fs_mkdir_p(dir, err) != 0) goto done;
    /* huggingface_hub's split_state_dict_into_shards: a tensor over the limit is a
     * shard of its own, numbered at once; otherwise the open shard is closed (and
     * numbered) when the tensor would tip it over the limit. */
    int first_open = 0;                          /* open-shard members have shard_of -1 */
    for (int i = 0; i < n; i++) {
        size_t nb;
        if (out_check(&t[i], &nb, err) != 0) { err_wrap(err, "%s", dir); goto done; }
        total += nb;
        shard_of[i] = -1;
        if (nb > max_shard_bytes) { shard_of[i] = nsh++; continue; }
        if (cur + nb > max_shard_bytes) {          /* cur > 0 here: nb <= max */
            for (int j = first_open; j < i; j++) if (shard_of[j] < 0) shard_of[j] = nsh;
            nsh++;
            first_open = i;
            cur = 0;
        }
        cur += nb;
    }
    int pending = 0;
    for (int j = first_open; j < n; j++) if (shard_of[j] < 0) { shard_of[j] = nsh; pending = 1; }
    nsh += pending;
    if (nsh == 0) nsh = 1;                       /* no tensors: one empty file */
    files = calloc((size_t)nsh + 1, sizeof *files);   /* + the index, kept too */
    if (!files) { err_set(err, "%s: out of memory", dir); goto done; }
    for (int s = 0; s < nsh; s++) {
        char name[64];
        if (nsh == 1) snprintf(name, sizeof name, "model.safetensors");
        else snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, nsh);
        if (!(files[s] = strdup(name))) { err_set(err, "%s: out of memory", dir); goto done; }
    }
    char p[PATH_MAX];
    for (int s = 0; s < nsh; s++) {
        int m = 0;
        for (int i = 0; i < n; i++)
            if (shard_of[i] == s) sub[m++] = t[i];
        if (fs_path_join(p, sizeof p, dir, files[s]) != 0) { err_set(err, "%s: path too long", dir); goto done; }
        if (st_write(p, sub, m, meta_kv, err) != 0) goto done;
    }
    if (nsh > 1) {                               /* json.dumps(index, indent=2, sort_keys=True) */
        int *order = calloc((size_t)n + 1, sizeof *order);
        if (!order) { err_set(err, "%s: out of memory", dir); goto done; }
        for (int i = 0; i < n; i++) order[i] = i;
        qsort_r(order, (size_t)n, sizeof *order, by_out_name, (void *)t);
        sb_printf(&ix, "{\n  \"metadata\": {\n    \"total_size\": %zu\n  },\n  \"weight_map\": {\n", total);
        for (int k = 0; k < n; k++) {
            sb_put(&ix, "    ", 4);
            sb_str(&ix, t[order[k]].name);
            sb_put(&ix, ": ", 2);
            sb_str(&ix, files[shard_of[order[k]]]);
            sb_put(&ix, k + 1 < n ? ",\n" : "\n", k + 1 < n ? 2 : 1);
        }
        sb_put(&ix, "  }\n}\n", 6);
        free(order);
        if (ix.oom) { err_set(err, "%s: out of memory", dir); goto done; }
        if (fs_path_join(p, sizeof p, dir, "model.safetensors.index.json") != 0 ||
            fs_write_atomic(p, ix.p, ix.n, err) != 0) goto done;
        if (!(files[nsh] = strdup("model.safetensors.index.json"))) { err_set(err, "%s: out of memory", dir); goto done; }
    }
    rc = remove_stale(dir, files, nsh + (files[nsh] != NULL), err);
done:
    for (int s = 0; files && s <= nsh; s++) free(files[s]);
    free(files);
    free(ix.p);
    free(sub);
    free(shard_of);
    return rc;
}
