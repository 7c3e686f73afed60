/* hf: HF model directory <-> model. Tensor names are the model table's names. */
#include "checkpoints/hf.h"
#include "common/err.h"
#include "common/fsutil.h"
#include "common/half.h"
#include "model/family.h"
#include "model/lora.h"

#include <math.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ckpt_read_config(const char *dir, model_config *c, char *err)
{
    char path[4096];
    char *text;
    size_t len;
    if (!fs_is_dir(dir)) return err_set(err, "%s: not a model directory", dir);
    fs_path_join(path, sizeof path, dir, "config.json");
    if (fs_read_file(path, &text, &len, err)) return -1;
    int rc = model_config_from_json(c, text, err);
    free(text);
    if (rc) err_wrap(err, "%s", path);
    return rc;
}

static int st_of_model(int dtype) { return dtype == MODEL_BF16 ? ST_BF16 : dtype == MODEL_F16 ? ST_F16 : ST_F32; }

int ckpt_disk_dtype(const char *path, int *dtype, char *err)
{
    st_file *f;
    if (st_open(&f, path, err)) return -1;
    size_t bytes[3] = {0};
    for (int i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        if (t->ndim != 2) continue;
        bytes[t->dtype == ST_BF16 ? 1 : t->dtype == ST_F16 ? 2 : 0] += t->nbytes;
    }
    st_close(f);
    *dtype = bytes[1] >= bytes[0] && bytes[1] >= bytes[2] && bytes[1] ? MODEL_BF16
             : bytes[2] > bytes[0] ? MODEL_F16 : MODEL_F32;
    return 0;
}

/* dst (numel 16-bit values of dtype) from a float tensor of any float dtype, rounded as torch
 * rounds .to(bfloat16 / float16); a non-finite value is an error naming the tensor. */
static int convert_low(const st_tensor *s, uint16_t *dst, int dtype, const char *path, char *err)
{
    const unsigned char *p = s->data;
    for (int64_t i = 0; i < s->numel; i++) {
        float x;
        uint16_t h;
        double d;
        switch (s->dtype) {
        case ST_F32: memcpy(&x, p + 4 * i, 4); break;
        case ST_F64: memcpy(&d, p + 8 * i, 8); x = (float)d; break;
        case ST_BF16: memcpy(&h, p + 2 * i, 2); x = half_bf16_to_f32(h); break;
        case ST_F16: memcpy(&h, p + 2 * i, 2); x = half_f16_to_f32(h); break;
        default: return err_set(err, "%s: tensor '%s' has dtype %s, not a float type", path, s->name,
                                st_dtype_name(s->dtype));
        }
        if (!isfinite(x))
            return err_set(err, "%s: tensor '%s' holds a non-finite value (%g at element %lld)", path, s->name, x,
                           (long long)i);
        dst[i] = dtype == MODEL_BF16 ? half_f32_to_bf16(x) : half_f32_to_f16(x);
    }
    return 0;
}

static void close_mapping(void *f) { st_close(f); }

int ckpt_load_weights(model *m, const char *path, char *err)
{
    st_file *f;
    if (st_open(&f, path, err)) return -1;
    int rc = -1, mapped = 0;
    const st_tensor **src = calloc((size_t)m->tab.n + 1, sizeof *src);
    if (!src) {
        st_close(f);
        return err_set(err, "out of memory");
    }
    for (int i = 0; i < m->tab.n; i++) {
        const model_tensor *t = &m->tab.t[i];
        const st_tensor *s = st_find(f, t->name);
        if (!s) {
            err_set(err, "%s: missing tensor '%s'", path, t->name);
            goto out;
        }
        int ok = s->ndim == t->ndim;
        for (int d = 0; ok && d < t->ndim; d++) ok = s->shape[d] == t->shape[d];
        if (!ok) {
            char want[64], got[64];
            int w = 0, g = 0;
            for (int d = 0; d < t->ndim; d++) w += snprintf(want + w, sizeof want - w, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            for (int d = 0; d < s->ndim && g < 60; d++) g += snprintf(got + g, sizeof got - g, "%s%lld", d ? "," : "", (long long)s->shape[d]);
            want[w] = got[g] = 0;
            err_set(err, "%s: tensor '%s' has shape [%s], the config needs [%s]", path, t->name, got, want);
            goto out;
        }
        if (s->dtype != ST_F32 && s->dtype != ST_BF16 && s->dtype != ST_F16) {
            err_set(err, "%s: tensor '%s' has dtype %s; moet reads F32, BF16 and F16 weights", path, t->name,
                    st_dtype_name(s->dtype));
            goto out;
        }
        src[i] = s;
        if (t->low && (int)s->dtype == st_of_model(m->base_dtype)) { /* zero copy: the mapped bytes themselves */
            if (st_check_finite(s, err)) goto bad_value; /* NaN / Inf: "tensor 'NAME': element I of N is NaN" */
            model_bind(m, i, s->data);
            mapped = 1;
            src[i] = NULL;
        }
    }
    for (int i = 0; i < st_count(f); i++) {
        const char *name = st_at(f, i)->name;
        if (!model_find(m, name) && !(m->c.tie_embeddings && !strcmp(name, "lm_head.weight"))) {
            err_set(err, "%s: unexpected tensor '%s' (not part of this %s config)", path, err_q(name, -1),
                    model_family_get(m->c.family)->model_type);
            goto out;
        }
    }
    if (m->base_dtype != MODEL_F32 && model_alloc_low(m, err)) goto out;
    for (int i = 0; i < m->tab.n; i++) {
        const model_tensor *t = &m->tab.t[i];
        if (!src[i]) continue;
        if (st_check_finite(src[i], err)) goto bad_value; /* checked as it is read: one pass over the file */
        if (t->low) {
            if (convert_low(src[i], (uint16_t *)t->data, m->base_dtype, path, err)) goto out;
            st_release(src[i]);
            continue;
        }
        if (st_read_f32(src[i], m->w + t->offset, (int64_t)t->numel, err)) {
            err_wrap(err, "%s", path); /* the message names the tensor already */
            goto out;
        }
        st_release(src[i]);
    }
    rc = 0;
    goto out;
bad_value:
    err_wrap(err, "%s", path);
out:
    free(src);
    if (!rc && mapped) { /* the model reads from the mapping until model_free */
        m->ext = f;
        m->ext_free = close_mapping;
    } else {
        st_close(f);
    }
    return rc;
}

int ckpt_load_model_as(model *m, const char *dir, int with_grads, int base_dtype, char *err)
{
    model_config c;
    if (ckpt_read_config(dir, &c, err)) return -1;
    if (with_grads || base_dtype == MODEL_F32) {
        if (model_create(m, &c, with_grads, err)) return -1;
    } else {
        if (base_dtype == CKPT_BASE_AUTO && ckpt_disk_dtype(dir, &base_dtype, err)) return -1;
        if (model_create_low(m, &c, base_dtype, err)) return -1;
    }
    if (ckpt_load_weights(m, dir, err)) {
        model_free(m);
        return -1;
    }
    return 0;
}

int ckpt_load_model(model *m, const char *dir, int with_grads, char *err)
{
    return ckpt_load_model_as(m, dir, with_grads, MODEL_F32, err);
}

/* A tensor made while it is written: a 16-bit base widened, plus an adapter's delta. */
typedef struct {
    const model *m;
    const model_tensor *t;
    const lora *lo;  /* NULL: no delta */
    float *scratch;  /* rows of the delta covering one chunk */
} made_tensor;

static void fill_made(const st_out *o, size_t i0, size_t n, float *dst)
{
    const made_tensor *x = o->ctx;
    const model_tensor *t = x->t;
    const unsigned char *src = t->data;
    if (!t->low) memcpy(dst, x->m->w + t->offset + i0, n * sizeof(float));
    else if (x->m->base_dtype == MODEL_BF16) half_widen_bf16(dst, src + 2 * i0, n);
    else half_widen_f16(dst, src + 2 * i0, n);
    if (!x->lo) return;
    size_t in = (size_t)t->shape[1], r0 = i0 / in, r1 = (i0 + n + in - 1) / in;
    if (!lora_delta_rows(x->lo, x->m, t->name, (int)r0, (int)r1, x->scratch)) return;
    const float *d = x->scratch + (i0 - r0 * in);
    for (size_t i = 0; i < n; i++) dst[i] += d[i];
}

/* The weight list of m with lo's adapters folded in (lo NULL: m as it is): fp32 tensors
 * straight from the buffer, 16-bit ones raw when dtype is theirs, the rest made chunk by
 * chunk (fill_made). *ctx: what the list points into (free it after writing). */
static st_out *weight_list(const model *m, const lora *lo, st_dtype dtype, made_tensor **ctx)
{
    size_t maxin = 0;
    for (int i = 0; i < m->tab.n; i++)
        if (m->tab.t[i].ndim == 2 && (size_t)m->tab.t[i].shape[1] > maxin) maxin = (size_t)m->tab.t[i].shape[1];
    st_out *o = calloc((size_t)m->tab.n + 1, sizeof *o);
    made_tensor *x = calloc((size_t)m->tab.n + 1, sizeof *x);
    float *scratch = lo ? malloc(((size_t)65536 + 2 * maxin) * sizeof(float)) : NULL;
    if (!o || !x || (lo && !scratch)) {
        free(o), free(x), free(scratch);
        return NULL;
    }
    for (int i = 0; i < m->tab.n; i++) {
        const model_tensor *t = &m->tab.t[i];
        o[i].name = t->name;
        o[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) o[i].shape[d] = t->shape[d];
        o[i].dtype = dtype;
        const float *router = lo ? lora_router_copy(lo, t->name) : NULL;
        int delta = lo && t->ndim == 2 && lora_delta_rows(lo, m, t->name, 0, 0, NULL);
        if (router) o[i].f32 = router;
        else if (!t->low && !delta) o[i].f32 = m->w + t->offset;
        else if (t->low && !delta && (int)dtype == st_of_model(m->base_dtype)) o[i].raw = t->data;
        else {
            x[i] = (made_tensor){m, t, delta ? lo : NULL, scratch};
            o[i].fill = fill_made;
            o[i].ctx = &x[i];
        }
    }
    x[m->tab.n].scratch = scratch; /* freed with the list */
    *ctx = x;
    return o;
}

static void weight_list_free(st_out *o, made_tensor *x, int n)
{
    if (x) free(x[n].scratch);
    free(x);
    free(o);
}

st_out *ckpt_weight_list(const model *m, st_dtype dtype)
{
    st_out *o = calloc((size_t)m->tab.n, sizeof *o);
    for (int i = 0; o && i < m->tab.n; i++) { /* fp32 stores (checkpoints of trained weights) */
        const model_tensor *t = &m->tab.t[i];
        o[i].name = t->name;
        o[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) o[i].shape[d] = t->shape[d];
        o[i].dtype = dtype;
        o[i].f32 = m->w + t->offset;
    }
    return o;
}

const char *ckpt_dtype_torch_name(st_dtype d)
{
    return d == ST_BF16 ? "bfloat16" : d == ST_F16 ? "float16" : "float32";
}

int ckpt_save_merged(const model *m, const lora *lo, const char *dir, st_dtype dtype, size_t max_shard, char *err)
{
    char path[4096];
    char *cfg = model_config_to_json(&m->c, ckpt_dtype_torch_name(dtype));
    fs_path_join(path, sizeof path, dir, "config.json");
    int rc = fs_write_atomic(path, cfg, strlen(cfg), err);
    free(cfg);
    if (rc) return -1;
    char gen[512];
    int n = snprintf(gen, sizeof gen, "{\n  \"_from_model_config\": true,\n");
    if (m->c.bos_id >= 0) n += snprintf(gen + n, sizeof gen - n, "  \"bos_token_id\": %d,\n", m->c.bos_id);
    if (m->c.eos_id >= 0) n += snprintf(gen + n, sizeof gen - n, "  \"eos_token_id\": %d,\n", m->c.eos_id);
    n += snprintf(gen + n, sizeof gen - n, "  \"transformers_version\": \"5.17.0\"\n}\n");
    fs_path_join(path, sizeof path, dir, "generation_config.json");
    if (fs_write_atomic(path, gen, (size_t)n, err)) return -1;
    made_tensor *ctx = NULL;
    st_out *o = weight_list(m, lo, dtype, &ctx);
    if (!o) return err_set(err, "out of memory");
    rc = st_write_sharded(dir, o, m->tab.n, max_shard ? max_shard : (size_t)-1, NULL, err);
    weight_list_free(o, ctx, m->tab.n);
    return rc;
}

int ckpt_save_model(const model *m, const char *dir, st_dtype dtype, size_t max_shard, char *err)
{
    return ckpt_save_merged(m, NULL, dir, dtype, max_shard, err);
}
