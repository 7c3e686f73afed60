/* hf: HF model directory <-> model. Tensor names are the model table's names. */
#include "checkpoints/hf.h"
#include "common/err.h"
#include "common/fsutil.h"

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

int ckpt_load_weights(model *m, const char *path, char *err)
{
    st_file *f;
    if (st_open(&f, path, err)) return -1;
    int rc = -1;
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
        if (st_read_f32(s, m->w + t->offset, (int64_t)t->numel, err)) {
            err_wrap(err, "%s: tensor '%s'", path, t->name);
            goto out;
        }
    }
    for (int i = 0; i < st_count(f); i++) {
        const char *name = st_at(f, i)->name;
        if (!model_find(m, name) && !(m->c.tie_embeddings && !strcmp(name, "lm_head.weight"))) {
            err_set(err, "%s: unexpected tensor '%s' (not part of this Mixtral config)", path, name);
            goto out;
        }
    }
    rc = 0;
out:
    st_close(f);
    return rc;
}

int ckpt_load_model(model *m, const char *dir, int with_grads, char *err)
{
    model_config c;
    if (ckpt_read_config(dir, &c, err)) return -1;
    if (model_create(m, &c, with_grads, err)) return -1;
    if (ckpt_load_weights(m, dir, err)) {
        model_free(m);
        return -1;
    }
    return 0;
}

st_out *ckpt_weight_list(const model *m, st_dtype dtype)
{
    st_out *o = calloc((size_t)m->tab.n, sizeof *o);
    for (int i = 0; o && i < m->tab.n; i++) {
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

int ckpt_save_model(const model *m, const char *dir, st_dtype dtype, size_t max_shard, char *err)
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
    st_out *o = ckpt_weight_list(m, dtype);
    if (!o) return err_set(err, "out of memory");
    rc = st_write_sharded(dir, o, m->tab.n, max_shard ? max_shard : (size_t)-1, NULL, err);
    free(o);
    return rc;
}
