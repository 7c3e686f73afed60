/* gguf: placeholder until the GGUF writer lands (branch gguf). */
#include "checkpoints/gguf.h"
#include "common/err.h"

int gguf_write_model(const char *path, const model *m, const tok *t, st_dtype dtype, const char *name, char *err)
{
    (void)m, (void)t, (void)dtype, (void)name;
    return err_set(err, "%s: GGUF export is not implemented yet", path);
}
