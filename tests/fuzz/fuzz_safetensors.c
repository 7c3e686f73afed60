/* fuzz_safetensors: a .safetensors file (8-byte length, JSON header, data) through st_open,
 * then every tensor read as the loaders read it (st_check_finite, st_read_f32 / st_read_i64).
 * An input starting with '{' is a model.safetensors.index.json instead, next to one valid
 * shard "a.safetensors" holding tensors "x" and "y". */
#include "checkpoints/st.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    float v[3] = {1, 2, 3};
    st_out t[2] = {{.name = "x", .ndim = 1, .shape = {2}, .dtype = ST_F32, .f32 = v},
                   {.name = "y", .ndim = 0, .dtype = ST_BF16, .f32 = v + 2}};
    char err[ERR_MAX];
    if (st_write(fuzz_path("a.safetensors"), t, 2, NULL, err)) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[ERR_MAX] = "";
    int index = size > 0 && data[0] == '{';
    const char *path = fuzz_write(index ? "model.safetensors.index.json" : "m.safetensors", data, size);
    st_file *f;
    if (st_open(&f, path, err)) {
        fuzz_check_err(err);
        return 0;
    }
    st_metadata(f, "format");
    for (int i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        if (st_find(f, t->name) != t) abort(); /* names are unique and sorted */
        if (t->numel > (1 << 24)) continue;     /* bounded by the file's size anyway */
        err[0] = 0;
        if (st_check_finite(t, err)) fuzz_check_err(err);
        void *buf = malloc((size_t)t->numel * 8 + 8);
        err[0] = 0;
        int rc = t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 || t->dtype == ST_F64
                     ? st_read_f32(t, buf, t->numel, err)
                     : st_read_i64(t, buf, t->numel, err);
        if (rc) fuzz_check_err(err);
        err[0] = 0;
        if (st_read_f32(t, buf, t->numel + 1, err) != -1) abort(); /* a wrong count is refused */
        fuzz_check_err(err);
        free(buf);
    }
    st_close(f);
    return 0;
}
