/* st: safetensors read (mmap, zero copy) and write (atomic, HF-compatible layout).
 *
 * File format (https://github.com/huggingface/safetensors): 8-byte little-endian
 * header length N, N bytes of UTF-8 JSON {"__metadata__": {str: str}, name:
 * {"dtype", "shape", "data_offsets": [begin, end]}, ...}, then the data area; offsets
 * are relative to the data area, tensors are row-major little-endian, packed with no
 * holes or overlaps, and the last one ends at the end of the file.
 *
 * Reading accepts a .safetensors file, an HF model directory (model.safetensors, else
 * model.safetensors.index.json + shards) or an index json.  Everything the format
 * demands is validated; a bad file gives -1 and one line naming the file.  Tensor data
 * stays in the read-only private mapping until st_close. */
#ifndef MOET_ST_H
#define MOET_ST_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef enum { ST_F32, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8,
               ST_BOOL } st_dtype;

const char *st_dtype_name(st_dtype d);          /* "F32", "BF16", ... */
int  st_dtype_size(st_dtype d);                 /* bytes per element */
int  st_dtype_parse(const char *name, st_dtype *out);   /* 0 ok, -1 unknown */

typedef struct {
    const char *name;
    st_dtype    dtype;
    int         ndim;                  /* 0 for a scalar (shape []) */
    int64_t     shape[ST_MAX_DIMS];
    int64_t     numel;                 /* product of shape; 1 for a scalar */
    size_t      nbytes;                /* numel * st_dtype_size(dtype) */
    const void *data;                  /* into the mapping; not necessarily aligned */
} st_tensor;

typedef struct st_file st_file;

int  st_open(st_file **out, const char *path, char *err);
void st_close(st_file *f);                       /* NULL is fine */

/* Tensors are listed in name order (strcmp); st_find is a binary search. */
int              st_count(const st_file *f);
const st_tensor *st_at(const st_file *f, int i);
const st_tensor *st_find(const st_file *f, const char *name);   /* NULL if absent */

/* A "__metadata__" value, or NULL.  For a sharded model: the first shard's. */
const char *st_metadata(const st_file *f, const char *key);

/* Let go of a tensor's mapped pages once its values are copied out (MADV_DONTNEED on the
 * private read-only mapping): they leave this process's resident set and stay in the page
 * cache; a later read of the tensor maps them in again. Loading a model thus holds the copy
 * and one tensor of the file, not the copy and the whole file. */
void st_release(const st_tensor *t);

/* Copy a float tensor (F32/F16/BF16/F64) into dst as fp32; n must equal numel. */
int st_read_f32(const st_tensor *t, float *dst, int64_t n, char *err);
/* 0 if every value of a float tensor (F32/BF16/F16; F64 also within fp32's range) is finite,
 * else -1 and "tensor 'NAME': element I of N is NaN ..." (the first bad one); other dtypes
 * pass.  Every loader of weights calls it on each tensor it takes (st_check.c). */
int st_check_finite(const st_tensor *t, char *err);
/* Copy an integer/bool tensor (I64/I32/I16/I8/U8/BOOL) into dst as int64. */
int st_read_i64(const st_tensor *t, int64_t *dst, int64_t n, char *err);

/* One tensor to write.  Exactly one of: f32 (fp32 values, converted to dtype, which must
 * be F32, BF16, F16 or F64); raw (numel * st_dtype_size(dtype) bytes written as they are:
 * int64 token ids, masks, already-converted weights); fill (called for consecutive element
 * ranges [i0, i0+n) with n <= 65536, writing fp32 values into dst, converted like f32: a
 * tensor made on the fly, e.g. a bf16 base widened plus a LoRA delta).  ndim 0 = scalar. */
typedef struct st_out {
    const char  *name;
    int          ndim;
    int64_t      shape[ST_MAX_DIMS];
    st_dtype     dtype;                /* on-disk dtype */
    const float *f32;
    const void  *raw;
    void       (*fill)(const struct st_out *o, size_t i0, size_t n, float *dst);
    const void  *ctx;                  /* for fill */
} st_out;

/* Write one .safetensors file atomically (temp + fsync + rename).  meta_kv is NULL or
 * a NULL-terminated list of key, value strings added to "__metadata__" after
 * "format": "pt" (a "format" key replaces the default).  Layout as the safetensors
 * library writes it: tensors ordered by element size (largest first, so every tensor
 * is aligned to its element size), then by name; header padded with spaces so the data
 * starts at a multiple of 8.  Names must be unique and not "__metadata__". */
int st_write(const char *path, const st_out *t, int n, const char *const *meta_kv,
             char *err);

/* Write an HF model's weights into dir (created if needed) as save_pretrained does:
 * tensors are taken in the given order and packed into shards of at most
 * max_shard_bytes (a bigger tensor gets a shard of its own); one shard is written as
 * model.safetensors, more as model-0000i-of-0000n.safetensors plus
 * model.safetensors.index.json {"metadata": {"total_size": N}, "weight_map": {...}}.
 * Weight files of an earlier save that the new set does not use are removed.  Each
 * file is atomic; for all-or-nothing write into a fs_dir_begin directory. */
int st_write_sharded(const char *dir, const st_out *t, int n, size_t max_shard_bytes,
                     const char *const *meta_kv, char *err);

/* Scalar conversions (also used by the GGUF export).  fp32 -> bf16 rounds to nearest
 * even, bit for bit as torch (NaN -> 0x7FC0); fp32 -> f16 rounds to nearest even with
 * subnormals and overflow to inf, bit for bit as numpy (a NaN stays a quiet NaN with
 * its sign and top payload bits).  The other directions are exact. */
uint16_t st_f32_to_bf16(float x);
float    st_bf16_to_f32(uint16_t h);
uint16_t st_f32_to_f16(float x);
float    st_f16_to_f32(uint16_t h);

#endif
